"""``compress train``: train a compression model from scratch, one named step at a time.

The recipe follows CompressAI's example trainer and the HPCM paper (Sec. 4.1): Adam (lr 1e-4)
for the network, a separate Adam (lr 1e-3) for the entropy bottleneck's ``quantiles`` driven by
``model.aux_loss()``, gradient-norm clipping (1.0), random crops with flips, and the loss
``lmbda * 255^2 * MSE + bpp`` (or ``lmbda * (1 - MS-SSIM) + bpp``) of
:class:`~finetune_kit.tasks.compression.losses.RateDistortionLoss`. The step, epoch loop,
validation and optimizer split are the shared engine's
(:mod:`finetune_kit.tasks.compression.engine`, re-exported here), which ``compress finetune``
uses too. :func:`train` reads top-down: :func:`resolve_source` (``--resume``),
:func:`build_run`, :func:`build_model_and_optimizers`, :func:`restore`, then per epoch
:func:`fit_one_epoch`, :func:`validate`, :func:`checkpoint_state` and :func:`report`. The model
lives on ``cfg.device`` (``cpu`` by default); checkpoints hold CPU tensors and load on any device.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from finetune_kit.tasks.compression.engine import build_optimizers, evaluate, train_one_epoch
from finetune_kit.tasks.compression.losses import RateDistortionLoss

__all__ = ["RateDistortion", "build_optimizers", "train_one_epoch", "evaluate", "train", "TrainParts",
           "resolve_source", "build_run", "build_model_and_optimizers", "restore", "fit_one_epoch", "validate",
           "checkpoint_state", "report"]

#: the R-D criterion under its historical name (:class:`~finetune_kit.tasks.compression.losses.RateDistortionLoss`)
RateDistortion = RateDistortionLoss


@dataclass
class TrainParts:
    """What one ``compress train`` run trains: model, optimizers, epoch LR schedule, criterion,
    checkpoint manager (last ``keep_last`` + best by ``val_loss``)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    aux_optimizer: Optional[torch.optim.Optimizer]
    scheduler: Any
    criterion: RateDistortionLoss
    #: the checkpoint manager (None on ranks other than 0 of a torchrun job: rank 0 writes)
    manager: Any
    #: ``--use-balanced``: the balanced objective (FinetuneObjective), else None (plain R-D loss)
    objective: Any = None
    #: the DDP wrapper tracker (:func:`~finetune_kit.tasks.compression.distributed.ddp_model`)
    ddp: Any = None


def resolve_source(cfg: "TrainConfig") -> tuple[Optional[dict], Path]:  # noqa: F821
    """``(checkpoint to resume or None, run folder)``: ``cfg.resume`` (a run folder or a
    checkpoint) continues its run folder, otherwise a new folder under ``cfg.output_dir``.

    Raises:
        ValueError: the resumed checkpoint was trained with another model, lambda or metric, or the
            run folder's ``checkpoints/`` is a link or its index is not what a run writes.
    """
    from finetune_kit.runs.checkpoint import check_checkpoint_folder, load_checkpoint
    from finetune_kit.runs.run_dir import new_run_dir
    from finetune_kit.tasks.compression.checkpoints import (default_checkpoint, run_folder_of,
                                                             started_without_checkpoint)

    if cfg.resume is None:
        from finetune_kit.tasks.compression.distributed import main_run_path

        return None, main_run_path(lambda: new_run_dir(cfg.output_dir,
                                                       cfg.name or f"{cfg.model}-{cfg.metric}-lambda{cfg.lmbda:g}"))
    ckpt_dir = run_folder_of(cfg.resume) / "checkpoints"
    check_checkpoint_folder(ckpt_dir)  # untrusted input: refused before anything is written
    if started_without_checkpoint(cfg.resume):  # killed during its first save: start it again, same folder
        print(f"{cfg.resume} holds no complete checkpoint (the run stopped during its first save): starting it "
              "again at epoch 1 in the same folder")
        return None, run_folder_of(cfg.resume)
    ckpt_path = default_checkpoint(cfg.resume)
    ckpt = load_checkpoint(ckpt_path)
    prev = ckpt.get("config", {})
    for key in ("model", "lmbda", "metric"):
        if key in prev and prev[key] != getattr(cfg, key):
            raise ValueError(f"cannot resume {ckpt_path}: it was trained with {key}={prev[key]!r}, not "
                             f"{getattr(cfg, key)!r}; --resume continues the same run (use 'compress finetune' "
                             "to start from it with new settings)")
    return ckpt, run_folder_of(cfg.resume if Path(cfg.resume).is_dir() else ckpt_path)


