"""Mixed precision that only turns on where it makes training faster.

CUDA: fp16 autocast with a GradScaler, or bf16 where the GPU supports it.
CPU: bf16 autocast only when the CPU has native bf16 (AVX512-BF16 / AMX); on an AVX2 CPU
bf16 matmuls run about 200x slower than fp32 (measured, see ``environment.md``), so
``--amp`` falls back to fp32 there and says so in one line.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

__all__ = ["AmpSettings", "resolve_amp", "cpu_has_native_bf16"]


def cpu_has_native_bf16() -> bool:
    """True when this CPU has native bf16 matmul support (AVX512-BF16 or AMX)."""
    try:
        import torch.backends.mkldnn as mkldnn

        if hasattr(mkldnn, "is_bf16_supported"):
            return bool(mkldnn.is_bf16_supported())
    except Exception:  # noqa: BLE001
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


@dataclass(frozen=True)
class AmpSettings:
    """Resolved precision: whether autocast is on, its dtype, whether to use a GradScaler,
    and a one-line ``notice`` explaining a fallback (empty when nothing to say)."""

    enabled: bool
    dtype: torch.dtype | None
    use_scaler: bool
    device_type: str
    notice: str = ""

    def autocast(self):
        """Context manager for the forward pass (a no-op when disabled)."""
        if not self.enabled:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for fp16 on CUDA."""
        return torch.amp.GradScaler(self.device_type, enabled=self.use_scaler)


def resolve_amp(requested: bool, device: torch.device | str, dtype: str = "auto") -> AmpSettings:
    """Decide the precision for ``device`` given ``--amp`` (``requested``).

    Args:
        requested: whether the user asked for mixed precision.
        device: the training device.
        dtype: ``"auto"`` (bf16 where supported, else fp16 on CUDA), ``"bf16"`` or ``"fp16"``.

    Raises:
        ValueError: unknown ``dtype``, or fp16 asked for on a CPU.
    """
    if dtype not in ("auto", "bf16", "fp16"):
        raise ValueError(f"amp dtype {dtype!r}: use auto, bf16 or fp16")
    device = torch.device(device)
    if not requested:
        return AmpSettings(False, None, False, device.type)
    if device.type == "cuda":
        if dtype == "bf16" or (dtype == "auto" and torch.cuda.is_bf16_supported()):
            return AmpSettings(True, torch.bfloat16, False, "cuda")
        return AmpSettings(True, torch.float16, True, "cuda")
    if device.type == "cpu":
        if dtype == "fp16":
            raise ValueError("fp16 autocast is not supported for training on CPU: use --amp with bf16 or drop --amp")
        if cpu_has_native_bf16():
            return AmpSettings(True, torch.bfloat16, False, "cpu")
        return AmpSettings(False, None, False, "cpu",
                           notice="--amp ignored: this CPU has no native bf16 (bf16 would be ~200x slower than fp32); training in fp32")
    return AmpSettings(False, None, False, device.type, notice=f"--amp ignored on device {device.type}; training in fp32")
