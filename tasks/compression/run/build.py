"""Building one compression run: run folder, model and probe, layer groups, strategy, optimizers,
LR schedule, objective, early stoppers, checkpoint manager.

:func:`build_parts` turns the config and the :class:`~finetune_kit.tasks.compression.run.source.Source`
into :class:`RunParts`: the strategy and optimizers of
:func:`~finetune_kit.tasks.compression.finetune.optimizers.layer_optimizers` (layer groups of the
``hpcm`` preset, ``progressive`` or ``full``, AdamW over the groups plus an aux Adam for the
quantiles), the per-step LR schedule, the
:class:`~finetune_kit.tasks.compression.objectives.objective.RunObjective` and the early stoppers.
``compress train`` is the same build with every multiplier 1 and no source weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from timm.scheduler import MultiStepLRScheduler

from finetune_kit.distributed import is_main, local_device
from finetune_kit.early_stopping import EarlyStopping
from finetune_kit.runs.checkpoint import CheckpointManager
from finetune_kit.runs.logger import RunLogger
from finetune_kit.runs.run_dir import RunDir
from finetune_kit.scale_early_stopping import ScaleEarlyStopping
from finetune_kit.schedulers import StepwiseLR, build_lr_scheduler
from finetune_kit.tasks.compression.checkpoints import default_checkpoint, load_weights
from finetune_kit.tasks.compression.distributed import ddp_model
from finetune_kit.tasks.compression.finetune.adapters import adapter_freeze_patterns, attach_adapters
from finetune_kit.tasks.compression.finetune.discriminative_lr import DiscriminativeLR
from finetune_kit.tasks.compression.finetune.optimizers import layer_optimizers
from finetune_kit.tasks.compression.models.zoo import build_model
from finetune_kit.tasks.compression.objectives.objective import RunObjective
from finetune_kit.tasks.compression.run.config import RunConfig
from finetune_kit.tasks.compression.run.source import Source

__all__ = ["RunParts", "build_run", "build_parts"]

#: the wandb project of every compression run
WANDB_PROJECT = "finetune-kit-compression"


@dataclass
class RunParts:
    """Everything a run trains and tracks (built by :func:`build_parts`)."""

    model: Any
    optimizer: torch.optim.Optimizer
    aux_opt: Optional[torch.optim.Optimizer]
    aux_params: list
    strategy: Any
    scheduler: Any
    objective: RunObjective
    ses: Any
    es: Any
    #: the checkpoint manager (None on ranks other than 0 of a torchrun job: rank 0 writes)
    manager: Any
    steps_per_epoch: int
    #: the DDP wrapper tracker (:func:`~finetune_kit.tasks.compression.distributed.ddp_model`)
    ddp: Any = None
    #: unfreeze events of the current epoch (``UnfreezeEvent.record()`` dicts), for ``metrics.jsonl``
    last_events: list = field(default_factory=list)


def build_run(cfg: RunConfig, src: Source) -> tuple[RunDir, RunLogger, dict]:
    """``(RunDir, RunLogger, resolved config)`` of ``src.run_path``.

    The config as run (flat leaf keys; model, lambda, gamma strategy and source lambda resolved;
    ``command``) is written to ``config.json`` and recorded in every checkpoint;
    ``environment.json`` gets fingerprints of the data and of the checkpoint the run starts from;
    status ``running``. The logger writes ``metrics.jsonl`` and wandb (``cfg.run.wandb``). Under
    torchrun only rank 0 writes (``RunDir(enabled=False)`` elsewhere).
    """
    resolved = {**cfg.flat(), "model": src.model_name, "lmbda": src.lmbda, "gamma_strategy": cfg.gamma_strategy,
                "source_lmbda": src.source_lmbda, "command": cfg.command}
    checkpoint = default_checkpoint(cfg.source.checkpoint) if cfg.source.checkpoint is not None else None
    inputs = {"data": cfg.data.data, "val_data": cfg.data.val_data, "checkpoint": checkpoint}
    rd = RunDir(src.run_path, enabled=is_main())
    rd.start(resolved, inputs=inputs, command=f"compress {cfg.command}")
    logger = RunLogger(rd, wandb_mode=cfg.run.wandb, project=WANDB_PROJECT, name=src.run_path.name, config=resolved)
    return rd, logger, resolved


def _scheduler(cfg: RunConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    """The per-step LR schedule of ``cfg.optim.lr_schedule`` (every one honours ``lr_scale``)."""
    opt = cfg.optim
    if opt.lr_schedule == "discriminative":
        return DiscriminativeLR(optimizer, base_lr=opt.learning_rate, steps_per_epoch=steps_per_epoch,
                                warmups=opt.discriminative_warmups, decay_rate=opt.decay_rate,
                                decay_every=opt.decay_every, warmup_start=cfg.unfreeze.warmup_start)
    if opt.lr_schedule == "multistep":  # CompressAI's trainer: x lr_gamma after each milestone epoch
        return StepwiseLR(MultiStepLRScheduler(optimizer, decay_t=[m * steps_per_epoch for m in opt.lr_milestones],
                                               decay_rate=opt.lr_gamma, t_in_epochs=False), steps_per_epoch)
    return build_lr_scheduler(optimizer, epochs=cfg.run.epochs, steps_per_epoch=steps_per_epoch,
                              warmup_epochs=opt.warmup_epochs, min_lr=opt.min_lr, kind=opt.lr_schedule,
                              warmup_lr_init=opt.learning_rate * cfg.unfreeze.warmup_start)


def _probe_scales(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether ``model`` reports per-scale rates (HPCM's ``y_scale_masks``), from a 64 px forward in
    eval mode (draws a random input from the run's random stream)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        has_scales = bool(model(torch.rand(1, 3, 64, 64, device=device)).get("y_scale_masks"))
    model.train(was)
    return has_scales


def _load_model(cfg: RunConfig, src: Source, device: torch.device) -> tuple[torch.nn.Module, bool]:
    """``(model on device, has per-scale rates)``: the source weights loaded, then the probe
    (:attr:`RunConfig.measure_scales`, or options that need per-scale information).

    Raises:
        ValueError: scale early stopping or a measured/adaptive decomposition without per-scale rates.
    """
    model = build_model(src.model_name)
    if src.source is not None:
        load_weights(model, src.source, model_name=src.model_name)
    ad = cfg.adapter
    attached = attach_adapters(model, ad.adapter, ad.adapter_rank, ad.adapter_targets)
    if attached and is_main():
        print(f"adapters: {ad.adapter} rank {ad.adapter_rank} on {len(attached)} modules under {ad.adapter_targets}")
    model.to(device)
    hier, scale_es = cfg.hierarchical, cfg.early_stop.scale_early_stopping
    probe = cfg.measure_scales or hier.use_hierarchical or cfg.balanced.use_balanced or scale_es
    has_scales = _probe_scales(model, device) if probe else False
    if (scale_es or (hier.use_hierarchical and hier.decomposition != "fixed")) and not has_scales:
        raise ValueError(f"{src.model_name} reports no per-scale rates: --scale_early_stopping and measured/adaptive "
                         "decompositions need an HPCM model (or use --decomposition fixed without scale early stopping)")
    return model, has_scales


def _early_stoppers(cfg: RunConfig, run_path: Path) -> tuple[Any, Any]:
    """``(per-scale early stopping or None, plain early stopping or None)`` (patience in epochs)."""
    es_cfg = cfg.early_stop
    patience = es_cfg.early_stopping_patience or 50
    ses = (ScaleEarlyStopping(["s1", "s2", "s3"], patience=patience, min_delta=es_cfg.early_stopping_min_delta,
                              adaptive=es_cfg.adaptive_patience, max_patience=es_cfg.max_patience,
                              directory=run_path / "scale_best" if is_main() else None)
           if es_cfg.scale_early_stopping else None)
    es = (EarlyStopping(patience=es_cfg.early_stopping_patience, min_delta=es_cfg.early_stopping_min_delta, mode="min")
          if es_cfg.early_stopping_patience and ses is None else None)
    return ses, es


def build_parts(cfg: RunConfig, src: Source, rd: RunDir, steps_per_epoch: int) -> RunParts:
    """Model (on ``cfg.run.device``), strategy, optimizers, per-step LR schedule, objective, early
    stoppers, checkpoint manager (last ``keep_last`` + best ``keep_best`` by ``val_rd``; rank 0
    only under torchrun) and the DDP tracker.

    Raises:
        ValueError: see :func:`_load_model`; a model the ``hpcm`` layer preset cannot group.
    """
    device = local_device(cfg.run.device)  # torchrun: cuda -> cuda:LOCAL_RANK
    model, has_scales = _load_model(cfg, src, device)
    llr = adapter_freeze_patterns(cfg.layer_lr, cfg.adapter.adapter)  # adapters: every other weight frozen
    strategy, optimizer, aux_opt, aux = layer_optimizers(model, src.model_name, llr, cfg.unfreeze,
                                                         learning_rate=cfg.optim.learning_rate,
                                                         aux_lr=cfg.optim.aux_lr, clip_max_norm=cfg.optim.clip_max_norm)
    ses, es = _early_stoppers(cfg, src.run_path)
    manager = (CheckpointManager(rd.checkpoints, keep_last=cfg.run.keep_last, keep_best=cfg.run.keep_best,
                                 metric="val_rd", mode="min") if is_main() else None)
    objective = RunObjective(src.lmbda, has_scales, cfg.hierarchical, cfg.balanced, epochs=cfg.run.epochs,
                             clip_max_norm=cfg.optim.clip_max_norm, clip_map=cfg.layer_lr.clip_map,
                             metric=cfg.source.metric)
    return RunParts(model, optimizer, aux_opt, aux, strategy, _scheduler(cfg, optimizer, steps_per_epoch), objective,
                    ses, es, manager, steps_per_epoch, ddp=ddp_model(model, device))