def build_run(cfg: Any, run_path: Path, config: Any = None, inputs: Any = None, command: str = "compress train") -> tuple[Any, Any]:
    """``(RunDir, RunLogger)`` of ``run_path``: writes ``config.json`` (``config``, default ``cfg``),
    ``environment.json`` (with fingerprints of ``data``, ``val_data`` and a ``checkpoint`` the
    run starts from; ``inputs``, a ``{name: path}`` mapping, replaces them) and status ``running``; the logger writes ``metrics.jsonl`` and wandb
    (``cfg.wandb``, project ``finetune-kit-compression``). Under torchrun only rank 0 writes
    (``RunDir(enabled=False)`` elsewhere)."""
    from finetune_kit.distributed import is_main
    from finetune_kit.runs.logger import RunLogger
    from finetune_kit.runs.run_dir import RunDir

    rd = RunDir(run_path, enabled=is_main())
    # fingerprints of the data and the weights a run starts from (environment.json "inputs")
    if inputs is None:
        inputs = {k: getattr(cfg, k, None) for k in ("data", "val_data", "checkpoint")}
    rd.start(cfg if config is None else config, inputs=inputs, command=command)
    logger = RunLogger(rd, wandb_mode=cfg.wandb, project="finetune-kit-compression", name=run_path.name,
                       config=cfg if config is None else config)
    return rd, logger


def build_model_and_optimizers(cfg: "TrainConfig", rd: Any) -> TrainParts:  # noqa: F821
    """Model on ``cfg.device``, Adam + aux Adam (:func:`build_optimizers`), ``MultiStepLR`` over
    epochs (``lr_milestones``, ``lr_gamma``), the criterion, the checkpoint manager of ``rd``
    (rank 0 only) and the DDP tracker. Under torchrun the model goes to this rank's device."""
    from finetune_kit.distributed import is_main, local_device
    from finetune_kit.runs.checkpoint import CheckpointManager
    from finetune_kit.tasks.compression.distributed import ddp_model
    from finetune_kit.tasks.compression.models.zoo import build_model

    device = local_device(cfg.device)
    model = build_model(cfg.model).to(device)
    optimizer, aux_optimizer = build_optimizers(model, cfg.lr, cfg.aux_lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.lr_milestones, gamma=cfg.lr_gamma)
    manager = (CheckpointManager(rd.checkpoints, keep_last=cfg.keep_last, keep_best=1, metric="val_loss", mode="min")
               if is_main() else None)
    from finetune_kit.tasks.compression.finetune.objective import train_objective

    return TrainParts(model, optimizer, aux_optimizer, scheduler, RateDistortionLoss(cfg.lmbda, cfg.metric), manager,
                      train_objective(cfg, model) if getattr(cfg, "use_balanced", False) else None,
                      ddp_model(model, device))


def restore(parts: TrainParts, ckpt: dict, rd: Any, model_name: str) -> int:
    """Load weights, both optimizers, the scheduler and the RNG states of ``ckpt``; cut
    ``metrics.jsonl`` and the tracked checkpoints back to its epoch. Returns the 0-based index of
    the next epoch (= the epochs completed; checkpoints and records count epochs from 1).

    Raises:
        ValueError: the checkpoint's weights do not fit ``model_name`` (names the keys).
    """
    from finetune_kit.seeding import set_rng_state
    from finetune_kit.tasks.compression.checkpoints import load_weights

    load_weights(parts.model, ckpt, model_name=model_name)
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    if parts.aux_optimizer is not None:
        parts.aux_optimizer.load_state_dict(ckpt["aux_optimizer"])
    parts.scheduler.load_state_dict(ckpt["lr_scheduler"])
    if parts.objective is not None and ckpt.get("balanced"):
        parts.objective.balanced.load_state_dict(ckpt["balanced"])
    if "rng_state" in ckpt:
        set_rng_state(ckpt["rng_state"])
    # "epoch": the last completed epoch counted from 1; checkpoints without "epoch_base" count from 0
    done = int(ckpt["epoch"]) + (0 if ckpt.get("epoch_base", 0) == 1 else 1)
    rd.truncate_history(done + 1)
    if parts.manager is not None:
        parts.manager.truncate(done)
    return done


