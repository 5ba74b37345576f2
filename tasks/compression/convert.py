"""Convert an official HPCM checkpoint (github.com/lyq133/LIC-HPCM) into a finetune-kit checkpoint.

``finetune-kit compress convert-official CKPT --arch base|large [--output OUT] [--lambda L]``
reads the official file safely (``torch.load(weights_only=True)``: tensors only, no pickled
code), maps every tensor with :mod:`finetune_kit.tasks.compression.models.hpcm.official`, and
writes ``{"state_dict", "model": "hpcm-base"|"hpcm-large", "config": {"model", "lmbda"},
"epoch": None, "converted_from": {...}}``, which ``compress eval`` and ``compress finetune``
load like their own checkpoints. The coder tables are rebuilt by ``update()`` (eval does it).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from finetune_kit.runs.safe_load import UnsafeWeightsError, safe_torch_load
from finetune_kit.tasks.compression.checkpoints import to_cpu_state
from finetune_kit.tasks.compression.models.hpcm.model import HPCM
from finetune_kit.tasks.compression.models.hpcm.official import (ARCH_PRESETS, ConversionReport,
                                                                 convert_official_state_dict)

__all__ = ["read_official_state_dict", "convert_official_checkpoint", "default_output", "lambda_from_name"]


def read_official_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load an official checkpoint as a state dict of tensors (``weights_only=True``).

    Accepts a bare state dict (as the official ``train.py`` saves) or a dict holding one under
    ``state_dict``/``model``/``net``; strips ``module.`` prefixes (DataParallel).

    Raises:
        FileNotFoundError: no such file.
        UnsafeWeightsError: the file needs pickled code to load (refused; names
            ``--trust-pickled-weights``, which loads it).
        ValueError: the file is not a PyTorch file, or holds no tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"official checkpoint {p} does not exist")
    try:
        obj = safe_torch_load(p, what="official checkpoint")
    except UnsafeWeightsError:
        raise  # one line naming the file, the pickled global and --trust-pickled-weights
    except Exception as exc:  # noqa: BLE001 - one line with the reason
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{p} is not a readable PyTorch checkpoint ({type(exc).__name__}: {first})") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "net"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{p} holds no state dict of tensors")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def lambda_from_name(path: str | os.PathLike) -> Optional[float]:
    """The lambda in an official file name (``0.0067.pth.tar`` -> 0.0067), or None."""
    m = re.search(r"(?<![\d.])(0\.\d+)", Path(path).name)
    return float(m.group(1)) if m else None


def default_output(path: str | os.PathLike, arch: str) -> Path:
    """``CKPT`` without ``.pth``/``.pth.tar``/``.pt``, plus ``.hpcm-ARCH.pt``, in the same folder."""
    p = Path(path)
    stem = re.sub(r"(\.pth\.tar|\.pth|\.pt|\.tar)$", "", p.name)
    return p.with_name(f"{stem}.hpcm-{arch}.pt")


def convert_official_checkpoint(path: str | os.PathLike, arch: str, output: str | os.PathLike | None = None, *,
                                lmbda: Optional[float] = None) -> tuple[Path, ConversionReport]:
    """Convert the official checkpoint ``path`` of architecture ``arch`` and write ours.

    Args:
        path: official ``.pth``/``.pth.tar`` file.
        arch: ``"base"`` (HPCM_Base, 68.5 M parameters) or ``"large"`` (HPCM_Large, 89.7 M).
        output: file to write (default :func:`default_output`).
        lmbda: the rate-distortion lambda it was trained for, stored as ``config["lmbda"]``
            (default: read from the file name, e.g. ``0.0067.pth.tar``; None if absent).

    Returns:
        ``(output path, report)``.

    Raises:
        ValueError: unknown ``arch``; the file is refused/unreadable (:func:`read_official_state_dict`);
            an official tensor has no counterpart, one of ours stays uninitialised or shapes
            differ (the wrong ``--arch``, or not an HPCM checkpoint): nothing is written then.
    """
    if arch not in ARCH_PRESETS:
        raise ValueError(f"unknown official HPCM architecture {arch!r}: use one of {', '.join(ARCH_PRESETS)}")

    official = read_official_state_dict(path)
    name = ARCH_PRESETS[arch]
    model = HPCM(name)
    sd, rep = convert_official_state_dict(official, model)
    if not rep.ok:
        raise ValueError(f"{path} does not convert to {name} (--arch {arch}): {rep.summary()}")
    model.load_state_dict(sd)
    out = Path(output) if output is not None else default_output(path, arch)
    lam = lmbda if lmbda is not None else lambda_from_name(path)
    ckpt: dict[str, Any] = {
        "state_dict": to_cpu_state(model.state_dict()), "model": name, "epoch": None,
        "config": {"model": name, "lmbda": lam, "metric": "mse"},
        "converted_from": {"path": str(path), "arch": arch, "tensors": rep.mapped, "report": rep.summary()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, out)
    return out, rep
