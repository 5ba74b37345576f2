"""Forgetting in a classification run: what is kept at the start, the L2-SP loss, the end-of-run measures.

Called from the run in three places:

- :func:`start_forgetting` (before training or ``--resume``'s restore): keeps the pretrained weights
  ``w0`` (merged view for LoRA), the source head of the weights file (e.g. MobileNetV2's 1000 ImageNet
  classes, which the run's new head replaces) and, with ``forgetting.l2_sp``, puts the L2-SP penalty
  into the training loss;
- :func:`epoch_terms` (each epoch's record): the two L2-SP terms;
- :func:`measure_forgetting` (the report): source retention (top-1 agreement and KL between the
  pretrained model and the fine-tuned backbone under the source head), linear CKA of penultimate
  features on the reference set and on validation, per-group relative weight drift and its figure
  ``drift.png``; :func:`~finetune_kit.tasks.classification.forgetting_report.finish_forgetting` then
  evaluates ``forgetting.external_data`` and runs WiSE-FT.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from finetune_kit.forgetting import L2SP, linear_cka, prediction_agreement, relative_drift
from finetune_kit.layer_groups import resolve_layer_groups
from finetune_kit.strategies.lora import merge_adapters, merged_copy
from finetune_kit.tasks.classification.feature_cache import extract_features
from finetune_kit.tasks.classification.forgetting_config import reference_images
from finetune_kit.tasks.classification.model import head_param_names, read_weights_file
from finetune_kit.tasks.classification.plots import pyplot, save_figure
from finetune_kit.tasks.classification.setup import build_strategy, image_loader
from finetune_kit.tasks.classification.transforms import CachedImageDataset, ImageCache, normalize_batch

__all__ = ["ForgettingState", "start_forgetting", "epoch_terms", "measure_forgetting", "load_run_weights",
           "source_head", "reference_loader", "penultimate", "retention", "plot_drift"]


#: decoded reference images per (folder, cache size), kept for the process
_REFERENCE_CACHE: dict = {}


@dataclass
class ForgettingState:
    """What a run keeps from its start: ``w0`` (the pretrained state dict, merged view, on the CPU; empty
    with ``--no-measure-forgetting``),
    the source head ``(W [K, D], b [K])`` or None, and the L2-SP penalty or None."""
    w0: dict[str, torch.Tensor]
    source: tuple[torch.Tensor, torch.Tensor] | None
    l2sp: L2SP | None = None
    notes: list[str] = field(default_factory=list)


class PenalisedLoss(nn.Module):
    """``criterion(logits, target) + l2sp.penalty(model)``: the L2-SP training loss."""
    def __init__(self, criterion: nn.Module, l2sp: L2SP, model: nn.Module) -> None:
        super().__init__()
        self.criterion, self.l2sp, self.model = criterion, l2sp, [model]  # a list: not a submodule

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits, target) + self.l2sp.penalty(self.model[0]).float()


def source_head(cfg) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The classifier of the pretrained weights file that the run's new head replaced: ``(W [K, D],
    b [K])`` float32, or None (no weights file, or a file without its head, or a head of the run's shape)."""
    if not cfg.model.custom_weights_path:
        return None
    sd = read_weights_file(cfg.model.custom_weights_path)
    probe = timm.create_model(cfg.model.model_name, num_classes=2, pretrained=False)
    keys = sorted(head_param_names(probe))
    w = [sd[k] for k in keys if k.endswith("weight") and k in sd and sd[k].ndim == 2]
    b = [sd[k] for k in keys if k.endswith("bias") and k in sd and sd[k].ndim == 1]
    if len(w) != 1 or w[0].shape[0] == 2:
        return None
    bias = b[0] if len(b) == 1 and b[0].shape[0] == w[0].shape[0] else torch.zeros(w[0].shape[0])
    return w[0].float().clone(), bias.float().clone()


