"""The ``--device auto`` rule, in one place: CUDA when torch sees a CUDA device, else the CPU."""
from __future__ import annotations

__all__ = ["resolve_auto_device"]


def resolve_auto_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when ``torch.cuda.is_available()``, else ``"cpu"``; any other value is
    returned stripped and unchanged (its check is the caller's, e.g. a config validator)."""
    device = str(device).strip()
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
