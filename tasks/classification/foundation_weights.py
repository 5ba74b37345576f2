"""Foundation-model checkpoints for timm ViTs through ``--custom-weights-path``.

Fundus (and other) foundation models ship their ViT weights in the layout of the code that trained
them; :func:`convert_foundation` turns the three common ones into timm's
``VisionTransformer`` keys, then hands them to timm's own
``timm.models.vision_transformer.checkpoint_filter_fn`` (DINOv2 MLP/register conversion, patch
embedding resampling and ``timm.layers.resample_abs_pos_embed`` of the position embedding to the
model's ``--img-size`` grid):

============  ==========================================  ============================================
layout        recognised by                               mapping
============  ==========================================  ============================================
``mae``       ``decoder_*`` keys (MAE pre-training) or     ``model`` wrapper unwrapped (by the reader);
(MAE,         ``fc_norm`` without ``norm`` (RETFound      decoder and ``mask_token`` dropped; with
RETFound)     fine-tuned, ``global_pool=True``)           ``fc_norm``: the model pools the patch tokens
                                                          (``global_pool='avg'``, its ``norm`` becomes
                                                          ``fc_norm``) as the source did; ``head`` dropped
``dinov2``    ``teacher``/``student`` wrapper,            teacher preferred; ``backbone.`` prefix
              ``backbone.`` prefix, ``mask_token``,       stripped, ``dino_head``/``ibot_head`` dropped,
              ``register_tokens`` or chunked blocks       ``blocks.C.N`` -> ``blocks.N``, ``ls1.gamma``
                                                          kept, ``register_tokens`` -> ``reg_token``,
                                                          ``mask_token`` dropped (timm)
``timm``      anything else (``state_dict`` wrapper or    as it is; ``head`` re-initialised when its
              bare)                                       shape differs
============  ==========================================  ============================================

After the mapping, fewer than :data:`MIN_MAPPED_FRACTION` of the model's backbone keys found with
their shape is :class:`FoundationWeightsError` (one line naming the layout, the counts and the fix).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

__all__ = ["FoundationWeightsError", "MIN_MAPPED_FRACTION", "unwrap_checkpoint", "detect_layout",
           "convert_foundation", "match_pooling"]

#: smallest fraction of a ViT's backbone keys (parameters and buffers, head excluded) a foundation
#: checkpoint must supply with the right shape
MIN_MAPPED_FRACTION = 0.9

_DROP = re.compile(r"^(decoder_|dino_head\.|ibot_head\.|head\.|mask_token$)")


class FoundationWeightsError(ValueError):
    """A foundation checkpoint that maps too few of the model's keys; one line with the fix."""


def unwrap_checkpoint(obj: Any) -> Any:
    """The model part of a training checkpoint: DINOv2's ``teacher`` (else ``student``) entry; other
    objects unchanged (``model``/``state_dict`` wrappers are unwrapped by the reader)."""
    if isinstance(obj, Mapping):
        for key in ("teacher", "student"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
    return obj


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """``mae``, ``dinov2`` or ``timm`` for a flat state dict (see the module table)."""
    keys = list(sd)
    if any(k.startswith("decoder_") for k in keys) or ("fc_norm.weight" in sd and "norm.weight" not in sd):
        return "mae"
    if (any(k.startswith("backbone.") for k in keys) or "mask_token" in sd or "register_tokens" in sd
            or any(re.match(r"blocks\.\d+\.\d+\.", k) for k in keys)):
        return "dinov2"
    return "timm"


def match_pooling(model: nn.Module, keys) -> nn.Module:
    """Pool as a checkpoint with ``keys`` did: ``fc_norm`` without ``norm`` (MAE/RETFound fine-tuned with
    ``global_pool``) -> mean of the patch tokens then ``fc_norm`` (timm ``global_pool='avg'``; the final
    ``norm`` module moves to ``fc_norm``). Other checkpoints or models: unchanged. Returns ``model``."""
    keys = set(keys)
    if (isinstance(model, VisionTransformer) and "fc_norm.weight" in keys and "norm.weight" not in keys
            and isinstance(model.fc_norm, nn.Identity)):
        model.fc_norm, model.norm = model.norm, nn.Identity()
        model.global_pool = "avg"
    return model


def _to_timm_keys(sd: Mapping[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    if layout == "dinov2" and any(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    out = {}
    for k, v in sd.items():
        if _DROP.match(k) and not (layout == "dinov2" and k == "mask_token"):
            continue
        out[re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k)] = v  # DINOv2 chunked blocks: blocks.C.N
    return out


def _backbone_keys(model: nn.Module, head: set[str]) -> list[str]:
    return [k for k in model.state_dict() if k not in head and not k.endswith("num_batches_tracked")]


def convert_foundation(sd: Mapping[str, torch.Tensor], model: nn.Module, head: set[str],
                       path: str = "") -> tuple[dict[str, torch.Tensor], str]:
    """Map a foundation checkpoint's flat state dict to ``model``'s keys (timm ViTs only; other models
    and the ``timm`` layout pass through unchanged).

    Args:
        sd: the file's tensors (wrappers removed, ``module.`` stripped).
        model: the timm model; its pooling may be changed by :func:`match_pooling`.
        head: the model's head keys (not counted, not loaded).
        path: the file, for messages.

    Returns:
        ``(state dict for the model, layout)``.

    Raises:
        FoundationWeightsError: fewer than :data:`MIN_MAPPED_FRACTION` of the backbone keys mapped.
    """
    if not isinstance(model, VisionTransformer):  # CNN keys such as blocks.0.0. are not DINOv2's chunks
        return dict(sd), "timm"
    layout = detect_layout(sd)
    if layout == "timm":
        return dict(sd), layout
    out = _to_timm_keys(sd, layout)
    match_pooling(model, out)
    out = checkpoint_filter_fn(out, model)  # timm: DINOv2 conversion, pos_embed / patch_embed resampling
    own = model.state_dict()
    backbone = _backbone_keys(model, head)
    mapped = [k for k in backbone if k in out and tuple(out[k].shape) == tuple(own[k].shape)]
    if len(mapped) < MIN_MAPPED_FRACTION * len(backbone):
        missing = [k for k in backbone if k not in mapped]
        raise FoundationWeightsError(
            f"--custom_weights_path {path}: {layout} layout maps only {len(mapped)} of the {len(backbone)} backbone "
            f"keys of {type(model).__name__} ({len(mapped) / max(len(backbone), 1):.0%} < {MIN_MAPPED_FRACTION:.0%}; "
            f"e.g. {missing[:3]} missing or mis-shaped): pick the --model_name the checkpoint was trained with "
            "(e.g. vit_large_patch16_224 for RETFound)")
    return out, layout
