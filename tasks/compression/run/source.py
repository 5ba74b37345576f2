"""Where a compression run starts: random weights, a source checkpoint, or a run to resume.

``compress train`` has no source (random weights); ``compress finetune`` takes its weights from
``--checkpoint`` (whole checkpoints, ``module.`` prefixes and post-``update()`` state dicts are
accepted by :func:`~finetune_kit.tasks.compression.checkpoints.load_weights`). A fine-tune is a new
run: only the weights are taken, never the optimizer, schedule or epoch, also (and especially) when
the checkpoint was trained at another lambda (announced in :attr:`Source.notes`). ``--resume``
continues a run itself, with every state restored.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from finetune_kit.runs.checkpoint import check_checkpoint_folder, load_checkpoint
from finetune_kit.runs.run_dir import new_run_dir
from finetune_kit.tasks.compression.checkpoints import (checkpoint_model_name, default_checkpoint, run_folder_of,
                                                         started_without_checkpoint)
from finetune_kit.tasks.compression.distributed import main_run_path
from finetune_kit.tasks.compression.finetune.adapters import check_adapter_targets
from finetune_kit.tasks.compression.run.config import RunConfig

__all__ = ["DEFAULT_LAMBDA", "DEFAULT_MODEL", "FromScratchWarning", "Source", "resolve_source"]

#: lambda of a run that names none and starts from no checkpoint (the paper's quality 3)
DEFAULT_LAMBDA = 0.0067
#: model of a run that names none and starts from no checkpoint
DEFAULT_MODEL = "hpcm-tiny"


class FromScratchWarning(UserWarning):
    """``compress finetune`` started without a checkpoint: the model trains from random weights."""


@dataclass
class Source:
    """Where a run starts: ``model_name``, the source checkpoint (``source``, None from scratch or on
    resume) and its lambda, the ``resume`` checkpoint (or None: a new run, or a ``--resume`` of a run
    killed during its first save, which starts again), the ``lmbda`` in effect, the ``run_path`` and
    ``notes`` printed at the start."""

    model_name: str
    source: Optional[dict]
    source_lmbda: Optional[float]
    resume: Optional[dict]
    lmbda: float
    run_path: Path
    notes: list[str] = field(default_factory=list)


def _from_checkpoint(cfg: RunConfig) -> tuple[str, Optional[dict], Optional[float]]:
    """``(model name, source checkpoint or None, its lambda or None)``; warns
    :class:`FromScratchWarning` when a fine-tune has none."""
    src = cfg.source
    if src.checkpoint is None:
        if cfg.warn_from_scratch:
            warnings.warn("no --checkpoint given: training starts FROM SCRATCH (random weights), which is not a "
                          "fine-tune; pass --checkpoint RUN/checkpoints/best.pt", FromScratchWarning, stacklevel=4)
        return src.model or DEFAULT_MODEL, None, None
    ckpt = load_checkpoint(default_checkpoint(src.checkpoint))
    name = src.model or checkpoint_model_name(ckpt)
    if name is None:
        raise ValueError(f"{src.checkpoint} records no model name (a bare state dict?): pass --model, e.g. hpcm-tiny")
    recorded = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    return name, ckpt, recorded.get("lmbda")


def _resumed(cfg: RunConfig) -> tuple[Optional[dict], Path]:
    """``(checkpoint, run folder)`` of ``--resume`` (a run folder or one of its checkpoints); the
    checkpoint is None for a run killed during its first save, which starts again at epoch 1 in the
    same folder. The folder is found without following links (a planted ``last.pt`` link must not move
    the run's writes elsewhere) and its ``checkpoints/`` is checked as untrusted input first.

    Raises:
        ValueError: the checkpoint was trained with another model, lambda or metric than the one given;
            ``checkpoints/`` is a link or its index is not what a run writes.
    """
    run_path = run_folder_of(cfg.run.resume)
    check_checkpoint_folder(run_path / "checkpoints")  # untrusted input: refused before anything is written
    if started_without_checkpoint(cfg.run.resume):
        print(f"{cfg.run.resume} holds no complete checkpoint (the run stopped during its first save): starting it "
              "again at epoch 1 in the same folder")
        return None, run_path
    ckpt_path = default_checkpoint(cfg.run.resume)
    ckpt = load_checkpoint(ckpt_path)
    prev = ckpt.get("config") or {}
    for key in ("model", "lmbda", "metric"):
        given = getattr(cfg.source, key)
        if given is not None and key in prev and prev[key] != given:
            raise ValueError(f"cannot resume {ckpt_path}: it was trained with {key}={prev[key]!r}, not {given!r}; "
                             "--resume continues the same run (use 'compress finetune --checkpoint' to start from it "
                             "with new settings)")
    return ckpt, run_path


def resolve_source(cfg: RunConfig) -> Source:
    """The model, weights, lambda and run folder of a run (see :class:`Source`).

    ``lmbda``: ``cfg.source.lmbda``, else the resumed run's, else the source checkpoint's, else
    :data:`DEFAULT_LAMBDA`. A new run gets a new folder under ``cfg.run.output_dir`` (named
    ``cfg.run.name``, else after the model, command and lambda; rank 0 makes it under torchrun).

    Raises:
        ValueError: a checkpoint that records no model name (pass ``--model``); a resumed run of
            another model, lambda or metric; ``--adapter-targets`` that fit no module of the model.
    """
    resume, run_path = _resumed(cfg) if cfg.run.resume is not None else (None, None)
    if resume is not None:
        model_name, source, src_lmbda = resume["model"], None, None
    else:  # a new run, or one started again after a kill in its first save (same folder)
        model_name, source, src_lmbda = _from_checkpoint(cfg)
    lmbda = cfg.source.lmbda or (resume["config"]["lmbda"] if resume else None) or src_lmbda or DEFAULT_LAMBDA
    notes = []
    if source is not None and src_lmbda is not None and not math.isclose(src_lmbda, lmbda):
        notes.append(f"checkpoint trained at lambda={src_lmbda:g}; fine-tuning to lambda={lmbda:g}: optimizer, LR "
                     "schedule and epoch counter start fresh")
    check_adapter_targets(model_name, cfg.adapter.adapter, cfg.adapter.adapter_targets)  # before the run folder
    if run_path is None:
        name = cfg.run.name or cfg.default_run_name(model_name, lmbda)
        run_path = main_run_path(lambda: new_run_dir(cfg.run.output_dir, name))
    return Source(model_name, source, src_lmbda, resume, lmbda, run_path, notes)