def start_forgetting(state) -> ForgettingState:
    """Keep the pretrained weights and source head, and add L2-SP to the loss (``state.opt.criterion``)
    when ``forgetting.l2_sp`` is set. Call it before training (and before ``restore`` on resume).

    Returns:
        The :class:`ForgettingState`, also set as ``state.forgetting``.
    """
    cfg, model = state.cfg, state.model
    measure = cfg.forgetting.measure_forgetting  # w0 and the source head serve only the measures: no copy without
    w0 = {k: v.detach().cpu().clone() for k, v in merged_copy(model).state_dict().items()} if measure else {}
    fs = ForgettingState(w0=w0, source=source_head(cfg) if measure else None)
    sp = cfg.forgetting.l2_sp_values
    if sp is not None:
        reference = {k: v.detach().clone() for k, v in model.named_parameters()}
        head = sorted(head_param_names(model) & set(reference))
        fs.l2sp = L2SP(model, reference, alpha=sp[0], beta=sp[1], new_params=head)
        state.opt.criterion = PenalisedLoss(state.opt.criterion, fs.l2sp, model)
    state.forgetting = fs
    return fs


def epoch_terms(state) -> dict[str, float]:
    """``{"l2_sp_backbone": alpha/2*||w-w0||^2, "l2_sp_head": beta/2*||w_head||^2}`` at the end of the
    epoch (empty without L2-SP)."""
    fs = getattr(state, "forgetting", None)
    if fs is None or fs.l2sp is None:
        return {}
    with torch.no_grad():
        t = fs.l2sp.terms(state.model)
    return {"l2_sp_backbone": float(t["sp"]), "l2_sp_head": float(t["new"])}


def reference_loader(folder: str | None, tf, batch_size: int = 64):
    """A DataLoader of the reference images (``folder``; None = the packaged set) through ``tf.eval``.

    Raises:
        ValueError: no such folder or no image in it (one line).
    """
    paths = [str(p) for p in reference_images(folder)]
    key = (str(folder), tf.cache_size)
    cache = _REFERENCE_CACHE.get(key)
    if cache is None:  # decoded once per process (compare: every strategy measures on the same images)
        cache = _REFERENCE_CACHE[key] = ImageCache(tf.cache_size)
    skipped = set(cache.load(paths, skip_corrupt=True))
    paths = [p for p in paths if p not in skipped]
    ds = CachedImageDataset(cache, paths, [0] * len(paths), tf.eval)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)


def penultimate(model: nn.Module, loader, tf, device) -> torch.Tensor:
    """Pooled penultimate features ``(N, D)`` of every image of ``loader`` (eval mode)."""
    return extract_features(model, loader, lambda x: normalize_batch(x, tf.mean, tf.std), device)[0]


