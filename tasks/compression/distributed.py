"""What ``compress train`` and ``compress finetune`` add to :mod:`finetune_kit.distributed` under torchrun.

- :func:`ddp_model`: a :class:`~finetune_kit.distributed.DDPTracker` around the codec that leaves
  the entropy bottleneck's ``quantiles`` to their own aux optimizer (the aux loss depends on the
  quantiles and detached density parameters only, so it is identical on every rank and needs no
  all-reduce) and does not broadcast buffers each step (codecs hold constant buffers only: no
  BatchNorm). It re-wraps after progressive unfreezing changes the trainable set.
- :func:`main_run_path`: rank 0 chooses the new run folder, every rank gets its path.
- :func:`quiet_unless_main`: the per-epoch lines are printed by rank 0 alone.

Rank 0 alone writes the run folder (``RunDir(enabled=...)``), ``metrics.jsonl``/``steps.jsonl``,
wandb and the checkpoints; per-scale early-stopping decisions and gamma come from rank 0's
validation values, broadcast to every rank (see docs/distributed.md).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from finetune_kit.distributed import DDPTracker, broadcast_object, is_main
from finetune_kit.tasks.compression.engine import is_aux_param

__all__ = ["ddp_model", "main_run_path", "quiet_unless_main"]


def ddp_model(model: nn.Module, device: torch.device | str | None = None) -> Any:
    """The :class:`~finetune_kit.distributed.DDPTracker` of a codec (``.model()`` gives the module
    to train this epoch: ``model`` itself in a plain run)."""

    ignore = [n for n, _ in model.named_parameters() if is_aux_param(n)]
    return DDPTracker(model, device, ignore=ignore, broadcast_buffers=False)


def main_run_path(make: Callable[[], Path]) -> Path:
    """``make()`` on rank 0 (it creates the folder), broadcast to every rank; ``make()`` when alone."""

    return Path(broadcast_object(str(make()) if is_main() else None))


@contextlib.contextmanager
def quiet_unless_main() -> Iterator[None]:
    """Swallow the block's stdout on ranks other than 0 (rank 0 prints for the job)."""

    if is_main():
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield
