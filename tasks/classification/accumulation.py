"""Gradient accumulation (``--accum-steps N``): N micro-batches per optimizer step.

:func:`micro_batches` groups a loader's batches into optimizer steps; the training loop scales
each micro-batch loss by ``1 / group size`` so the accumulated gradient of a mean-reduced loss
equals the gradient of one batch of all the group's images (``--accum-steps 4`` at ``--batch-size
8`` = batch 32 for a model without BatchNorm; BatchNorm sees batches of 8 either way). The LR
schedule counts optimizer steps (:func:`optimizer_steps`); under DDP the gradient all-reduce runs only
on a group's last micro-batch (``no_sync`` on the others, as PyTorch's DDP notes recommend); mixup
and CutMix mix within each micro-batch.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable, ContextManager, Iterable, Iterator

__all__ = ["micro_batches", "optimizer_steps", "sync_context"]


def optimizer_steps(batches_per_epoch: int, accum_steps: int = 1) -> int:
    """Optimizer steps of an epoch of ``batches_per_epoch`` micro-batches: ``ceil(batches / accum_steps)``
    (a last, shorter group still steps)."""
    return max(1, math.ceil(batches_per_epoch / max(1, accum_steps)))


def micro_batches(batches: Iterable, accum_steps: int = 1) -> Iterator[tuple[object, object, bool, bool, int]]:
    """Yield ``(x, y, first, last, group_size)`` per batch: ``first``/``last`` mark a group's first and
    last micro-batch (zero the gradients before the first, step after the last); ``group_size`` is the
    number of micro-batches in the group (``accum_steps``, fewer for the epoch's last group when the
    loader's length is known and not a multiple).

    Raises:
        ValueError: ``accum_steps`` < 1.
    """
    if accum_steps < 1:
        raise ValueError(f"--accum-steps {accum_steps}: must be >= 1 (1: no accumulation)")
    total = len(batches) if hasattr(batches, "__len__") else None
    for i, (x, y) in enumerate(batches):
        start = i - i % accum_steps
        size = accum_steps if total is None else min(accum_steps, total - start)
        last = (i - start == size - 1) if total is not None else (i - start == accum_steps - 1)
        yield x, y, i == start, last, size


def sync_context(no_sync: Callable[[], ContextManager] | None, last: bool) -> ContextManager:
    """``no_sync()`` (DDP: skip the all-reduce) on a group's non-final micro-batches, else a no-op."""
    return no_sync() if (no_sync is not None and not last) else nullcontext()