def fit_one_epoch(parts: TrainParts, loader: Any, cfg: Any, epoch: int) -> dict[str, float]:
    """One epoch of the shared :func:`train_one_epoch` (global clip ``cfg.clip_max_norm``), through
    the DDP wrapper under torchrun."""
    from finetune_kit.distributed import is_main
    from finetune_kit.tasks.compression.data import set_loader_epoch

    set_loader_epoch(loader, epoch)
    model = parts.ddp.model() if parts.ddp is not None else parts.model
    return train_one_epoch(model, loader, parts.optimizer, parts.aux_optimizer, parts.objective or parts.criterion,
                           clip_max_norm=cfg.clip_max_norm, progress=cfg.progress and is_main(),
                           description=f"epoch {epoch + 1}/{cfg.epochs}")


def validate(parts: TrainParts, loader: Any) -> dict[str, float]:
    """The shared :func:`evaluate` with the run's criterion (``loss``, ``bpp_loss``, ``psnr`` dB ...)."""
    return evaluate(parts.model, loader, parts.criterion)


def checkpoint_state(parts: TrainParts, cfg: Any, epoch: int, record: dict) -> dict[str, Any]:
    """The checkpoint of ``epoch`` (counted from 1; CPU tensors): weights, optimizers, scheduler,
    RNG, config, metrics; ``epoch_base: 1`` records the convention."""
    from finetune_kit.seeding import rng_state
    from finetune_kit.tasks.compression.checkpoints import to_cpu_state

    m = parts.model
    return {"state_dict": to_cpu_state(m.state_dict()), "optimizer": to_cpu_state(parts.optimizer.state_dict()),
            "aux_optimizer": to_cpu_state(parts.aux_optimizer.state_dict()) if parts.aux_optimizer else None,
            "lr_scheduler": parts.scheduler.state_dict(), "epoch": epoch, "epoch_base": 1, "model": cfg.model,
            "config": cfg.model_dump(mode="json"), "metrics": record, "rng_state": rng_state(),
            "preset": m.config() if hasattr(m, "config") else None,
            "balanced": parts.objective.balanced.state_dict() if parts.objective is not None else None}


def balanced_epoch_start(parts: TrainParts, rd: Any, epoch: int) -> dict[str, float]:
    """``--use-balanced``: set the gamma of ``epoch`` (0-based) from the schedule and the validation
    losses so far (``metrics.jsonl``, so a resumed run gets the same values); returns the gamma and
    the task weights for the epoch's record ({} without balancing)."""
    if parts.objective is None:
        return {}
    from finetune_kit.distributed import broadcast_object, is_main

    # rank 0's metrics.jsonl decides (the other ranks would race its writes): broadcast
    history = broadcast_object([r["val_loss"] for r in rd.history() if "val_loss" in r and r.get("epoch", 0) <= epoch]
                               if is_main() else None)
    log = parts.objective.set_epoch_gamma(epoch, history, {})
    log.update({f"task_weight/{t}": float(w) for t, w in zip(parts.objective.balanced.task_names,
                                                            parts.objective.balanced.weights())})
    return log


def report(cfg: Any, epoch: int, tr: dict, va: dict) -> None:
    """Print one line per epoch (with ``cfg.progress``): train loss, val loss, bpp, PSNR (dB), seconds."""
    if cfg.progress:
        print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {tr['loss']:.4f} | val loss {va['loss']:.4f} "
              f"bpp {va['bpp_loss']:.4f} psnr {va.get('psnr', float('nan')):.2f} dB ({tr['seconds']:.1f} s)")


