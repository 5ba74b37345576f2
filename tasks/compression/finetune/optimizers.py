"""The strategy and optimizers of a compression run: layer groups, layer-wise LRs, freezing,
progressive unfreezing (what fine-tuning adds to plain training; ``compress train`` uses it with
every multiplier 1 and the ``full`` strategy).
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from finetune_kit.layer_groups import LayerGroups, resolve_layer_groups
from finetune_kit.strategy import get_strategy
from finetune_kit.tasks.compression.config import MODEL_NAMES
from finetune_kit.tasks.compression.engine import split_aux_groups
from finetune_kit.tasks.compression.finetune.config import LayerLRSection, UnfreezeSection
from finetune_kit.tasks.compression.finetune.lr_manager import LayerLRConfig

__all__ = ["layer_groups", "progressive_stages", "layer_optimizers"]


def layer_groups(model: torch.nn.Module, model_name: str) -> LayerGroups:
    """The ``hpcm`` preset's groups of ``model``.

    Raises:
        ValueError: a model the preset cannot group (one line naming the supported models).
    """
    try:
        return resolve_layer_groups(model, preset="hpcm")
    except ValueError as exc:
        raise ValueError(f"cannot split {model_name} into layer groups ({str(exc).split(':')[0]}): compression runs "
                         f"support {', '.join(MODEL_NAMES)}") from None


def progressive_stages(groups: LayerGroups, progressive: bool) -> list[list[str]] | None:
    """Progressive stages of the preset limited to the groups the model has (bmshj2018 has no
    ``context``); None (the preset's default, with its trailing groups) when all exist."""
    stages = groups.preset.stages if groups.preset is not None else None
    if not progressive or not stages or all(k in groups.names for st in stages for k in st):
        return None
    return [[k for k in st if k in groups.names] for st in stages if any(k in groups.names for k in st)]


def layer_optimizers(model: torch.nn.Module, model_name: str, llr: LayerLRSection, unf: UnfreezeSection, *,
                     learning_rate: float, aux_lr: float = 1e-3, clip_max_norm: float = 1.0
                     ) -> tuple[Any, torch.optim.Optimizer, Optional[torch.optim.Optimizer], list]:
    """``(strategy, AdamW over the layer groups, aux Adam or None, aux params)`` of ``model``.

    The layer groups are the ``hpcm`` preset's (:func:`layer_groups`); the strategy is
    ``progressive`` with ``unf.progressive_unfreeze``, else ``full`` without depth decay (every
    group at its own multiplier); layer-wise LRs, freezing and weight decay come from ``llr``
    (:class:`~finetune_kit.tasks.compression.finetune.lr_manager.LayerLRConfig`). The quantiles are
    split off by the shared :func:`~finetune_kit.tasks.compression.engine.split_aux_groups` and get
    an Adam of ``aux_lr`` (none, and frozen, with ``llr.freeze_entropy``). ``learning_rate`` is the
    base LR (a group trains at base x ``lr_scale``).

    Raises:
        ValueError: a model the preset cannot group; bad multipliers or schedule.
    """
    lrcfg = LayerLRConfig(lr_mults=llr.lr_mults, context_lr_ratio=llr.context_lr_ratio,
                          freeze_entropy=llr.freeze_entropy, freeze_patterns=llr.freeze_patterns,
                          weight_decay=llr.weight_decay, weight_decay_map=llr.weight_decay_map,
                          clip_map=llr.clip_map, clip_max_norm=clip_max_norm)
    groups = layer_groups(model, model_name)
    common = dict(layer_stages=progressive_stages(groups, unf.progressive_unfreeze), **lrcfg.strategy_options(groups))
    if unf.progressive_unfreeze:
        strategy = get_strategy("progressive", unfreeze_schedule=unf.unfreeze_schedule,
                                unfreeze_warmup_epochs=unf.unfreeze_warmup_epochs, warmup_start=unf.warmup_start,
                                **common)
    else:  # every group trains from the start at its own LR multiplier (no depth decay)
        strategy = get_strategy("full", llrd_decay=1.0, **common)
    main, aux = split_aux_groups(strategy.build_param_groups(groups, weight_decay=llr.weight_decay))
    optimizer = torch.optim.AdamW(main, lr=learning_rate)
    for p in aux:  # quantiles follow --freeze-entropy only (the aux loss keeps them fitted otherwise)
        p.requires_grad_(not llr.freeze_entropy)
    aux_opt = torch.optim.Adam(aux, lr=aux_lr) if aux and not llr.freeze_entropy else None
    return strategy, optimizer, aux_opt, aux
