"""LR warm-up of newly unfrozen layer groups, shared by the unfreezing strategies."""
from __future__ import annotations

from typing import Iterable, Mapping


class UnfreezeWarmup:
    """A group unfrozen at epoch ``s`` trains at ``warmup_start + (1 - warmup_start) * t`` times its
    LR in epoch ``e``, ``t = min(1, (e - s) / warmup_epochs)``: a linear ramp over ``warmup_epochs``
    epochs, so weights tuned for the frozen features are not hit by the full LR at once (the role
    of ULMFiT's slanted triangular LR after each unfreeze; Howard & Ruder, ACL 2018, section 3.2).
    Groups trainable from the start are not ramped (the run's own LR warm-up covers them).

    Args:
        warmup_epochs: ramp length in epochs (0: no ramp, factor 1). Default 1.
        warmup_start: LR fraction in the unfreeze epoch, in (0, 1]. Default 0.1.

    Raises:
        ValueError: ``warmup_epochs`` < 0 or ``warmup_start`` outside (0, 1].
    """

    def __init__(self, warmup_epochs: int = 1, warmup_start: float = 0.1) -> None:
        if not 0.0 < warmup_start <= 1.0:
            raise ValueError(f"warmup_start={warmup_start}: must be in (0, 1]")
        if warmup_epochs < 0:
            raise ValueError(f"unfreeze_warmup_epochs={warmup_epochs}: must be >= 0")
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_start = float(warmup_start)
        self.unfrozen_at: dict[str, int] = {}

    def mark(self, groups: Iterable[str], epoch: int) -> None:
        """Record that ``groups`` start training at the 0-based epoch index ``epoch``."""
        for g in groups:
            self.unfrozen_at[g] = int(epoch)

    def factor(self, group_name: str, epoch: int) -> float:
        """The ramp's LR factor of ``group_name`` at the 0-based epoch ``epoch`` (1 when not ramped)."""
        start = self.unfrozen_at.get(group_name)
        if start is None or self.warmup_epochs == 0:
            return 1.0
        t = min(1.0, max(0.0, (epoch - start) / self.warmup_epochs))
        return self.warmup_start + (1.0 - self.warmup_start) * t

    def state_dict(self) -> dict[str, int]:
        """``{group: unfreeze epoch}``, for a strategy's checkpointed state."""
        return dict(self.unfrozen_at)

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore :meth:`state_dict`."""
        self.unfrozen_at = {k: int(v) for k, v in state.items()}
