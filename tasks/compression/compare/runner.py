"""``compress compare``: from one base checkpoint, every workflow at every target lambda with the
same step budget and seed, each evaluated with real bitstreams; resumable.

A comparison folder holds ``config.json`` (the :class:`~.config.CompareConfig`, ``kind:
compression-comparison``), ``cells.json`` (what has finished: the base's evaluation and, per
``lambda/workflow`` cell, its training numbers and evaluation, written atomically after each
step), one ``compress finetune`` run folder per cell under ``lambda<L>/``, and the report of
:mod:`.report` (``comparison.md``, ``comparison.csv``, ``bd.json``, ``rd.png``), rewritten after
every cell so a partial comparison is readable. ``--resume FOLDER`` continues it: finished cells
are kept, a cell whose run folder was interrupted continues that run (``compress finetune
--resume``), a trained but unevaluated cell is only evaluated.

Measured per cell: wall time of the whole fine-tune call (s) and of its training loop, peak
memory (CUDA allocator peak, or the process RSS sampled on the CPU, MiB; and what the run added),
the validation R-D cost after every epoch, and on the evaluation images: real bpp (bitstream
bytes), estimated bpp (likelihoods), PSNR-RGB (dB, 8-bit output), MS-SSIM, and whether the
decoder reproduced ``y_hat`` exactly. The evaluated weights are those after the last epoch run
(the budget), not the best validation checkpoint.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from finetune_kit.runs.checkpoint import atomic_write_text, load_checkpoint
from finetune_kit.runs.run_dir import RunDir, new_run_dir, to_jsonable
from finetune_kit.runs.status import recorded_status
from finetune_kit.tasks.classification.memory import PeakMemory
from finetune_kit.tasks.compression.checkpoints import checkpoint_model_name, default_checkpoint, load_model
from finetune_kit.tasks.compression.compare.config import CompareConfig
from finetune_kit.tasks.compression.compare.report import write_report
from finetune_kit.tasks.compression.compare.workflows import workflow_options
from finetune_kit.tasks.compression.data import list_images
from finetune_kit.tasks.compression.evaluate import evaluate_model
from finetune_kit.tasks.compression.run.config import FinetuneConfig
from finetune_kit.tasks.compression.run.loop import run as run_compression
from finetune_kit.tasks.compression.run.source import FromScratchWarning
from finetune_kit.tasks.compression.threads import apply_threads

__all__ = ["run_compare", "finetune_config", "evaluate_checkpoint", "load_state"]


def _cell_key(lmbda: float, workflow: str) -> str:
    return f"{lmbda:g}/{workflow}"


def load_state(folder: Path) -> dict[str, Any]:
    """``cells.json`` of a comparison folder (``{"base": ..., "cells": {...}}``; empty when new)."""
    p = Path(folder) / "cells.json"
    return json.loads(p.read_text()) if p.is_file() else {"base": None, "cells": {}}


def _save_state(folder: Path, state: dict) -> None:
    atomic_write_text(json.dumps(to_jsonable(state), indent=1), Path(folder) / "cells.json")


def finetune_config(cfg: CompareConfig, lmbda: float, workflow: str, folder: Path, model_name: str,
                    resume: Optional[Path] = None):
    """The :class:`~finetune_kit.tasks.compression.run.config.FinetuneConfig` of one cell: the
    shared budget, data, split and seed, the workflow's options (:func:`.workflows.workflow_options`);
    ``scratch`` has no checkpoint and ``scratch_learning_rate``."""
    scratch = workflow == "scratch"
    common = dict(data=cfg.data, val_data=cfg.val_data, val_fraction=cfg.val_fraction,
                  val_max_batches=cfg.val_max_batches, epochs=cfg.epochs, steps_per_epoch=cfg.steps_per_epoch,
                  batch_size=cfg.batch_size, patch_size=cfg.patch_size, lmbda=lmbda, seed=cfg.seed,
                  threads=cfg.threads, num_workers=cfg.num_workers, device=cfg.device, wandb=cfg.wandb,
                  progress=cfg.progress, keep_last=1, keep_best=1, output_dir=folder / f"lambda{lmbda:g}",
                  name=workflow, model=model_name, resume=resume,
                  checkpoint=None if scratch else cfg.checkpoint,
                  learning_rate=cfg.scratch_learning_rate if scratch else cfg.learning_rate)
    return FinetuneConfig(**common, **workflow_options(workflow, cfg.epochs))


def evaluate_checkpoint(path: str | Path, cfg: CompareConfig, model_name: Optional[str] = None) -> dict[str, Any]:
    """Real-bitstream evaluation of checkpoint ``path`` on the comparison's evaluation images:
    ``{"mean": {...}, "per_image": {name: {"bpp", "estimated_bpp", "psnr-rgb", "ms-ssim-rgb"}}, "seconds"}``."""
    paths = list_images(cfg.eval_data)[: cfg.eval_limit]
    model, _ = load_model(path, model_name)
    model.to(torch.device(cfg.device))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MS-SSIM undefined on tiny images: NaN, left out of the mean
        res = evaluate_model(model, paths, progress=False)
    keep = ("bpp", "estimated_bpp", "psnr-rgb", "ms-ssim-rgb")
    return {"mean": res["mean"], "per_image": {n: {k: r[k] for k in keep} for n, r in res["per_image"].items()},
            "seconds": time.perf_counter() - t0, "images": [Path(p).name for p in paths]}


def _interrupted_run(folder: Path, lmbda: float, workflow: str) -> Optional[Path]:
    """The newest run folder of the cell that holds a checkpoint (to continue), or None."""
    runs = sorted((folder / f"lambda{lmbda:g}").glob(f"{workflow}-*"))
    runs = [r for r in runs if (r / "checkpoints").is_dir() and any((r / "checkpoints").glob("epoch_*.pt"))]
    return runs[-1] if runs else None


def _train_cell(cfg: CompareConfig, lmbda: float, workflow: str, folder: Path, model_name: str) -> dict[str, Any]:
    """Run one cell's fine-tune (continuing an interrupted one); returns its training numbers."""
    previous = _interrupted_run(folder, lmbda, workflow)
    done = previous is not None and recorded_status(previous)[0] == "completed" and (previous / "metrics.json").is_file()
    if done:
        final, numbers = json.loads((previous / "metrics.json").read_text()), {"resumed": "completed earlier"}
    else:
        fcfg = finetune_config(cfg, lmbda, workflow, folder, model_name, resume=previous)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FromScratchWarning)  # "scratch" is from scratch on purpose
            with PeakMemory(torch.device(cfg.device)) as mem:
                t0 = time.perf_counter()
                final = run_compression(fcfg)
                wall = time.perf_counter() - t0
        numbers = {"wall_s": wall, "peak_memory_mb": mem.peak_mb, "training_memory_mb": mem.increase_mb,
                   "resumed": str(previous) if previous else None}
    run = Path(final["run_dir"])
    history = [r for r in RunDir(run).history() if "val_rd" in r]
    # a run resumed after its last epoch trains nothing and records no checkpoint: its last one is the result
    ckpt = final.get("checkpoint") or str(run / "checkpoints" / "last.pt")
    return {**numbers, "run_dir": str(run), "checkpoint": ckpt, "loop_s": final.get("wall_seconds"),
            "epochs_run": len(history), "steps_per_epoch": cfg.steps_per_epoch,
            "val_rd": [r["val_rd"] for r in history]}


