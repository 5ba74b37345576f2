"""Building one fine-tune: model and probe, layer groups, strategy, optimizers, LR schedule, objective.

:func:`build_model_and_optimizers` is the step of :func:`finetune_kit.tasks.compression.finetune.run.finetune`
that turns the options and the :class:`~finetune_kit.tasks.compression.finetune.run.Source` into
:class:`FinetuneParts`: layer groups of the ``hpcm`` preset (which also groups the CompressAI zoo
models), a registered strategy (``progressive`` with ``--progressive_unfreeze``, else ``full``),
AdamW over the layer groups plus an aux Adam for the quantiles (the shared
:func:`~finetune_kit.tasks.compression.engine.split_aux_groups`), the per-step LR schedule, the
:class:`~finetune_kit.tasks.compression.finetune.objective.FinetuneObjective` and the early stoppers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from finetune_kit.tasks.compression.finetune.config import FinetuneConfig
from finetune_kit.tasks.compression.finetune.objective import FinetuneObjective

if TYPE_CHECKING:
    from finetune_kit.tasks.compression.finetune.run import Source

__all__ = ["FinetuneParts", "build_model_and_optimizers", "epoch_log_values"]


@dataclass
class FinetuneParts:
    """Everything a fine-tune trains and tracks (built by :func:`build_model_and_optimizers`)."""

    model: Any
    optimizer: torch.optim.Optimizer
    aux_opt: Optional[torch.optim.Optimizer]
    aux_params: list
    strategy: Any
    scheduler: Any
    objective: FinetuneObjective
    ses: Any
    es: Any
    #: the checkpoint manager (None on ranks other than 0 of a torchrun job: rank 0 writes)
    manager: Any
    steps_per_epoch: int
    #: the DDP wrapper tracker (:func:`~finetune_kit.tasks.compression.distributed.ddp_model`)
    ddp: Any = None
    #: unfreeze events of the current epoch (``UnfreezeEvent.record()`` dicts), for ``metrics.jsonl``
    last_events: list = field(default_factory=list)


def _scheduler(cfg: FinetuneConfig, optimizer, steps_per_epoch: int):
    if cfg.lr_schedule == "discriminative":
        from finetune_kit.tasks.compression.finetune.discriminative_lr import DiscriminativeLR

        return DiscriminativeLR(optimizer, base_lr=cfg.learning_rate, steps_per_epoch=steps_per_epoch,
                                warmups=cfg.discriminative_warmups, decay_rate=cfg.decay_rate,
                                decay_every=cfg.decay_every, warmup_start=cfg.warmup_start)
    from finetune_kit.schedulers import build_lr_scheduler

    return build_lr_scheduler(optimizer, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                              warmup_epochs=cfg.warmup_epochs, min_lr=cfg.min_lr, kind=cfg.lr_schedule,
                              warmup_lr_init=cfg.learning_rate * cfg.warmup_start)


def _layer_groups(model, model_name: str):
    """The ``hpcm`` preset's groups of ``model``; a model it cannot group fails in one line."""
    from finetune_kit.layer_groups import resolve_layer_groups
    from finetune_kit.tasks.compression.models.zoo import MODEL_NAMES

    try:
        return resolve_layer_groups(model, preset="hpcm")
    except ValueError as exc:
        raise ValueError(f"cannot split {model_name} into layer groups ({str(exc).split(':')[0]}): compress finetune "
                         f"supports {', '.join(MODEL_NAMES)}") from None


def _stages(groups, progressive: bool) -> list[list[str]] | None:
    """Progressive stages of the preset limited to the groups the model has (bmshj2018 has no
    ``context``); None (the preset's default, with its trailing groups) when all exist."""
    stages = groups.preset.stages if groups.preset is not None else None
    if not progressive or not stages or all(k in groups.names for st in stages for k in st):
        return None
    return [[k for k in st if k in groups.names] for st in stages if any(k in groups.names for k in st)]


def _load_model(cfg: FinetuneConfig, src: Source, device: torch.device) -> tuple[Any, bool]:
    """``(model on device, has per-scale rates)``: the source weights loaded, then a 64 px probe
    forward to see whether the model reports HPCM's ``y_scale_masks``.

    Raises:
        ValueError: scale early stopping or a measured/adaptive decomposition without per-scale rates.
    """
    from finetune_kit.tasks.compression.checkpoints import load_weights
    from finetune_kit.tasks.compression.models.zoo import build_model

    model = build_model(src.model_name)
    if src.source is not None:
        load_weights(model, src.source, model_name=src.model_name)
    model.to(device).eval()
    with torch.no_grad():  # probe: does forward() report per-scale rates (HPCM's y_scale_masks)?
        has_scales = bool(model(torch.rand(1, 3, 64, 64, device=device)).get("y_scale_masks"))
    if (cfg.scale_early_stopping or (cfg.use_hierarchical and cfg.decomposition != "fixed")) and not has_scales:
        raise ValueError(f"{src.model_name} reports no per-scale rates: --scale_early_stopping and measured/adaptive "
                         "decompositions need an HPCM model (or use --decomposition fixed without scale early stopping)")
    return model, has_scales


