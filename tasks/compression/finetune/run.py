"""``compress finetune``: fine-tune a trained compression model (HPCM or a CompressAI zoo model).

One run (:func:`finetune`) composes the pieces, each living in its own module:

- weights from ``--checkpoint`` (:func:`finetune_kit.tasks.compression.checkpoints.load_weights`: whole
  checkpoints, ``module.`` prefixes and post-``update()`` state dicts are accepted). Without a
  checkpoint the run warns that it trains *from scratch*. A fine-tune is a new run: the
  optimizer, the LR schedule and the epoch counter always start fresh, also (and especially) when
  the checkpoint was trained at another lambda (the new lambda is announced); ``--resume``
  continues a fine-tune run itself, with every state restored;
- layer groups (:func:`finetune_kit.layer_groups.resolve_layer_groups`, ``hpcm`` preset, which
  also groups the CompressAI zoo models: their context modules form ``context``) and a
  strategy from the registry: ``progressive`` with ``--progressive_unfreeze``, else ``full`` with
  no layer-wise decay; LR multipliers / freezing / weight decay from
  :mod:`finetune_kit.tasks.compression.finetune.lr_manager` (table printed and written to ``lr_table.json``);
- the loss (:mod:`finetune_kit.tasks.compression.finetune.objective`): ``lambda * 255^2 * MSE + bpp``, split
  into per-scale tasks with ``--use_hierarchical``, weighted by the balanced optimizer with
  ``--use_balanced`` whose gamma follows :mod:`finetune_kit.tasks.compression.finetune.gamma_schedules`;
- per-scale early stopping (:mod:`finetune_kit.scale_early_stopping`) on the validation R-D cost
  of each scale, or plain early stopping on the total with ``--early_stopping_patience`` alone;
- :class:`finetune_kit.runs.checkpoint.CheckpointManager` (last N + best M by validation R-D cost),
  :class:`finetune_kit.runs.run_dir.RunDir` and :class:`finetune_kit.runs.logger.RunLogger`.

Balanced steps re-evaluate the same batch after the model step with the same random
quantization noise (the RNG state of the model's device is replayed), so ``delta`` measures the
parameter change only. ``--device`` (``cpu`` default, ``cuda``, ``cuda:N``) holds the model and the
batches; checkpoints are written with CPU tensors and load on any device. They keep the
``compress train`` layout (``state_dict``, ``model``, ``config`` with ``lmbda`` ...) so
``compress eval`` reads them, plus a ``finetune`` entry with every extra state.

:func:`finetune` reads top-down: :func:`resolve_source`, :func:`build_run`,
:func:`build_model_and_optimizers`, :func:`restore` (``--resume``), then per epoch
:func:`fit_one_epoch` (the shared engine's epoch loop with :class:`FinetuneObjective` as the
objective), :func:`validate`, :func:`early_stop_step`, :func:`checkpoint_state` and
:func:`report`; the status (``completed``, ``interrupted`` on Ctrl-C, ``failed``) is kept by
:func:`finetune_kit.runs.lifecycle.run_lifecycle`.

Resuming (``--resume``) continues from the chosen checkpoint: ``metrics.jsonl`` and
``steps.jsonl`` are cut back to that epoch, and tracked checkpoints of later epochs (an abandoned
trajectory, when resuming from an earlier checkpoint than the latest) are deleted.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from finetune_kit.tasks.compression.finetune.build import (FinetuneParts, _stages, build_model_and_optimizers,  # noqa: F401
                                                           epoch_log_values)
from finetune_kit.tasks.compression.finetune.config import FinetuneConfig

__all__ = ["finetune", "FromScratchWarning", "DEFAULT_LAMBDA", "Source", "FinetuneParts", "Progress",
           "resolve_source", "build_run", "build_model_and_optimizers", "restore", "fit_one_epoch", "validate",
           "early_stop_step", "checkpoint_state", "report"]

DEFAULT_LAMBDA = 0.0067


class FromScratchWarning(UserWarning):
    """``compress finetune`` started without a checkpoint: the model trains from random weights."""


@dataclass
class Source:
    """Where a fine-tune starts: ``model_name``, the source checkpoint (``source``, None from scratch
    or on resume) and its lambda, the ``resume`` checkpoint (or None), the ``lmbda`` in effect,
    the ``run_path`` and ``notes`` printed at the start."""

    model_name: str
    source: Optional[dict]
    source_lmbda: Optional[float]
    resume: Optional[dict]
    lmbda: float
    run_path: Path
    notes: list[str] = field(default_factory=list)


@dataclass
class Progress:
    """The epoch to start at and the validation histories (R-D cost per epoch, per scale)."""

    start_epoch: int = 0
    history: list = field(default_factory=list)
    scale_hist: dict = field(default_factory=lambda: {"s1": [], "s2": [], "s3": []})


def _source(cfg: FinetuneConfig) -> tuple[str, dict | None, float | None]:
    """``(model name, source checkpoint or None, its lambda or None)``; warns when there is none."""
    from finetune_kit.runs.checkpoint import load_checkpoint
    from finetune_kit.tasks.compression.checkpoints import checkpoint_model_name, default_checkpoint

    if cfg.checkpoint is None:
        warnings.warn("no --checkpoint given: training starts FROM SCRATCH (random weights), which is not a "
                      "fine-tune; pass --checkpoint RUN/checkpoints/best.pt", FromScratchWarning, stacklevel=4)
        return cfg.model or "hpcm-tiny", None, None
    ckpt = load_checkpoint(default_checkpoint(cfg.checkpoint))
    name = cfg.model or checkpoint_model_name(ckpt)
    if name is None:
        raise ValueError(f"{cfg.checkpoint} records no model name (a bare state dict?): pass --model, e.g. hpcm-tiny")
    src_cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    return name, ckpt, src_cfg.get("lmbda")


def resolve_source(cfg: FinetuneConfig) -> Source:
    """The model, weights, lambda and run folder of a fine-tune (see :class:`Source`).

    ``lmbda``: ``cfg.lmbda``, else the resumed run's, else the source checkpoint's, else
    :data:`DEFAULT_LAMBDA`. Warns :class:`FromScratchWarning` without ``--checkpoint``.

    Raises:
        ValueError: a checkpoint that records no model name (pass ``--model``).
    """
    from finetune_kit.runs.checkpoint import load_checkpoint
    from finetune_kit.runs.run_dir import new_run_dir
    from finetune_kit.tasks.compression.checkpoints import default_checkpoint

    resume = load_checkpoint(default_checkpoint(cfg.resume)) if cfg.resume else None
    model_name, source, src_lmbda = _source(cfg) if resume is None else (resume["model"], None, None)
    lmbda = cfg.lmbda or (resume["config"]["lmbda"] if resume else None) or src_lmbda or DEFAULT_LAMBDA
    notes = []
    if source is not None and src_lmbda is not None and not math.isclose(src_lmbda, lmbda):
        notes.append(f"checkpoint trained at lambda={src_lmbda:g}; fine-tuning to lambda={lmbda:g}: optimizer, LR "
                     "schedule and epoch counter start fresh")
    if resume is not None:
        run_path = Path(cfg.resume) if Path(cfg.resume).is_dir() else default_checkpoint(cfg.resume).resolve().parent.parent
    else:
        from finetune_kit.tasks.compression.distributed import main_run_path

        run_path = main_run_path(lambda: new_run_dir(cfg.output_dir, cfg.name or f"{model_name}-finetune-lambda{lmbda:g}"))
    return Source(model_name, source, src_lmbda, resume, lmbda, run_path, notes)


def build_run(cfg: FinetuneConfig, src: Source) -> tuple[Any, Any, dict]:
    """``(RunDir, RunLogger, resolved config)``: the config as run (model, lambda, gamma strategy and
    source lambda resolved) is written to ``config.json`` and recorded in every checkpoint."""
    from finetune_kit.tasks.compression.training import build_run as build_run_folder

    resolved = {**cfg.model_dump(mode="json"), "model": src.model_name, "lmbda": src.lmbda,
                "gamma_strategy": cfg.resolved_gamma_strategy, "source_lmbda": src.source_lmbda}
    from finetune_kit.tasks.compression.checkpoints import default_checkpoint

    # fingerprints (environment.json "inputs"): the data and the checkpoint file fine-tuned from
    source = default_checkpoint(cfg.checkpoint) if cfg.checkpoint is not None else None
    inputs = {"data": cfg.data, "val_data": getattr(cfg, "val_data", None), "checkpoint": source}
    rd, logger = build_run_folder(cfg, src.run_path, resolved, inputs=inputs, command="compress finetune")
    return rd, logger, resolved


def _truncate_steps(path: Path, before_epoch: int) -> None:
    """Keep only the ``steps.jsonl`` records of epochs before ``before_epoch`` (resume), atomically."""
    from finetune_kit.runs.checkpoint import atomic_write_text

    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("epoch", -1) < before_epoch]
    atomic_write_text("".join(line + "\n" for line in kept), path)


def restore(parts: FinetuneParts, resume: dict, rd: Any, model_name: str) -> Progress:
    """Restore every state of a ``--resume`` checkpoint: weights, optimizers, strategy, balanced and
    hierarchical losses, early stoppers, histories and RNG; cut ``metrics.jsonl``,
    ``steps.jsonl`` and the tracked checkpoints back to its epoch. Returns the :class:`Progress`.

    Raises:
        ValueError: weights of another model; balanced state of other tasks.
    """
    from finetune_kit.seeding import set_rng_state
    from finetune_kit.tasks.compression.checkpoints import load_weights

    ft, obj = resume["finetune"], parts.objective
    load_weights(parts.model, resume, model_name=model_name)
    parts.optimizer.load_state_dict(resume["optimizer"])
    if parts.aux_opt is not None and resume.get("aux_optimizer"):
        parts.aux_opt.load_state_dict(resume["aux_optimizer"])
    parts.strategy.load_state_dict(ft["strategy"])
    for target, key in ((obj.balanced, "balanced"), (obj.hier, "hierarchical"), (parts.ses, "scale_early_stopping"),
                        (parts.es, "early_stopping")):
        if target is not None:
            target.load_state_dict(ft[key])
    set_rng_state(resume["rng_state"])
    # "epoch": the last completed epoch counted from 1; checkpoints without "epoch_base" count from 0
    done = int(resume["epoch"]) + (0 if resume.get("epoch_base", 0) == 1 else 1)
    progress = Progress(done, ft["history"], ft["scale_history"])
    rd.truncate_history(done + 1)
    _truncate_steps(rd.path / "steps.jsonl", done + 1)
    dropped = parts.manager.truncate(done) if parts.manager is not None else []
    if dropped:
        print(f"note: resuming after epoch {done}: deleted {len(dropped)} checkpoint(s) of later "
              f"epochs ({', '.join(p.name for p in dropped)}) from the abandoned run")
    return progress


def _write_lr_table(cfg: FinetuneConfig, parts: FinetuneParts, rd: Any, model_name: str, epoch: int) -> None:
    """``lr_table.json`` (and the printed table with ``--progress``) of the optimizer at ``epoch``
    (counted from 1)."""
    from finetune_kit.tasks.compression.finetune.lr_manager import lr_table, print_lr_table

    table = lr_table(parts.optimizer, base_lr=cfg.learning_rate, clip_map=cfg.clip_map, aux_params=parts.aux_params,
                     aux_lr=cfg.aux_lr)
    rd.write_json("lr_table.json", {"base_lr": cfg.learning_rate, "global_clip": cfg.clip_max_norm, "groups": table})
    if cfg.progress:
        print_lr_table(table, title=f"{model_name}: layer-wise LRs at epoch {epoch} (base {cfg.learning_rate:g})",
                       caption=f"global gradient-norm clip {cfg.clip_max_norm:g}; LR 0 = frozen at this epoch")


def fit_one_epoch(parts: FinetuneParts, loader: Any, epoch: int, progress: Progress, steps_log: Any,
                  logger: Any) -> tuple[dict[str, float], dict[str, float]]:
    """One epoch through the shared :func:`~finetune_kit.tasks.compression.engine.train_one_epoch`
    with the fine-tune objective: progressive unfreezing and the gamma of ``epoch`` first, the
    per-step LR before each step, one ``steps.jsonl`` line per step (loss, R-D cost, gradient
    norm, balanced weights, aux loss).

    Returns ``(train means {train_loss, train_rd, train_bpp, train_mse}, gamma log)``.

    Raises:
        FloatingPointError: the loss became NaN/inf (names the epoch and step).
    """
    from finetune_kit.tasks.compression.data import set_loader_epoch
    from finetune_kit.tasks.compression.engine import train_one_epoch

    parts.last_events = []
    for ev in parts.strategy.on_epoch_start(epoch, parts.optimizer):
        parts.last_events.append(ev.record())  # -> metrics.jsonl (epoch_log_values)
        # pinned groups (--freeze_entropy, --freeze_pattern) are not in ev.groups
        print(f"epoch {ev.record()['epoch']}: unfroze {', '.join(ev.groups)} ({ev.trainable_params:,} trainable "
              "parameters)")
    gamma_log = parts.objective.set_epoch_gamma(epoch, progress.history, progress.scale_hist)
    first = epoch * parts.steps_per_epoch

    def on_step(done: int, values: dict) -> None:
        rec = {"epoch": epoch + 1, "step": first + done - 1,
               **{k: float(v) for k, v in values.items() if k not in ("bpp", "mse")}}
        steps_log.write(json.dumps(rec) + "\n")
        logger.log(rec, to_file=False)

    set_loader_epoch(loader, epoch)
    # torchrun: the DDP wrapper, re-made when this epoch's unfreezing changed the trainable set
    model = parts.ddp.model() if parts.ddp is not None else parts.model

    def train_mode(m) -> None:
        m.train()
        parts.strategy.train_mode(parts.model)  # frozen groups' normalisation back to eval

    res = train_one_epoch(model, loader, parts.optimizer, parts.aux_opt, parts.objective,
                          before_step=lambda i: parts.scheduler.apply(first + i), on_step=on_step,
                          train_mode=train_mode, average=("loss", "rd", "bpp", "mse"), epoch=epoch)
    steps_log.flush()
    return {f"train_{k}": res[k] for k in ("loss", "rd", "bpp", "mse") if k in res}, gamma_log


def validate(parts: FinetuneParts, loader: Any, cfg: FinetuneConfig, progress: Progress) -> dict[str, float]:
    """The shared :func:`~finetune_kit.tasks.compression.engine.evaluate` with the objective (``rd``,
    ``mse``, ``bpp``, ``psnr`` dB, ``rd_s1`` ...; at most ``val_max_batches`` batches); appends
    the R-D costs to the histories. Under torchrun the values are rank 0's (summed over the
    ranks' shards), broadcast, so every rank's early-stopping and gamma decisions are rank 0's."""
    from finetune_kit.distributed import broadcast_object
    from finetune_kit.tasks.compression.engine import evaluate

    va = broadcast_object(evaluate(parts.model, loader, parts.objective, max_batches=cfg.val_max_batches))
    progress.history.append(va["rd"])
    for s in progress.scale_hist:
        if f"rd_{s}" in va:
            progress.scale_hist[s].append(va[f"rd_{s}"])
    return va


