"""Saving and loading compression checkpoints.

A checkpoint written by ``compress train`` is a dict with ``state_dict``, ``optimizer``,
``aux_optimizer``, ``lr_scheduler``, ``epoch`` (last completed, 0-based), ``config`` (the
resolved :class:`~finetune_kit.tasks.compression.run.config.RunConfig` as a flat dict: ``model``, ``lmbda``,
``metric``, ...), ``model`` (the model name), ``metrics`` and ``rng_state``. Files are written
atomically by :class:`finetune_kit.runs.checkpoint.CheckpointManager`.

Loading accepts a bare state dict or a whole checkpoint, strips ``module.``/``_orig_mod.``
prefixes (via :func:`finetune_kit.runs.checkpoint.extract_state_dict`) and goes through
``CompressionModel.load_state_dict``, which resizes the CDF buffers of a state dict saved after
``update()``. A checkpoint of another architecture or size fails with one line naming the
differing keys and shapes.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from finetune_kit.runs.checkpoint import extract_state_dict, load_checkpoint, load_resume_checkpoint
from finetune_kit.tasks.compression.finetune.adapters import attach_recorded_adapters
from finetune_kit.tasks.compression.models.zoo import build_model

__all__ = ["CheckpointMismatchError", "load_weights", "load_model", "checkpoint_model_name", "ENTROPY_BUFFERS",
           "default_checkpoint", "resume_config_file", "run_folder_of", "started_without_checkpoint"]

#: buffers CompressAI sizes in ``update()``; their shapes may legitimately differ
ENTROPY_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


class CheckpointMismatchError(ValueError):
    """The state dict belongs to another architecture or size than the model."""


def _describe(keys: list[str], n: int = 3) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _by_module(keys: list[str]) -> str:
    counts: dict[str, int] = {}
    for k in keys:
        counts[k.split(".")[0]] = counts.get(k.split(".")[0], 0) + 1
    return ", ".join(f"{m} {c}" for m, c in sorted(counts.items(), key=lambda kv: -kv[1]))


def _is_entropy_buffer(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in ENTROPY_BUFFERS


def load_weights(model: nn.Module, source: str | os.PathLike | Mapping[str, Any], *,
                 model_name: Optional[str] = None) -> nn.Module:
    """Load weights into ``model`` from a file, a whole checkpoint dict or a state dict.

    Args:
        model: a CompressAI ``CompressionModel`` (HPCM or a zoo architecture).
        source: path of a ``.pt``/``.pth`` file, or a dict (checkpoint or state dict).
        model_name: the model's name, only used in error messages.

    Returns:
        ``model`` (loaded in place).

    Raises:
        FileNotFoundError / ValueError: unreadable file (from :func:`load_checkpoint`).
        CheckpointMismatchError: missing/unexpected keys or shape mismatches (one line naming
            them, and the checkpoint's model name when it records one).
    """
    obj = load_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    sd = extract_state_dict(obj)
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not _is_entropy_buffer(k)]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in sd and not _is_entropy_buffer(k) and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys [{_by_module(missing)}] ({_describe(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys [{_by_module(unexpected)}] ({_describe(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (checkpoint vs model: {_describe(shapes, 2)})")
        saved = checkpoint_model_name(obj) if isinstance(obj, Mapping) else None
        hint = f"the checkpoint was saved from {saved!r}" if saved else "it comes from another architecture or size"
        target = f" {model_name}" if model_name else ""
        raise CheckpointMismatchError(f"checkpoint does not fit model{target}: {'; '.join(parts)}; "
                                      f"{hint}: pass the matching --model")
    # CompressionModel.load_state_dict resizes the CDF buffers written by update()
    model.load_state_dict(sd)
    return model


def checkpoint_model_name(obj: Mapping[str, Any]) -> Optional[str]:
    """The model name recorded in a checkpoint (``model`` or ``config['model']``), else None."""
    name = obj.get("model")
    if isinstance(name, str):
        return name
    cfg = obj.get("config")
    if isinstance(cfg, Mapping) and isinstance(cfg.get("model"), str):
        return cfg["model"]
    return None


def load_model(path: str | os.PathLike, model_name: Optional[str] = None) -> tuple[nn.Module, dict]:
    """Build the model a checkpoint was trained with and load its weights (eval mode).

    Args:
        path: checkpoint file.
        model_name: overrides the name recorded in the checkpoint (required for bare state dicts).

    Returns:
        ``(model, checkpoint_dict)``.

    Raises:
        ValueError: no model name recorded and none given.
        CheckpointMismatchError: see :func:`load_weights`.
    """
    ckpt = load_checkpoint(path)
    name = model_name or checkpoint_model_name(ckpt)
    if name is None:
        raise ValueError(f"{path} records no model name (a bare state dict?): pass --model, e.g. --model hpcm-tiny")
    model = build_model(name)
    attach_recorded_adapters(model, ckpt.get("config"))  # a run with --adapter: its adapters, then its weights
    load_weights(model, ckpt, model_name=name)
    return model.eval(), ckpt


def to_cpu_state(state: Mapping[str, Any]) -> dict:
    """Copy of a model/optimizer/scheduler state dict with tensors moved to CPU (portable files: they
    load on any device). A model state dict keeps its ``_metadata`` (module versions)."""
    def move(v):
        if isinstance(v, torch.Tensor):
            return v.detach().cpu()
        if isinstance(v, Mapping):
            return {k: move(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(move(x) for x in v)
        return v
    out = move(dict(state))
    if hasattr(state, "_metadata"):

        out = OrderedDict(out)
        out._metadata = state._metadata  # type: ignore[attr-defined]
    return out


def default_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` itself if it is a file, else ``path/checkpoints/last.pt`` (a run folder).

    When a run folder's ``last.pt`` is missing or dangling (a run killed by an older version
    mid-save), the newest loadable ``epoch_NNNN.pt`` is used instead, with a warning saying so
    (:func:`finetune_kit.runs.checkpoint.load_resume_checkpoint`).

    Raises:
        FileNotFoundError: a folder with no loadable checkpoint (names it and the fix).
    """
    p = Path(path)
    if p.is_dir():
        for cand in (p / "checkpoints" / "last.pt", p / "last.pt"):
            if cand.exists():
                return cand
        folder = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        if any(folder.glob("epoch_*.pt")):
            _, found, note = load_resume_checkpoint(folder)
            if note:
                warnings.warn(note, stacklevel=2)
            return found
        raise FileNotFoundError(f"{p} holds no checkpoints/last.pt: pass a run folder of 'compress train' or a .pt file")
    return p


def resume_config_file(resume: str | os.PathLike) -> Path | None:
    """The ``config.json`` of the run that ``--resume`` names (a run folder, or a checkpoint in its
    ``checkpoints/``), or None when there is none (then every option must be given)."""
    cand = run_folder_of(resume) / "config.json"
    return cand if cand.is_file() else None


def run_folder_of(resume: str | os.PathLike) -> Path:
    """The run folder ``--resume`` names: the folder itself, or ``RUN`` for a checkpoint file in
    ``RUN/checkpoints/`` (or directly in ``RUN``). Symbolic links (``last.pt``) are not followed: a
    link planted in a run folder must not move the run's writes elsewhere."""
    p = Path(os.path.abspath(resume))
    if p.is_dir():
        return p
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def started_without_checkpoint(resume: str | os.PathLike) -> bool:
    """Whether ``resume`` is a run folder that was killed before its first checkpoint was complete:
    a ``config.json``, and no ``last.pt`` nor ``epoch_*.pt`` (at most a temp file of the killed save).
    ``--resume`` then starts that run again from epoch 1 in the same folder."""
    p = Path(resume)
    if not p.is_dir() or not (p / "config.json").is_file():
        return False
    folders = [p / "checkpoints", p]
    return not any((f / "last.pt").is_symlink() or (f / "last.pt").exists() or any(f.glob("epoch_*.pt"))
                   for f in folders)
