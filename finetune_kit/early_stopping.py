"""Early stopping on a validation metric (patience in epochs, ``min_delta``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["EarlyStopping"]


@dataclass
class EarlyStopping:
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    Args:
        patience: epochs without improvement before ``should_stop`` (>= 1).
        min_delta: smallest change that counts as an improvement (same unit as the metric).
        mode: ``"max"`` (AUROC, PSNR) or ``"min"`` (loss, bpp, R-D cost).

    Call :meth:`step` once per epoch; it returns True when the metric improved.
    State round-trips through :meth:`state_dict` / :meth:`load_state_dict`.
    """

    patience: int = 10
    min_delta: float = 0.0
    mode: str = "max"
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"patience={self.patience}: must be at least 1 epoch")
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode={self.mode!r}: use 'max' or 'min'")

    def improved(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta`` (no state change)."""
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def step(self, value: float, epoch: int) -> bool:
        """Record the metric of ``epoch``; return True when it improved."""
        if value != value:  # NaN never improves
            self.bad_epochs += 1
            return False
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = float(value), int(epoch), 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` epochs in a row have not improved."""
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        """Settings and counters (best, best_epoch, bad_epochs) for a checkpoint."""
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (a resumed run continues the same count)."""
        for k, v in state.items():
            setattr(self, k, v)