def run_compare(cfg: CompareConfig, *, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or continue, ``cfg.resume``) a comparison; returns ``{"folder", "markdown", "state"}``.

    The base checkpoint is evaluated once; then for each lambda (ascending) each workflow
    trains and is evaluated, the report rewritten after each. ``echo`` prints one line per step.

    Raises:
        ValueError: a checkpoint without a model name, another failure of a fine-tune
            (:func:`finetune_kit.tasks.compression.run.loop.run`).
    """
    threads, note = apply_threads(cfg.threads)
    if note:
        echo(note)
    cfg = cfg.model_copy(update={"threads": threads})  # every workflow trains with the same threads
    ckpt = load_checkpoint(default_checkpoint(cfg.checkpoint))
    model_name = checkpoint_model_name(ckpt)
    if model_name is None:
        raise ValueError(f"{cfg.checkpoint} records no model name: pass a checkpoint written by compress train/finetune")
    base_lmbda = (ckpt.get("config") or {}).get("lmbda")
    del ckpt
    folder = Path(cfg.resume) if cfg.resume else new_run_dir(cfg.output_dir, cfg.name or f"compare-{model_name}")
    RunDir(folder).write_json("config.json", {"kind": "compression-comparison", **cfg.model_dump(mode="json"),
                                              "resume": None, "model": model_name, "base_lmbda": base_lmbda})
    state = load_state(folder)
    state.update(model=model_name, base_lmbda=base_lmbda)
    if not state.get("base"):
        echo(f"evaluating the base checkpoint ({model_name}, lambda {base_lmbda}) ...")
        state["base"] = evaluate_checkpoint(default_checkpoint(cfg.checkpoint), cfg, model_name)
        _save_state(folder, state)
    md = write_report(folder, cfg, state)
    for lmbda in cfg.lambdas:
        for wf in cfg.workflows:
            key = _cell_key(lmbda, wf)
            cell = state["cells"].get(key) or {}
            if "eval" in cell:
                continue
            if "train" not in cell:
                echo(f"[{key}] training {cfg.steps} steps ...")
                cell["train"] = _train_cell(cfg, lmbda, wf, folder, model_name)
                state["cells"][key] = cell
                _save_state(folder, state)
            echo(f"[{key}] evaluating {Path(cell['train']['checkpoint']).name} ...")
            cell["eval"] = evaluate_checkpoint(cell["train"]["checkpoint"], cfg, model_name)
            state["cells"][key] = cell
            _save_state(folder, state)
            md = write_report(folder, cfg, state)
            m = cell["eval"]["mean"]
            echo(f"[{key}] {m['bpp']:.4f} bpp, {m['psnr-rgb']:.2f} dB, trained in {cell['train'].get('wall_s') or 0:.0f} s")
    state["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _save_state(folder, state)
    md = write_report(folder, cfg, state, final=True)
    return {"folder": str(folder), "markdown": md, "state": state}