def early_stop_step(parts: FinetuneParts, va: dict, epoch: int, record: dict) -> bool:
    """Feed the validation costs to the early stopper (per-scale signals go into ``record``);
    True when training should stop (rank 0's decision, broadcast, under torchrun)."""
    from finetune_kit.distributed import broadcast_object, is_main

    stop = False
    if parts.ses is not None:
        keep = (lambda: {k: v.detach().cpu().clone() for k, v in parts.model.state_dict().items()}) if is_main() else None
        signals = parts.ses.step({s: va[f"rd_{s}"] for s in ("s1", "s2", "s3")}, epoch, state_fn=keep)
        record.update({f"es_{s}": sig for s, sig in signals.items()})
        stop = parts.ses.should_stop
    elif parts.es is not None:
        parts.es.step(va["rd"], epoch)
        stop = parts.es.should_stop
    return bool(broadcast_object(stop))


def checkpoint_state(parts: FinetuneParts, epoch: int, record: dict, resolved: dict, progress: Progress,
                     model_name: str) -> dict[str, Any]:
    """The checkpoint of ``epoch`` (counted from 1) in the ``compress train`` layout (CPU tensors) plus a ``finetune``
    entry with the strategy, balanced, hierarchical and early-stopping states and the histories."""
    from finetune_kit.seeding import rng_state
    from finetune_kit.tasks.compression.checkpoints import to_cpu_state

    obj, state = parts.objective, (lambda o: o.state_dict() if o else None)
    return {"state_dict": to_cpu_state(parts.model.state_dict()), "optimizer": to_cpu_state(parts.optimizer.state_dict()),
            "aux_optimizer": to_cpu_state(parts.aux_opt.state_dict()) if parts.aux_opt else None,
            "lr_scheduler": parts.scheduler.state_dict(), "epoch": epoch, "epoch_base": 1, "model": model_name,
            "config": resolved, "metrics": record, "rng_state": rng_state(),
            "finetune": {"strategy": parts.strategy.state_dict(), "balanced": state(obj.balanced),
                         "hierarchical": state(obj.hier), "scale_early_stopping": state(parts.ses),
                         "early_stopping": state(parts.es), "history": progress.history,
                         "scale_history": progress.scale_hist}}


