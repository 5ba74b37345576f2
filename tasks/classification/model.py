"""Building the timm classifier and loading pretrained or custom weights into it.

Weights come from the timm hub (``--pretrained``, needs network) or from a local file
(``--custom_weights_path``: ``.pth``, ``.pth.tar``, ``.pt``, ``.bin`` or ``.safetensors``;
a bare state dict or a whole checkpoint with ``state_dict``/``model`` entries; DataParallel
``module.`` prefixes stripped; MAE/RETFound and DINOv2 ViT checkpoints mapped to timm's keys by
:mod:`~finetune_kit.tasks.classification.foundation_weights`). The classifier head is re-initialised when its shape differs
(e.g. ImageNet's 1000 classes vs 2). Any other missing, unexpected or mis-shaped key means
the file belongs to another architecture: an error unless ``allow_partial_weights``.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import timm
from timm.layers import resample_abs_pos_embed
import torch
from torch import nn

from finetune_kit.runs.checkpoint import extract_state_dict
from finetune_kit.runs.safe_load import UnsafeWeightsError, safe_torch_load
from finetune_kit.tasks.classification.foundation_weights import convert_foundation, unwrap_checkpoint

__all__ = ["ModelError", "WeightsReport", "build_model", "load_custom_weights", "read_weights_file", "head_param_names"]


class ModelError(ValueError):
    """Unknown model name or unusable weights; the message names it and the fix."""


@dataclass
class WeightsReport:
    """What loading a weights file did.

    Attributes:
        path: the file.
        loaded: number of tensors copied into the model.
        missing: model keys the file lacks (left at their initialisation).
        unexpected: file keys the model lacks (ignored).
        reinitialized: head keys whose shape differed (kept at a fresh initialisation).
        mismatched: non-head keys whose shape differed (only with ``allow_partial``).
        layout: the checkpoint layout (``timm``, ``mae``, ``dinov2``; see
            :mod:`~finetune_kit.tasks.classification.foundation_weights`).
    """

    path: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    layout: str = "timm"

    def summary(self) -> str:
        """One line: counts, with up to 3 example keys of each kind."""
        def ex(keys: list[str]) -> str:
            return f" ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})" if keys else ""
        return (f"weights {self.path} ({self.layout} layout): mapped {self.loaded} tensors; head re-initialised {len(self.reinitialized)}"
                f"{ex(self.reinitialized)}; missing {len(self.missing)}{ex(self.missing)}; unexpected "
                f"{len(self.unexpected)}{ex(self.unexpected)}; shape-mismatched {len(self.mismatched)}{ex(self.mismatched)}")


def head_param_names(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier head (timm ``get_classifier()``), parameters and buffers."""
    clf = model.get_classifier() if callable(getattr(model, "get_classifier", None)) else None
    if not isinstance(clf, nn.Module):
        return set()
    ids = {id(t) for t in list(clf.parameters()) + list(clf.buffers())}
    return {k for k, v in model.state_dict(keep_vars=True).items() if id(v) in ids}


