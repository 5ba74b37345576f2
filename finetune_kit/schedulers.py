"""LR schedules that honour per-group multipliers (``lr_scale``) and strategy changes.

torch's schedulers overwrite every group's LR from its own ``initial_lr`` and know nothing
of multipliers; timm's schedulers write ``lr = value * group["lr_scale"]`` for every group
(``timm.scheduler.scheduler.Scheduler.update_groups``). Strategies change ``lr_scale``
(LLRD, warm-up of newly unfrozen groups, 0 when frozen), so one timm schedule serves all.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["build_lr_scheduler", "StepwiseLR"]


@dataclass
class StepwiseLR:
    """A timm scheduler driven per optimizer step.

    Call :meth:`apply` with the global step (0-based) *before* each optimizer step, so a
    change of ``lr_scale`` made by a strategy at epoch start takes effect at once.
    """

    scheduler: object
    steps_per_epoch: int

    def apply(self, step: int) -> None:
        """Write every group's LR for optimizer update number ``step``."""
        self.scheduler.step_update(num_updates=step)

    def lr_at(self, step: int) -> float:
        """The base LR (before ``lr_scale``) at update ``step``."""
        return float(self.scheduler._get_lr(step)[0])

    def state_dict(self) -> dict:
        """The wrapped timm scheduler's state, for a checkpoint."""
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.scheduler.load_state_dict(state)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int,
                       warmup_epochs: float = 1.0, min_lr: float = 1e-6, warmup_lr_init: float | None = None,
                       kind: str = "cosine") -> StepwiseLR:
    """Warm-up then cosine (or constant) decay over ``epochs * steps_per_epoch`` optimizer steps.

    Args:
        optimizer: its groups' ``lr`` is the base LR; ``lr_scale`` multiplies it per group.
        epochs: training length in epochs (>= 1).
        steps_per_epoch: optimizer steps per epoch (>= 1).
        warmup_epochs: linear warm-up length in epochs (may be fractional; 0 disables).
        min_lr: LR at the end of the cosine (base, before ``lr_scale``).
        warmup_lr_init: LR at step 0 of the warm-up (default ``base_lr / 100``).
        kind: ``"cosine"`` or ``"constant"`` (after warm-up). A cosine with at most one step after the
            warm-up is the constant schedule (the same LRs; no decay is left to do).

    Raises:
        ValueError: non-positive ``epochs``/``steps_per_epoch`` or unknown ``kind``.
    """
    from timm.scheduler import CosineLRScheduler, StepLRScheduler

    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"epochs={epochs}, steps_per_epoch={steps_per_epoch}: both must be >= 1")
    base_lr = max(g["lr"] for g in optimizer.param_groups)
    total = epochs * steps_per_epoch
    warmup = int(round(warmup_epochs * steps_per_epoch))
    init = base_lr / 100 if warmup_lr_init is None else warmup_lr_init
    if kind == "cosine" and total - warmup <= 1:
        # no step after the warm-up to decay over (a one-epoch run warming up for an epoch, a short probe):
        # the cosine would hold the base LR, as the constant schedule does, and timm warns it has no effect
        kind = "constant"
    if kind == "cosine":
        sched = CosineLRScheduler(optimizer, t_initial=max(total - warmup, 1), lr_min=min_lr, warmup_t=warmup,
                                  warmup_lr_init=init, warmup_prefix=True, t_in_epochs=False)
    elif kind == "constant":
        sched = StepLRScheduler(optimizer, decay_t=10 * total + 1, decay_rate=1.0, warmup_t=warmup,
                                warmup_lr_init=init, t_in_epochs=False)
    else:
        raise ValueError(f"unknown LR schedule {kind!r}: use 'cosine' or 'constant'")
    return StepwiseLR(sched, steps_per_epoch)