def report(cfg: FinetuneConfig, epoch: int, record: dict, va: dict) -> None:
    """One line per epoch with ``--progress``: train loss, val R-D cost, bpp, PSNR (dB), seconds."""
    if cfg.progress:
        print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {record['train_loss']:.4f} | val R-D {va['rd']:.4f} "
              f"bpp {va['bpp']:.4f} PSNR {va['psnr']:.2f} dB ({record['seconds']:.1f} s)")


def _epoch(cfg, parts, loaders, epoch, progress, steps_log, logger) -> tuple[dict, dict, bool]:
    """Train, validate and log one epoch; returns ``(record, validation, stop)``."""
    t0 = time.perf_counter()
    train, gamma_log = fit_one_epoch(parts, loaders[0], epoch, progress, steps_log, logger)
    va = validate(parts, loaders[1], cfg, progress)
    record = {"epoch": epoch + 1, "lr": max(g["lr"] for g in parts.optimizer.param_groups), **train,
              **{f"val_{k}": v for k, v in va.items()}, **gamma_log, "seconds": time.perf_counter() - t0,
              "trainable_params": parts.strategy.trainable_params()}
    if parts.objective.balanced is not None:
        record.update({f"task_{k}": v for k, v in parts.objective.balanced.last_record.items() if k.startswith("weight/")})
    record.update(epoch_log_values(parts))  # per-group LRs, unfreeze events, task weights
    stop = early_stop_step(parts, va, epoch + 1, record)
    logger.log(record)
    return record, va, stop


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run a fine-tune (see the module docstring). Returns the final metrics (with ``run_dir``, ``checkpoint``).

    Raises:
        ValueError: unreadable/mismatching checkpoint (names the keys), ``--scale_early_stopping`` or a
            measured decomposition on a model without per-scale rates, resuming a run of another model.
        FloatingPointError: the loss became NaN/inf (names the step).
        KeyboardInterrupt: re-raised after the run folder records ``interrupted``.

    Under ``torchrun`` (or ``finetune-kit --nproc N compress finetune ...``) the fine-tune is DDP:
    the same semantics as :func:`~finetune_kit.tasks.compression.training.train` (global batch,
    per-sample crops and noise, sharded validation, rank 0 writes); unfreezing re-wraps DDP, the
    balanced weights are updated from all-reduced losses, and the early-stopping decision is
    rank 0's, broadcast (docs/distributed.md).
    """
    from finetune_kit.distributed import distributed_run
    from finetune_kit.tasks.compression.distributed import quiet_unless_main

    with distributed_run(cfg.device), quiet_unless_main():
        return _finetune(cfg)


def _finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """:func:`finetune`'s body, inside the process group when torchrun started the run."""
    import os

    from finetune_kit.distributed import broadcast_object, is_main
    from finetune_kit.runs.lifecycle import run_lifecycle
    from finetune_kit.seeding import seed_everything
    from finetune_kit.tasks.compression.data import build_loaders

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    src = resolve_source(cfg)
    rd, logger, resolved = build_run(cfg, src)
    with run_lifecycle(rd, logger), contextlib.ExitStack() as stack:
        for note in src.notes:
            print(f"note: {note}")
        loaders = build_loaders(cfg)
        parts = build_model_and_optimizers(cfg, src, rd, len(loaders[0]))
        progress = restore(parts, src.resume, rd, src.model_name) if src.resume is not None else Progress()
        steps_log = stack.enter_context(open(src.run_path / "steps.jsonl" if is_main() else os.devnull, "a",
                                             encoding="utf-8"))  # rank 0 writes
        parts.strategy.apply(parts.optimizer, progress.start_epoch)
        _write_lr_table(cfg, parts, rd, src.model_name, progress.start_epoch + 1)
        final: dict[str, Any] = {}
        t_run = time.perf_counter()
        for epoch in range(progress.start_epoch, cfg.epochs):
            record, va, stop = _epoch(cfg, parts, loaders, epoch, progress, steps_log, logger)
            path = None
            if parts.manager is not None:  # rank 0 (or a plain run) writes the checkpoint
                ck = checkpoint_state(parts, epoch + 1, record, resolved, progress, src.model_name)
                path = parts.manager.save(ck, epoch + 1,
                                          {"val_rd": va["rd"], "val_bpp": va["bpp"], "val_psnr": va["psnr"]})
            final = {**record, "checkpoint": str(broadcast_object(path))}
            report(cfg, epoch, record, va)
            if stop:
                print(f"early stopping after epoch {epoch + 1}: " + ("every scale stopped" if parts.ses else "no improvement"))
                break
        if parts.ses is not None and is_main():
            parts.ses.save_history(src.run_path / "scale_early_stopping.json")
            parts.ses.plot(src.run_path / "scale_convergence.png")
        best = broadcast_object(str(parts.manager.best() or parts.manager.last()) if parts.manager else None)
        final.update(run_dir=str(src.run_path), best_checkpoint=best,
                     wall_seconds=time.perf_counter() - t_run, lmbda=src.lmbda, notes=src.notes)
        rd.write_json("metrics.json", final)
        from finetune_kit.tasks.compression.finetune.training_curves import plot_training_curves

        if is_main():
            plot_training_curves(rd.history(), src.run_path / "training_curves.png", title=src.run_path.name)
        logger.summary(final)
    return final