def _unknown_model(name: str) -> ModelError:
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    stem = name.split("_")[0][:12] or name
    return ModelError(f"unknown --model_name {name!r}{hint}: not a timm model; list candidates with "
                      f"python -c \"import timm; print(timm.list_models('*{stem}*'))\"")


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat state dict (``module.`` prefixes stripped), without running
    code from it (:func:`finetune_kit.runs.safe_load.safe_torch_load`: ``weights_only=True`` or
    safetensors; ``--trust-pickled-weights`` opts in to the full unpickler).

    Raises:
        ModelError: missing file, unreadable file, a file that needs pickled code, or no tensors
            in it (names the file and the fix).
    """

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"--custom_weights_path {path}: no such file; pass a .pth, .pth.tar or .safetensors file")
    try:
        obj = safe_torch_load(path, map_location="cpu", what="--custom_weights_path")  # no code runs from it
        return extract_state_dict(unwrap_checkpoint(obj))  # DINOv2: the teacher/student entry
    except UnsafeWeightsError as exc:
        raise ModelError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - one line naming the file and the fix
        msg = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ModelError(f"--custom_weights_path {path}: not a readable weights file ({msg}); pass a PyTorch .pth/"
                         ".pth.tar state dict or checkpoint, or a .safetensors file") from None


def load_custom_weights(model: nn.Module, path: str | Path, *, allow_partial: bool = False) -> WeightsReport:
    """Copy the tensors of ``path`` into ``model`` (see the module docstring for the rules).

    Raises:
        ModelError: unreadable file, or backbone keys missing/unexpected/mis-shaped without
            ``allow_partial`` (names counts, example keys and ``--allow-partial-weights``).
    """
    head = head_param_names(model)
    sd, layout = convert_foundation(read_weights_file(path), model, head, str(path))  # MAE/RETFound, DINOv2 ViTs
    own = model.state_dict()
    rep = WeightsReport(str(path), layout=layout)
    use: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k in own and k.endswith("pos_embed") and v.ndim == 3 and v.shape != own[k].shape:
            v = _resample_pos_embed(model, v, own[k])
        if k not in own:
            rep.unexpected.append(k)
        elif tuple(v.shape) != tuple(own[k].shape):
            (rep.reinitialized if k in head else rep.mismatched).append(k)
        else:
            use[k] = v
    rep.missing = [k for k in own if k not in sd and k not in head and not k.endswith("num_batches_tracked")]
    head_missing = [k for k in own if k in head and k not in sd]
    rep.reinitialized += [k for k in head_missing if k not in rep.reinitialized]
    backbone_bad = rep.missing + rep.mismatched + [k for k in rep.unexpected if not _looks_like_head(k)]
    if backbone_bad and not allow_partial:
        if len(use) < 0.1 * len(own):
            raise ModelError(f"--custom_weights_path {path}: only {len(use)} of its {len(sd)} tensors fit "
                             f"{type(model).__name__} (e.g. {list(sd)[:2]} vs {list(own)[:2]}): it is for another "
                             "architecture; pick the matching --model_name")
        raise ModelError(f"--custom_weights_path {path} does not fit --model_name's backbone: {len(rep.missing)} missing, "
                         f"{len(rep.unexpected)} unexpected, {len(rep.mismatched)} mis-shaped keys (e.g. "
                         f"{backbone_bad[:3]}); pick the matching --model_name or pass --allow-partial-weights")
    if not use:
        raise ModelError(f"--custom_weights_path {path}: no tensor fits {type(model).__name__}; pick the matching --model_name")
    model.load_state_dict(use, strict=False)
    rep.loaded = len(use)
    if rep.reinitialized:
        reset = getattr(model, "reset_classifier", None)
        if callable(reset):
            reset(model.num_classes)  # fresh head with timm's default initialisation
    return rep


def _resample_pos_embed(model: nn.Module, v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Resample a ViT position embedding ``(1, N_prefix + H*W, D)`` to the model's grid (timm)."""
    try:
        prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
        grid = model.patch_embed.grid_size
        out = resample_abs_pos_embed(v, new_size=list(grid), num_prefix_tokens=prefix)
        return out if out.shape == target.shape else v
    except Exception:  # noqa: BLE001 - left as a shape mismatch, reported below
        return v


def _fixed_grid(model_name: str) -> bool:
    return any(k in model_name for k in ("vit", "deit", "beit", "eva", "swin", "dino"))


def _looks_like_head(key: str) -> bool:
    return key.split(".")[0] in {"fc", "head", "classifier", "last_linear", "fc_norm", "head_drop"}


def build_model(model_name: str, num_classes: int, *, pretrained: bool = False, custom_weights_path: str | None = None,
                allow_partial_weights: bool = False, drop_rate: float = 0.0,
                img_size: int | None = None) -> tuple[nn.Module, WeightsReport | None]:
    """Create ``timm.create_model(model_name, num_classes=num_classes)`` and load its weights.

    Args:
        model_name: a timm model name (``timm.list_models()``).
        num_classes: classifier outputs (>= 2).
        pretrained: hub weights (needs network; timm re-initialises a head of another size).
        custom_weights_path: local weights file (takes precedence over ``pretrained``).
        allow_partial_weights: accept backbone key mismatches (report only).
        drop_rate: dropout before the classifier.
        img_size: input side in pixels, passed to models with a fixed input grid (ViT family);
            their position embeddings are resampled from the weights' grid.

    Returns:
        ``(model, report)``; ``report`` is None unless a custom file was loaded.

    Raises:
        ModelError: unknown model name (suggests ``timm.list_models('*pattern*')``), hub
            download failure (suggests ``--custom_weights_path``), unusable weights.
    """

    if not timm.is_model(model_name):
        raise _unknown_model(model_name)
    kwargs = dict(num_classes=num_classes, drop_rate=drop_rate)
    if img_size and _fixed_grid(model_name):
        kwargs["img_size"] = img_size
    try:
        model = timm.create_model(model_name, pretrained=pretrained and not custom_weights_path, **kwargs)
    except Exception as exc:  # noqa: BLE001
        if pretrained:
            raise ModelError(f"--pretrained: could not get hub weights for {model_name} ({type(exc).__name__}); without "
                             "network pass a local file with --custom_weights_path") from None
        raise
    report = None
    if custom_weights_path:
        report = load_custom_weights(model, custom_weights_path, allow_partial=allow_partial_weights)
    return model, report