def source_logits(features: torch.Tensor, source: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Logits ``(N, K)`` of the source head on features ``(N, D)``."""
    w, b = source
    return features.double() @ w.double().T + b.double()


def retention(pre_f: torch.Tensor, ft_f: torch.Tensor, source) -> dict:
    """Retention of ``ft_f`` vs ``pre_f`` (reference-set features ``(N, D)``): top-1 agreement and KL under
    the source head (when there is one) and the reference-set CKA."""
    out: dict[str, Any] = {"reference_cka": linear_cka(pre_f, ft_f) if len(pre_f) > 1 else None}
    if source is not None and pre_f.shape[1] == source[0].shape[1]:
        out.update(prediction_agreement(source_logits(pre_f, source), source_logits(ft_f, source)))
    return out


def measure_forgetting(state) -> dict:
    """The ``forgetting`` section of ``metrics.json`` (the best epoch must be loaded in the evaluated module).

    Returns:
        ``{"forgetting": {"retention": {"top1_agreement", "kl", "reference_cka", "n_reference",
        "source_classes"} (top1/KL only with a source head; ``source_head: false`` and a note otherwise),
        "val_cka", "drift": {group: relative L2 distance}, "drift_figure", "seconds"}}``, or ``{}`` when
        ``forgetting.measure_forgetting`` is off or the model has no timm ``forward_head``.
    """
    cfg = state.cfg
    fs = state.forgetting
    if fs is None or not cfg.forgetting.measure_forgetting or not callable(getattr(state.model, "forward_head", None)):
        return {}
    t0 = time.perf_counter()
    tf, device = state.data.tf, state.device
    ft = merged_copy(state.eval_model)
    groups = resolve_layer_groups(ft, **cfg.layer_group_options())
    new_head = {n for g in groups.head for n in g.param_names}  # the run's new head has no pretrained value
    now = ft.state_dict()
    if all(k in now and torch.equal(now[k].detach().cpu(), v.cpu()) for k, v in fs.w0.items() if k not in new_head):
        # a frozen backbone (linear probe): its features are the pretrained ones, so agreement 1, KL 0 and CKA 1
        # hold exactly; three passes over the reference and validation images would only confirm it
        out: dict[str, Any] = {"retention": {"reference_cka": 1.0, "n_reference": 0, "source_head": fs.source is not None,
                                             "note": "backbone unchanged: exact values, no images passed"},
                               "val_cka": 1.0}
        if fs.source is not None:
            out["retention"].update(top1_agreement=1.0, kl=0.0)
    else:
        pre = copy.deepcopy(ft)
        pre.load_state_dict(fs.w0)
        ref = reference_loader(cfg.forgetting.reference_data, tf)
        pre_ref, ft_ref = penultimate(pre, ref, tf, device), penultimate(ft, ref, tf, device)
        out = {"retention": {**retention(pre_ref, ft_ref, fs.source), "n_reference": len(pre_ref),
                             "source_head": fs.source is not None}}
        val = image_loader(state, state.data.val, tf.eval)
        ft_val = state.features.get("best_val")
        ft_val = torch.as_tensor(ft_val) if ft_val is not None else penultimate(ft, val, tf, device)
        out["val_cka"] = linear_cka(penultimate(pre, val, tf, device), ft_val) if len(ft_val) > 1 else None
    if fs.source is not None:
        out["retention"]["source_classes"] = int(fs.source[0].shape[0])
    else:
        out["retention"]["note"] = "; ".join(
            [n for n in (out["retention"].get("note"),) if n] + [
                "no source head: the weights carry no classifier of their own (hub weights are created with the run's "
                "head, a file without its head), so top-1 agreement and KL are not measured"])
    out["drift"] = relative_drift(ft, {k: v for k, v in fs.w0.items() if k not in new_head}, groups)
    if state.run.enabled:
        out["drift_figure"] = plot_drift(out["drift"], state.run.path / "drift.png", title=cfg.tag).name
    out["seconds"] = time.perf_counter() - t0
    r = out["retention"]
    agree = (f"top-1 agreement {r['top1_agreement']:.3f}, KL {r['kl']:.4f} nats under the pretrained "
             f"{r['source_classes']}-class head" if fs.source is not None else "no source head (agreement not measured)")
    how = "backbone unchanged: exact" if not r["n_reference"] else f"{r['n_reference']} reference images"
    state.console.print(f"forgetting: {agree}; CKA reference {r['reference_cka']:.3f}, validation "
                        f"{out['val_cka']:.3f} ({how}, {out['seconds']:.1f} s)")
    state.logger.summary({f"forgetting_{k}": v for k, v in {**r, "val_cka": out["val_cka"]}.items()
                          if isinstance(v, float)})
    return {"forgetting": out}


def plot_drift(drift: dict[str, float], path: str | Path, *, title: str = "") -> Path:
    """Bar chart of the relative weight drift per layer group, stem (left) to head (right); written
    atomically to ``path``, which is returned."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(drift) + 1.5), 3.2))
    names = list(drift)
    ax.bar(range(len(names)), [drift[n] for n in names], color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("relative L2 drift ||w - w0|| / ||w0||")
    ax.set_xlabel("layer group (stem -> head)")
    ax.set_title("where the model changed" + (f" - {title}" if title else ""), fontsize=10)
    top = max(drift.values(), default=0.0)
    ax.set_ylim(0, top * 1.1 if top > 0 else 1.0)  # a drift is never negative
    if top == 0:
        ax.text(0.5, 0.5, "no layer changed (frozen backbone)", transform=ax.transAxes, ha="center", va="center")
    return save_figure(fig, Path(path))


def load_run_weights(model: nn.Module, cfg, state_dict: dict) -> nn.Module:
    """Load a run's checkpoint ``state_dict`` into a freshly built ``model``: a LoRA checkpoint (adapter
    keys) gets the run's adapters injected first and merged after (PEFT's merge), so what comes out is a
    plain timm model. Returns the model to use."""
    if any(".lora_A." in k for k in state_dict):

        model = build_strategy(cfg.for_strategy(cfg.strategy.ft_strategy)).prepare_model(model)
        model.load_state_dict(state_dict)
        return merge_adapters(model)
    model.load_state_dict(state_dict)
    return model
