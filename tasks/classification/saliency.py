"""Saliency maps of a trained classifier: where the model looked (``predict --explain``, ``evaluate``).

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017) as implemented by the ``grad-cam`` package (``pytorch_grad_cam``): the
target layer's activations weighted by the spatial mean of the gradients of the target class's
logit, ReLU, upsampled to the input and scaled to 0-1 per image.

The target layer is the output of the last backbone layer group before the head
(:func:`finetune_kit.layer_groups.resolve_layer_groups`): for CNNs the last block or module of that
group (``bn2`` of MobileNetV2, ``layer4.1`` of ResNet-18); for ViTs the ``norm1`` of the group's last
transformer block (the usual Grad-CAM layer for ViTs: after the final norm only the class token
carries gradient), with :func:`vit_reshape_transform` turning tokens ``(B, N, D)`` into a map
``(B, D, h, w)`` on the patch grid. The class explained per image comes from
:func:`target_classes` (the predicted class; for multi-label runs every class above the threshold).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from finetune_kit.layer_groups import resolve_layer_groups
from finetune_kit.runs.run_dir import safe_name
from finetune_kit.tasks.classification.transforms import normalize_batch

__all__ = ["target_layer", "vit_reshape_transform", "target_classes", "saliency_maps", "write_overlay",
           "explain_images", "pick_cases", "write_case_grid"]


def _is_token_model(model: nn.Module) -> bool:
    return hasattr(model, "patch_embed") and isinstance(getattr(model, "blocks", None), nn.Sequential)


def target_layer(model: nn.Module) -> nn.Module:
    """The module whose output Grad-CAM weights: the last backbone layer group's output (see the
    module docstring for the CNN and ViT rules).

    Raises:
        ValueError: the model has no backbone layer group (only a head).
    """
    body = [g for g in resolve_layer_groups(model) if not g.is_head]
    if not body:
        raise ValueError(f"{type(model).__name__}: no backbone layer group before the head to explain")
    names = body[-1].param_names
    if _is_token_model(model):
        idx = [int(n.split(".")[1]) for n in names if n.startswith("blocks.")] or [len(model.blocks) - 1]
        return model.blocks[max(idx)].norm1
    module, prefix = model, ""
    while True:  # the last child owning a parameter of the group, descending into Sequential/ModuleList
        owned = [(n, m) for n, m in module.named_children() if any(p.startswith(f"{prefix}{n}.") for p in names)]
        if not owned:
            return module
        name, child = owned[-1]
        if not isinstance(child, (nn.Sequential, nn.ModuleList)):
            return child
        module, prefix = child, f"{prefix}{name}."


def vit_reshape_transform(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """For token models: ``(B, prefix + h*w, D)`` -> ``(B, D, h, w)`` (class/register tokens dropped,
    patch tokens on timm's ``patch_embed.grid_size``); identity for 4-D CNN feature maps."""
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    grid = tuple(getattr(getattr(model, "patch_embed", None), "grid_size", (0, 0)))

    def reshape(t: torch.Tensor) -> torch.Tensor:
        if t.ndim != 3:
            return t
        tokens = t[:, prefix:, :]
        return tokens.reshape(t.shape[0], grid[0], grid[1], t.shape[2]).permute(0, 3, 1, 2)

    return reshape


def target_classes(probs: np.ndarray, *, multi_label: bool = False, threshold: float = 0.5) -> list[list[int]]:
    """The classes to explain per image, from probabilities ``(N, C)``: ``[[argmax]]`` per row for
    binary and multi-class runs; with ``multi_label`` every class with ``p >= threshold`` (the
    highest one when none is).

    Returns:
        One list of class indices per image.
    """
    probs = np.asarray(probs)
    if not multi_label:
        return [[int(r.argmax())] for r in probs]
    return [[int(c) for c in np.flatnonzero(r >= threshold)] or [int(r.argmax())] for r in probs]


def saliency_maps(model: nn.Module, inputs: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """Grad-CAM maps ``(B, H, W)`` in 0-1 of normalised inputs ``(B, 3, H, W)``, one class per image.

    The model is put in eval mode; gradients flow only inside this call (parameters keep
    ``requires_grad`` as they were).
    """
    model.eval()
    reshape = vit_reshape_transform(model) if _is_token_model(model) else None
    with GradCAM(model=model, target_layers=[target_layer(model)], reshape_transform=reshape) as cam:
        out = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    return np.asarray(out, dtype=np.float32)


def _overlay(rgb: np.ndarray, cam: np.ndarray) -> np.ndarray:
    return show_cam_on_image(rgb.astype(np.float32) / 255.0, cam, use_rgb=True, image_weight=0.55)


def write_overlay(rgb: np.ndarray, cam: np.ndarray, path: str | Path, title: str) -> Path:
    """Save the image ``(H, W, 3)`` uint8 beside its Grad-CAM overlay (``cam`` ``(H, W)`` 0-1, jet
    colour map: red = most weight) as one PNG titled ``title``; returns the path."""
    matplotlib.use("Agg")
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.5))
    for ax, img, sub in zip(axes, (rgb, _overlay(rgb, cam)), ("input", "Grad-CAM (red: most evidence)")):
        ax.imshow(img)
        ax.set_title(sub, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _batch(ds, idx: Sequence[int], tf) -> tuple[np.ndarray, torch.Tensor]:
    """Images ``(n, H, W, 3)`` uint8 of dataset items ``idx`` (as the network sees them) and their
    normalised input ``(n, 3, H, W)``."""
    images = np.stack([ds[i][0] for i in idx]) if len(idx) else np.zeros((0, tf.img_size, tf.img_size, 3), np.uint8)
    return images, normalize_batch(torch.from_numpy(images), tf.mean, tf.std)


def explain_images(model: nn.Module, ds, tf, probs: np.ndarray, class_names: Sequence[str], out_dir: str | Path,
                   batch_size: int = 16) -> list[Path]:
    """One overlay PNG per image of ``ds`` (a ``CachedImageDataset`` through the eval transform
    ``tf.eval``) into ``out_dir``, named ``<file stem>_<class>_p<prob>.png`` and titled with the class
    and its calibrated probability ``probs`` ``(N, C)`` (one file per class of :func:`target_classes`)."""
    out: list[Path] = []
    targets = target_classes(probs)
    for s in range(0, len(ds), batch_size):
        flat = [(i, c) for i in range(s, min(s + batch_size, len(ds))) for c in targets[i]]
        images, inputs = _batch(ds, [i for i, _ in flat], tf)
        cams = saliency_maps(model, inputs, [c for _, c in flat])
        for (i, c), img, cam in zip(flat, images, cams):
            stem = Path(ds.paths[i])
            name = f"{safe_name(stem.stem)}_{safe_name(class_names[c])}_p{probs[i, c]:.2f}.png"
            title = f"{stem.name}: {class_names[c]} p={probs[i, c]:.2f}"
            out.append(write_overlay(img, cam, Path(out_dir) / name, title))
    return out


def pick_cases(probs: np.ndarray, labels: np.ndarray, k: int = 3) -> dict[str, list[int]]:
    """Indices of the ``k`` most confident correct, ``k`` most confident wrong and ``k`` borderline
    images (smallest margin between the two highest probabilities) of ``probs`` ``(N, C)`` and
    integer ``labels`` ``(N,)``; a kind with fewer images gets fewer."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    pred, top = probs.argmax(1), probs.max(1)
    srt = np.sort(probs, axis=1)
    margin = srt[:, -1] - srt[:, -2]
    right, wrong = np.flatnonzero(pred == labels), np.flatnonzero(pred != labels)
    return {"most confident correct": [int(i) for i in right[np.argsort(-top[right], kind="stable")][:k]],
            "most confident wrong": [int(i) for i in wrong[np.argsort(-top[wrong], kind="stable")][:k]],
            "borderline": [int(i) for i in np.argsort(margin, kind="stable")[:k]]}


def write_case_grid(model: nn.Module, ds, tf, probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                    path: str | Path, k: int = 3, title: str = "") -> Path:
    """A grid figure (one row per kind of :func:`pick_cases`, ``k`` columns) of Grad-CAM overlays of
    the predicted class of images of ``ds`` (eval transform ``tf``), each titled with the true label,
    the prediction and its calibrated probability (``probs`` ``(N, C)``, ``labels`` ``(N,)``)."""
    matplotlib.use("Agg")
    cases = pick_cases(probs, labels, k)
    fig, axes = plt.subplots(3, k, figsize=(2.6 * k + 0.4, 8.4), squeeze=False)
    for row, (kind, idx) in enumerate(cases.items()):
        images, inputs = _batch(ds, idx, tf)
        cams = saliency_maps(model, inputs, [int(probs[i].argmax()) for i in idx]) if idx else []
        for col in range(k):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if col < len(idx):
                i = idx[col]
                ax.imshow(_overlay(images[col], cams[col]))
                ax.set_title(f"true {class_names[labels[i]]}\npred {class_names[int(probs[i].argmax())]} "
                             f"p={probs[i].max():.2f}", fontsize=8)
        axes[row, 0].set_ylabel(kind, fontsize=9)
    fig.suptitle(title or "Grad-CAM of the predicted class", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