def _optimizers(cfg: FinetuneConfig, model, model_name: str) -> tuple[Any, torch.optim.Optimizer, Any, list]:
    """``(strategy, AdamW over the layer groups, aux Adam or None, aux params)``: layer-wise LRs,
    freezing and weight decay from the strategy; the quantiles split off by the shared
    :func:`~finetune_kit.tasks.compression.engine.split_aux_groups` (trainable unless ``--freeze_entropy``)."""
    from finetune_kit.strategy import get_strategy
    from finetune_kit.tasks.compression.engine import split_aux_groups
    from finetune_kit.tasks.compression.finetune.lr_manager import LayerLRConfig

    lrcfg = LayerLRConfig(lr_mults=cfg.lr_mults, context_lr_ratio=cfg.context_lr_ratio,
                          freeze_entropy=cfg.freeze_entropy, freeze_patterns=cfg.freeze_patterns,
                          weight_decay=cfg.weight_decay, weight_decay_map=cfg.weight_decay_map,
                          clip_map=cfg.clip_map, clip_max_norm=cfg.clip_max_norm)
    groups = _layer_groups(model, model_name)
    common = dict(layer_stages=_stages(groups, cfg.progressive_unfreeze), **lrcfg.strategy_options(groups))
    if cfg.progressive_unfreeze:
        strategy = get_strategy("progressive", unfreeze_schedule=cfg.unfreeze_schedule,
                                unfreeze_warmup_epochs=cfg.unfreeze_warmup_epochs, warmup_start=cfg.warmup_start, **common)
    else:  # every group trains from the start at its own LR multiplier (no depth decay)
        strategy = get_strategy("full", llrd_decay=1.0, **common)
    main, aux = split_aux_groups(strategy.build_param_groups(groups, weight_decay=cfg.weight_decay))
    optimizer = torch.optim.AdamW(main, lr=cfg.learning_rate)
    for p in aux:  # quantiles follow --freeze_entropy only (the aux loss keeps them fitted otherwise)
        p.requires_grad_(not cfg.freeze_entropy)
    aux_opt = torch.optim.Adam(aux, lr=cfg.aux_lr) if aux and not cfg.freeze_entropy else None
    return strategy, optimizer, aux_opt, aux


def _early_stoppers(cfg: FinetuneConfig, run_path: Path) -> tuple[Any, Any]:
    """``(per-scale early stopping or None, plain early stopping or None)`` (patience in epochs)."""
    from finetune_kit.distributed import is_main
    from finetune_kit.early_stopping import EarlyStopping
    from finetune_kit.scale_early_stopping import ScaleEarlyStopping

    patience = cfg.early_stopping_patience or 50
    ses = (ScaleEarlyStopping(["s1", "s2", "s3"], patience=patience, min_delta=cfg.early_stopping_min_delta,
                              adaptive=cfg.adaptive_patience, max_patience=cfg.max_patience,
                              directory=run_path / "scale_best" if is_main() else None)
           if cfg.scale_early_stopping else None)
    es = (EarlyStopping(patience=cfg.early_stopping_patience, min_delta=cfg.early_stopping_min_delta, mode="min")
          if cfg.early_stopping_patience and ses is None else None)
    return ses, es


def build_model_and_optimizers(cfg: FinetuneConfig, src: Source, rd: Any, steps_per_epoch: int) -> FinetuneParts:
    """Model (on ``cfg.device``), strategy, optimizers, per-step LR schedule, objective, early
    stoppers, checkpoint manager (last ``keep_last`` + best ``keep_best`` by ``val_rd``; rank 0
    only under torchrun) and the DDP tracker.

    Raises:
        ValueError: see :func:`_load_model`; a model the ``hpcm`` layer preset cannot group.
    """
    from finetune_kit.distributed import is_main, local_device
    from finetune_kit.runs.checkpoint import CheckpointManager
    from finetune_kit.tasks.compression.distributed import ddp_model

    device = local_device(cfg.device)  # torchrun: cuda -> cuda:LOCAL_RANK
    model, has_scales = _load_model(cfg, src, device)
    strategy, optimizer, aux_opt, aux = _optimizers(cfg, model, src.model_name)
    ses, es = _early_stoppers(cfg, src.run_path)
    manager = (CheckpointManager(rd.checkpoints, keep_last=cfg.keep_last, keep_best=cfg.keep_best,
                                 metric="val_rd", mode="min") if is_main() else None)
    return FinetuneParts(model, optimizer, aux_opt, aux, strategy, _scheduler(cfg, optimizer, steps_per_epoch),
                         FinetuneObjective(cfg, src.lmbda, has_scales), ses, es, manager, steps_per_epoch,
                         ddp=ddp_model(model, device))


def epoch_log_values(parts: FinetuneParts) -> dict[str, Any]:
    """What an epoch's ``metrics.jsonl`` record (and wandb) gets besides the losses: ``lr/<group>``
    (the LR each optimizer group trained with at the epoch's last step; 0 = frozen),
    ``unfrozen`` (the groups unfrozen at the start of this epoch, ``[]`` when none) and
    ``unfreeze_events`` (their full records), and the balanced optimizer's task weights
    ``task_weight/<task>`` and effective contributions ``task_contrib/<task>`` (when balancing)."""
    out: dict[str, Any] = {}
    for i, g in enumerate(parts.optimizer.param_groups):
        out[f"lr/{g.get('group_name', f'group{i}')}"] = float(g["lr"])
    out["unfrozen"] = [n for ev in parts.last_events for n in ev.get("groups", [])]
    if parts.last_events:
        out["unfreeze_events"] = list(parts.last_events)
        out["unfreeze_stage"] = max(int(ev.get("stage", 0)) for ev in parts.last_events)  # a number, for wandb
    bal = parts.objective.balanced
    if bal is not None:
        for k, v in bal.last_record.items():
            if k.startswith("weight/"):
                out[f"task_weight/{k[len('weight/'):]}"] = v
            elif k.startswith("contrib/"):
                out[f"task_contrib/{k[len('contrib/'):]}"] = v
    return out
