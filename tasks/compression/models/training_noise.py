"""The additive uniform noise of training-time quantization, optionally drawn per sample.

Learned codecs train with ``y + U(-1/2, 1/2)`` in place of rounding when they estimate the rate
(Balle et al., "Variational image compression with a scale hyperprior", ICLR 2018, Sec. 2;
CompressAI ``EntropyModel.quantize(mode="noise")``). Drawn from the global RNG, the noise of an
image depends on which other images share its batch, so a batch split over DDP ranks gets other
noise than the same batch on one process. Inside :func:`per_sample_noise` every noise draw of a
batch ``[B, ...]`` takes row ``b`` from a generator seeded with ``(seeds[b], k)`` (``k`` counts the
draws since the context opened: z first, then y), so an image's noise is a function of its own
seed: a run on N processes reproduces a run on one (see ``docs/distributed.md``). Outside the
context the draws are exactly CompressAI's (``torch.empty_like(x).uniform_(-0.5, 0.5)``), so
plain runs are unchanged.

:class:`EntropyBottleneck` and :class:`GaussianConditional` are CompressAI's models with only the
noise draw routed through :func:`training_noise`; their state dicts, likelihoods and coders are
CompressAI's.
"""
from __future__ import annotations

import contextlib
import hashlib
import threading
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor

from compressai.entropy_models import EntropyBottleneck as _EntropyBottleneck
from compressai.entropy_models import GaussianConditional as _GaussianConditional

__all__ = ["per_sample_noise", "per_sample_noise_active", "training_noise", "EntropyBottleneck",
           "GaussianConditional"]

_STATE = threading.local()


@contextlib.contextmanager
def per_sample_noise(seeds: Optional[Sequence[int]]) -> Iterator[None]:
    """Draw the training noise of the block per sample: row ``b`` of each draw from ``seeds[b]``.

    Args:
        seeds: one integer per sample of the batch (e.g. the data loader's per-sample seeds);
            ``None`` leaves the global RNG in charge (the block runs unchanged). Re-entering with
            the same seeds replays the same noise (the draw counter restarts at 0).
    """
    if seeds is None:
        yield
        return
    prev = getattr(_STATE, "active", None)
    _STATE.active = [[int(s) for s in seeds], 0]
    try:
        yield
    finally:
        _STATE.active = prev


def per_sample_noise_active() -> bool:
    """Whether a :func:`per_sample_noise` block is open on this thread."""
    return getattr(_STATE, "active", None) is not None


def _row_seed(seed: int, draw: int) -> int:
    digest = hashlib.sha256(f"noise:{seed}:{draw}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def training_noise(like: Tensor) -> Tensor:
    """``U(-1/2, 1/2)`` noise shaped like ``like [B, ...]`` (same dtype and device).

    Raises:
        ValueError: inside :func:`per_sample_noise` with a number of seeds other than ``B``.
    """
    active = getattr(_STATE, "active", None)
    if active is None:
        return torch.empty_like(like).uniform_(-0.5, 0.5)
    seeds, draw = active
    active[1] += 1
    if len(seeds) != like.shape[0]:
        raise ValueError(f"per_sample_noise got {len(seeds)} seeds for a batch of {like.shape[0]}: pass one per sample")
    rows = [torch.empty(like.shape[1:], dtype=like.dtype).uniform_(
        -0.5, 0.5, generator=torch.Generator().manual_seed(_row_seed(s, draw))) for s in seeds]
    return torch.stack(rows).to(like.device)


class EntropyBottleneck(_EntropyBottleneck):
    """CompressAI's ``EntropyBottleneck`` (factorized z model) with :func:`training_noise`.

    Its ``forward`` reshapes z ``[B, C, H, W]`` to ``[C, 1, B*H*W]`` before adding noise; inside
    :func:`per_sample_noise` the noise is drawn in the ``[B, C, H, W]`` layout and reshaped alike.
    """

    def forward(self, x: Tensor, training: Optional[bool] = None):  # type: ignore[override]
        self._batch_shape = x.shape
        return super().forward(x, training)

    def quantize(self, inputs: Tensor, mode: str, means: Optional[Tensor] = None) -> Tensor:
        if mode != "noise" or not per_sample_noise_active():
            return super().quantize(inputs, mode, means)
        shape = self._batch_shape
        noise = training_noise(inputs.new_empty(shape))
        return inputs + noise.transpose(0, 1).reshape(inputs.shape)


class GaussianConditional(_GaussianConditional):
    """CompressAI's ``GaussianConditional`` (y given scales and means) with :func:`training_noise`."""

    def quantize(self, inputs: Tensor, mode: str, means: Optional[Tensor] = None) -> Tensor:
        if mode != "noise" or not per_sample_noise_active():
            return super().quantize(inputs, mode, means)
        return inputs + training_noise(inputs)
