"""The one compression run behind ``compress train`` and ``compress finetune``.

:func:`run` reads top-down: :func:`~.source.resolve_source` (random weights, a source checkpoint
or ``--resume``), :func:`~.build.build_run` (run folder), :func:`~.build.build_parts`,
:func:`~.resume.restore` (``--resume``), then per epoch :func:`~.fit.fit_one_epoch`,
:func:`~.fit.validate`, :func:`~.fit.early_stop_step`, :func:`~.report.checkpoint_state` and
:func:`~.report.report`; the status (``completed``, ``interrupted`` on Ctrl-C, ``failed``) is kept
by :func:`finetune_kit.runs.lifecycle.run_lifecycle`. ``compress train`` is this run with a
:class:`~.config.TrainConfig` (no source checkpoint, the ``full`` strategy with every layer group
at x1); ``compress finetune`` with a :class:`~.config.FinetuneConfig`.

The model lives on ``cfg.run.device``; checkpoints hold CPU tensors and load on any device. They
keep one layout (``state_dict``, ``model``, ``config`` with ``lmbda`` ...), which
``compress eval`` reads.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from finetune_kit.distributed import broadcast_object, distributed_run, is_main
from finetune_kit.runs.checkpoint import hold_folder
from finetune_kit.runs.lifecycle import run_lifecycle
from finetune_kit.runs.logger import RunLogger
from finetune_kit.seeding import seed_everything
from finetune_kit.tasks.compression.data import build_loaders
from finetune_kit.tasks.compression.distributed import quiet_unless_main
from finetune_kit.tasks.compression.finetune.domain import domain_lines, evaluate_domains
from finetune_kit.tasks.compression.run.build import RunParts, build_parts, build_run
from finetune_kit.tasks.compression.run.config import RunConfig
from finetune_kit.tasks.compression.run.fit import Progress, early_stop_step, fit_one_epoch, validate
from finetune_kit.tasks.compression.run.report import checkpoint_state, epoch_log_values, report, write_lr_table
from finetune_kit.tasks.compression.run.resume import restore
from finetune_kit.tasks.compression.run.source import resolve_source
from finetune_kit.tasks.compression.run.training_curves import plot_training_curves
from finetune_kit.tasks.compression.threads import apply_threads

__all__ = ["run"]


def run(cfg: RunConfig) -> dict[str, Any]:
    """Run ``compress train`` or ``compress finetune`` (the config's class decides the defaults).

    Writes the run folder (``config.json``, ``environment.json``, ``status.json``,
    ``metrics.jsonl``, ``metrics.json``, ``steps.jsonl``, ``lr_table.json``,
    ``training_curves.png``, ``checkpoints/``; per-scale early stopping adds ``scale_best/``,
    ``scale_early_stopping.json`` and ``scale_convergence.png``). Returns the final metrics (the
    last epoch's record with ``run_dir``, ``checkpoint``, ``best_checkpoint``, ``wall_seconds``,
    ``lmbda``, ``notes``).

    Under ``torchrun`` (or ``finetune-kit --nproc N compress ...``) the run is DDP (gloo on CPU,
    NCCL on CUDA): ``--batch-size`` is the global batch, each rank trains on its share with
    per-sample crops and quantization noise, validation is sharded and summed, rank 0 writes the
    run folder; unfreezing re-wraps DDP, the balanced weights are updated from all-reduced losses,
    and the early-stopping decision is rank 0's, broadcast (docs/distributed.md).

    Raises:
        ValueError: unreadable/mismatching checkpoint (names the keys), ``--scale-early-stopping``
            or a measured decomposition on a model without per-scale rates, resuming a run of
            another model, lambda or metric.
        FloatingPointError: the loss became NaN/inf (names the step).
        KeyboardInterrupt: re-raised after the run folder records ``interrupted``.
    """
    with distributed_run(cfg.run.device), quiet_unless_main():
        return _run(cfg)


def _epoch(cfg: RunConfig, parts: RunParts, loaders: tuple, epoch: int, progress: Progress, steps_log: Any,
           logger: RunLogger) -> tuple[dict, dict, bool]:
    """Train, validate and log one epoch; returns ``(record, validation, stop)``."""
    t0 = time.perf_counter()
    train, gamma_log = fit_one_epoch(parts, loaders[0], epoch, progress, steps_log, logger)
    va = validate(parts, loaders[1], cfg.data.val_max_batches, progress)
    record = {"epoch": epoch + 1, "lr": max(g["lr"] for g in parts.optimizer.param_groups), **train,
              **{f"val_{k}": v for k, v in va.items()}, **gamma_log, "seconds": time.perf_counter() - t0,
              "trainable_params": parts.strategy.trainable_params()}
    if parts.objective.balanced is not None:
        record.update({f"task_{k}": v for k, v in parts.objective.balanced.last_record.items() if k.startswith("weight/")})
    record.update(epoch_log_values(parts))  # per-group LRs, unfreeze events, task weights
    stop = early_stop_step(parts, va, epoch + 1, record)
    logger.log(record)
    return record, va, stop


def _run(cfg: RunConfig) -> dict[str, Any]:
    """:func:`run`'s body, inside the process group when torchrun started the run."""
    _, threads_note = apply_threads(cfg.run.threads)
    seed_everything(cfg.run.seed)
    src = resolve_source(cfg)
    if threads_note and is_main():
        print(threads_note)
    # a second --resume of this run is refused before it rewrites the folder's files (held to the end)
    held = cfg.run.resume is not None and is_main() and (src.run_path / "checkpoints").is_dir()
    lock = hold_folder(src.run_path / "checkpoints") if held else None
    rd, logger, resolved = build_run(cfg, src)
    if cfg.run.resume is not None and src.resume is None:  # started again after a kill in its first save
        rd.truncate_history(0)
    with run_lifecycle(rd, logger), contextlib.ExitStack() as stack:
        for note in src.notes:
            print(f"note: {note}")
        loaders = build_loaders(cfg.data, cfg.run.seed)
        parts = build_parts(cfg, src, rd, len(loaders[0]))
        progress = restore(parts, src.resume, rd, src.model_name) if src.resume is not None else Progress()
        steps_log = stack.enter_context(open(src.run_path / "steps.jsonl" if is_main() else os.devnull, "a",
                                             encoding="utf-8"))  # rank 0 writes
        parts.strategy.apply(parts.optimizer, progress.start_epoch)
        write_lr_table(cfg, parts, rd, src.model_name, progress.start_epoch + 1)
        final: dict[str, Any] = {}
        t_run = time.perf_counter()
        for epoch in range(progress.start_epoch, cfg.run.epochs):
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
        if not final and src.resume is not None:  # resumed at the end: the run's last record
            final = {**src.resume.get("metrics", {}),
                     "checkpoint": str(broadcast_object(parts.manager.last() if parts.manager else None))}
        if parts.ses is not None and is_main():
            parts.ses.save_history(src.run_path / "scale_early_stopping.json")
            parts.ses.plot(src.run_path / "scale_convergence.png")
        best = broadcast_object(str(parts.manager.best() or parts.manager.last()) if parts.manager else None)
        final.update(run_dir=str(src.run_path), best_checkpoint=best,
                     wall_seconds=time.perf_counter() - t_run, lmbda=src.lmbda, notes=src.notes)
        if cfg.domain.source_data is not None and is_main():  # target held-out + source, real bitstreams
            final["domain"] = evaluate_domains(cfg, src.run_path, cfg.source.checkpoint, Path(best), src.lmbda,
                                               parts.model)
            print("\n".join(domain_lines(final["domain"])))
        rd.write_json("metrics.json", final)
        if is_main():
            plot_training_curves(rd.history(), src.run_path / "training_curves.png", title=src.run_path.name)
        logger.summary(final)
    del lock  # the folder is free for the next run of this process
    return final