def train(cfg: "TrainConfig") -> dict[str, Any]:  # noqa: F821 - imported lazily
    """Run ``compress train``: build data, model and optimizers, train, validate, checkpoint.

    Writes the run folder (``config.json``, ``environment.json``, ``status.json``,
    ``metrics.jsonl``, ``metrics.json``, ``checkpoints/``); ``cfg.resume`` (a run folder or a
    checkpoint) continues from that checkpoint's epoch with optimizer, scheduler and RNG states
    restored (checkpoints of later epochs, an abandoned trajectory, are deleted). The status is
    kept by :func:`finetune_kit.runs.lifecycle.run_lifecycle`: ``completed``, ``interrupted``
    (Ctrl-C) or ``failed``. Returns the final metrics (with ``run_dir`` and ``checkpoint``).

    Under ``torchrun`` (or ``finetune-kit --nproc N compress train ...``) the run is DDP (gloo on
    CPU, NCCL on CUDA): ``--batch-size`` is the global batch, each rank trains on its share with
    per-sample crops and quantization noise, validation is sharded and summed, rank 0 writes the
    run folder; the result equals a one-process torchrun run (docs/distributed.md).

    Raises:
        ValueError: a resumed checkpoint was trained with another model, lambda or metric.
    """
    from finetune_kit.distributed import distributed_run
    from finetune_kit.tasks.compression.distributed import quiet_unless_main

    with distributed_run(cfg.device), quiet_unless_main():
        return _train(cfg)


def _train(cfg: "TrainConfig") -> dict[str, Any]:  # noqa: F821
    """:func:`train`'s body, inside the process group when torchrun started the run."""
    from finetune_kit.distributed import broadcast_object, is_main
    from finetune_kit.runs.checkpoint import hold_folder
    from finetune_kit.runs.lifecycle import run_lifecycle
    from finetune_kit.seeding import seed_everything
    from finetune_kit.tasks.compression.data import build_loaders

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    resume_ckpt, run_path = resolve_source(cfg)
    # a second --resume of this run is refused before it rewrites the folder's files (held to the end)
    held = cfg.resume and is_main() and (run_path / "checkpoints").is_dir()
    lock = hold_folder(run_path / "checkpoints") if held else None
    rd, logger = build_run(cfg, run_path)
    if cfg.resume and resume_ckpt is None:  # started again after a kill in its first save
        rd.truncate_history(0)
    with run_lifecycle(rd, logger):
        train_loader, val_loader = build_loaders(cfg)
        parts = build_model_and_optimizers(cfg, rd)
        start_epoch = restore(parts, resume_ckpt, rd, cfg.model) if resume_ckpt is not None else 0
        final: dict[str, Any] = {}
        for epoch in range(start_epoch, cfg.epochs):
            lr = parts.optimizer.param_groups[0]["lr"]
            gamma_log = balanced_epoch_start(parts, rd, epoch)
            tr = fit_one_epoch(parts, train_loader, cfg, epoch)
            va = validate(parts, val_loader)
            parts.scheduler.step()
            record = {"epoch": epoch + 1, "lr": lr, **{f"train_{k}": v for k, v in tr.items()},
                      **{f"val_{k}": v for k, v in va.items()}, **gamma_log}
            logger.log(record, step=epoch + 1)
            path = None
            if parts.manager is not None:  # rank 0 (or a plain run) writes the checkpoint
                path = parts.manager.save(checkpoint_state(parts, cfg, epoch + 1, record), epoch + 1,
                                          {"val_loss": va["loss"], "val_bpp": va["bpp_loss"],
                                           "val_psnr": va.get("psnr", float("nan"))})
            final = {**record, "checkpoint": str(broadcast_object(path))}
            report(cfg, epoch, tr, va)
        if not final and resume_ckpt is not None:
            final = {**resume_ckpt.get("metrics", {}),
                     "checkpoint": str(broadcast_object(parts.manager.last() if parts.manager else None))}
        final["run_dir"] = str(run_path)
        rd.write_json("metrics.json", final)
        logger.summary(final)
    del lock  # the folder is free for the next run of this process
    return final
