"""Load weights and checkpoint files without running code from them.

:func:`torch.load` with ``weights_only=False`` unpickles arbitrary objects: a crafted ``.pth``
runs code when it is opened (pickle's ``__reduce__``). Every file a user passes (``--resume``,
``--custom_weights_path``, ``--checkpoint``, a run's ``best.pt``) is read here with
``weights_only=True`` (PyTorch's restricted unpickler: tensors, containers, numbers, strings)
plus an allow-list of the few extra types our own checkpoints hold (NumPy's RNG state: an
``ndarray`` of ``uint32``). ``.safetensors`` files are read with :mod:`safetensors` (no pickle).

A file that needs any other pickled global fails with :class:`UnsafeWeightsError`, a one-line
message naming the file, the global and the opt-in: ``--trust-pickled-weights`` (or the
environment variable ``FINETUNE_KIT_TRUST_PICKLED_WEIGHTS=1``) loads it with the full unpickler,
which runs whatever code the file holds - only for files from a trusted source.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["UnsafeWeightsError", "TRUST_ENV", "TRUST_FLAG", "safe_globals", "safe_torch_load", "trust_pickled"]

#: The CLI flag that opts in to the full unpickler (it names the risk).
TRUST_FLAG = "--trust-pickled-weights"
#: Environment variable with the same effect (``1``/``true``/``yes``); the CLI flag sets it.
TRUST_ENV = "FINETUNE_KIT_TRUST_PICKLED_WEIGHTS"


class UnsafeWeightsError(ValueError):
    """A weights/checkpoint file needs pickled code to load; the message names it and the opt-in."""


def trust_pickled() -> bool:
    """Whether the user opted in to the full unpickler (:data:`TRUST_ENV` set to 1/true/yes)."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def safe_globals() -> list[Any]:
    """The non-tensor globals our own checkpoints hold, allowed on top of ``weights_only=True``:
    NumPy's array reconstruction, ``ndarray``, ``dtype`` and the ``uint32`` dtype class (the
    MT19937 state of :func:`numpy.random.get_state`, saved by :func:`finetune_kit.seeding.rng_state`),
    NumPy scalars (``np.float64`` in metrics) and the common dtype classes.
    None of them can call anything else."""
    import numpy as np

    try:
        from numpy.core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy >= 2 moved it
        from numpy._core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    allowed: list[Any] = [_reconstruct, scalar, np.ndarray, np.dtype]  # scalar: a NumPy float in metrics
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in ("UInt32DType", "Int64DType", "Int32DType", "Float64DType", "Float32DType", "BoolDType")
                    if hasattr(dtypes, n)]
    return allowed


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu", *, what: str = "file",
                    trust: bool | None = None) -> Any:
    """Read ``path`` without executing code from it.

    ``.safetensors`` files go through :func:`safetensors.torch.load_file`; anything else through
    ``torch.load(weights_only=True)`` with :func:`safe_globals` allowed.

    Args:
        path: the file.
        map_location: as for :func:`torch.load`. Default ``"cpu"``.
        what: how the message names the file (e.g. ``"--custom_weights_path x.pth"``).
        trust: load with the full unpickler (runs code!); default :func:`trust_pickled`.

    Returns:
        the loaded object (a dict of tensors for safetensors).

    Raises:
        UnsafeWeightsError: the file needs a pickled global outside the allow-list (names it and
            :data:`TRUST_FLAG`). Other errors of :func:`torch.load` (truncated, not a zip/pickle)
            propagate unchanged.
    """
    import torch

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=str(map_location) if isinstance(map_location, str) else "cpu")
    if trust if trust is not None else trust_pickled():
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - only the unpickler's refusal is re-worded
        text = str(exc)
        # the restricted unpickler names what it refused: "Unsupported global: GLOBAL os.system ..."
        # (other failures - garbage, truncation - say "Unsupported operand", "invalid load key", ...)
        if "Unsupported global" not in text and "GLOBAL " not in text:
            raise
        glob = next((line.split("GLOBAL", 1)[1].strip().split()[0] for line in text.splitlines()
                     if "GLOBAL " in line), None)
        needs = f" (it needs the pickled global {glob})" if glob else ""
        raise UnsafeWeightsError(
            f"{what} {path}: refused to unpickle code{needs}; loading it could run arbitrary code. Re-save it as "
            f"a plain state dict or .safetensors, or, only for a file you trust, put {TRUST_FLAG} before the "
            f"command (finetune-kit {TRUST_FLAG} COMMAND ...) or set {TRUST_ENV}=1") from None
