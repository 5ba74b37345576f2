"""Early stopping over several named metrics at once (e.g. the R-D cost of each coding scale).

Each metric ("scale") has its own :class:`finetune_kit.early_stopping.EarlyStopping`; every
epoch :meth:`ScaleEarlyStopping.step` returns one signal per scale:

- ``improved``: beat its best by more than ``min_delta`` (its best state is saved);
- ``no_improvement``: did not, and has not run out of patience;
- ``stopped``: ran out of patience (this epoch or earlier; a stopped scale stays stopped).

The run should stop when every scale has stopped (:attr:`should_stop`).

Adaptive patience (``adaptive=True``): on an improvement, the relative gain
``r = |best_before - value| / |best_before|`` changes that scale's patience: ``r >= fast``
(default 1 %) adds ``grow`` epochs (default 20 % of the current patience, at least 1) up to
``max_patience``; ``r < slow`` (default 0.1 %) removes ``shrink`` epochs (same rule) down to
the floor ``min(min_patience, patience)`` (``min_patience`` default 10, so a user's smaller
patience is never raised). Steps are epochs.

Each scale's best state is whatever ``state_fn()`` returns (e.g. a CPU copy of the model's
state dict): kept in memory, or written atomically to ``directory/best_<scale>.pt``.
:meth:`save_history` writes the per-epoch values, signals and patience as JSON and
:meth:`plot` draws the convergence of each scale (matplotlib, Agg).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from finetune_kit.runs.checkpoint import atomic_save, atomic_write_text
from finetune_kit.early_stopping import EarlyStopping

#: scale names that may become a file name ``best_<scale>.pt`` (no separator, so it stays in its folder)
_SCALE_NAME = re.compile(r"[A-Za-z0-9_.-]+")

__all__ = ["ScaleEarlyStopping", "IMPROVED", "NO_IMPROVEMENT", "STOPPED"]

IMPROVED, NO_IMPROVEMENT, STOPPED = "improved", "no_improvement", "stopped"


class ScaleEarlyStopping:
    """Per-metric early stopping with adaptive patience (see the module docstring).

    Args:
        scales: metric names, e.g. ``("s1", "s2", "s3")``.
        patience: initial patience in epochs (>= 1). Default 50 (guides).
        min_delta: smallest change that counts as an improvement (metric units). Default 0.
        mode: ``"min"`` (R-D cost, bpp) or ``"max"`` (PSNR).
        adaptive: adapt the patience per scale. Default True.
        max_patience: ceiling of adaptive patience (default ``2 * patience``).
        min_patience: floor of adaptive patience (default 10; never above ``patience``).
        fast, slow: relative-gain thresholds for growing / shrinking patience (0.01, 0.001).
        directory: where best states are written (``best_<scale>.pt``); None keeps them in memory.

    Raises:
        ValueError: no scales, ``patience`` < 1, ``max_patience`` < ``patience``, bad ``mode``, or (with
            ``directory``) a scale name that is not a plain file name part (letters, digits, -, _, .).
    """

    def __init__(self, scales: Sequence[str], *, patience: int = 50, min_delta: float = 0.0, mode: str = "min",
                 adaptive: bool = True, max_patience: int | None = None, min_patience: int = 10,
                 fast: float = 0.01, slow: float = 0.001, directory: str | Path | None = None) -> None:
        if not scales:
            raise ValueError("scale early stopping needs at least one metric name, e.g. ('s1', 's2', 's3')")
        self.scales = list(scales)
        self.stoppers = {s: EarlyStopping(patience=patience, min_delta=min_delta, mode=mode) for s in self.scales}
        self.max_patience = int(max_patience if max_patience is not None else 2 * patience)
        if self.max_patience < patience:
            raise ValueError(f"max_patience={self.max_patience} is below patience={patience}: raise it")
        self.min_patience = min(int(min_patience), int(patience))
        self.adaptive, self.fast, self.slow = adaptive, float(fast), float(slow)
        self.directory = Path(directory) if directory is not None else None
        bad = [s for s in self.scales if not _SCALE_NAME.fullmatch(str(s))]
        if self.directory is not None and bad:  # names become files best_<scale>.pt inside directory
            raise ValueError(f"scale names {bad} cannot name files in {self.directory}: use letters, digits, -, _ and .")
        self.stopped: dict[str, int | None] = {s: None for s in self.scales}
        self.best_states: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []

    def _adapt(self, es: EarlyStopping, before: float | None, value: float) -> None:
        if not self.adaptive or before is None or before == 0 or not math.isfinite(before):
            return
        gain = abs(before - value) / abs(before)
        step = max(1, int(round(0.2 * es.patience)))
        if gain >= self.fast:
            es.patience = min(self.max_patience, es.patience + step)
        elif gain < self.slow:
            es.patience = max(self.min_patience, es.patience - step)

    def step(self, metrics: Mapping[str, float], epoch: int,
             state_fn: Callable[[], Any] | None = None) -> dict[str, str]:
        """Record one epoch's value per scale; returns ``{scale: signal}``.

        Args:
            metrics: ``{scale: value}``; every scale must be present (stopped ones may be omitted).
            epoch: the epoch (0-based) the values belong to.
            state_fn: called (once per epoch at most) when a scale improved; its result is that
                scale's best state.

        Raises:
            KeyError: a scale that has not stopped is missing from ``metrics``.
        """
        signals: dict[str, str] = {}
        state = None
        for s in self.scales:
            es = self.stoppers[s]
            if self.stopped[s] is not None:
                signals[s] = STOPPED
                continue
            if s not in metrics:
                raise KeyError(f"scale early stopping: no value for {s!r} at epoch {epoch} (got {sorted(metrics)})")
            value, before = float(metrics[s]), es.best
            if es.step(value, epoch):
                self._adapt(es, before, value)
                signals[s] = IMPROVED
                if state_fn is not None:
                    state = state_fn() if state is None else state
                    self._keep(s, state, epoch)
            elif es.should_stop:
                self.stopped[s] = epoch
                signals[s] = STOPPED
            else:
                signals[s] = NO_IMPROVEMENT
        self.history.append({"epoch": int(epoch), "values": {s: metrics.get(s) for s in self.scales},
                             "signals": signals, "patience": {s: self.stoppers[s].patience for s in self.scales},
                             "best": {s: self.stoppers[s].best for s in self.scales}})
        return signals

    def _keep(self, scale: str, state: Any, epoch: int) -> None:
        if self.directory is not None:
            atomic_save({"epoch": epoch, "scale": scale, "state": state}, self.directory / f"best_{scale}.pt")
            self.best_states[scale] = self.directory / f"best_{scale}.pt"
        else:
            self.best_states[scale] = state

    @property
    def should_stop(self) -> bool:
        """True once every scale has stopped."""
        return all(v is not None for v in self.stopped.values())

    def best(self) -> dict[str, dict[str, Any]]:
        """``{scale: {"value", "epoch", "patience", "stopped_at"}}``."""
        return {s: {"value": es.best, "epoch": es.best_epoch, "patience": es.patience, "stopped_at": self.stopped[s]}
                for s, es in self.stoppers.items()}

    # -- persistence -----------------------------------------------------------------
    def state_dict(self) -> dict:
        """Counters, patience, stop epochs and history (best states are not included; see ``directory``)."""
        return {"stoppers": {s: es.state_dict() for s, es in self.stoppers.items()}, "stopped": dict(self.stopped),
                "history": list(self.history)}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict`. With a ``directory``, each ``best_<scale>.pt`` there is
        checked against the restored best epoch: a file written by a later epoch (the run
        resumed from an earlier checkpoint than its latest, abandoning those epochs) is deleted
        with a warning, and the scale's best state is written again at its next improvement.

        Raises:
            ValueError: the state is for other scales.
        """
        if set(state["stoppers"]) != set(self.scales):
            raise ValueError(f"early-stopping state is for scales {sorted(state['stoppers'])}, not {self.scales}")
        for s, st in state["stoppers"].items():
            self.stoppers[s].load_state_dict(st)
        self.stopped = dict(state["stopped"])
        self.history = list(state["history"])
        self.best_states = {}
        if self.directory is not None:
            self._reconcile_best_files()

    def _reconcile_best_files(self) -> None:
        import warnings

        from finetune_kit.runs.atomic import remove_stale_temp
        from finetune_kit.runs.checkpoint import load_checkpoint

        remove_stale_temp(self.directory)  # temp files of a write killed before its rename
        for s, es in self.stoppers.items():
            path = self.directory / f"best_{s}.pt"
            if not path.is_file():
                continue
            saved_epoch = load_checkpoint(path).get("epoch")
            if saved_epoch == es.best_epoch:
                self.best_states[s] = path
            else:
                path.unlink()
                warnings.warn(f"{path}: best state of epoch {saved_epoch} belongs to epochs abandoned by the resume "
                              f"(best {s} is at epoch {es.best_epoch}); deleted, written again at the next improvement",
                              stacklevel=3)

    def save_history(self, path: str | Path) -> Path:
        """Write the history (and each scale's best) as JSON, atomically. Returns the path."""
        data = {"scales": self.scales, "best": self.best(), "history": self.history}
        return atomic_write_text(json.dumps(data, indent=2, default=str), Path(path))

    def figure(self, ylabel: str = "validation R-D cost"):
        """One panel per scale (shared epoch axis, each its own y range, so a small s2/s3 cost is
        not squashed under s1's): the scale's value per epoch, its best epoch (dot) and stop epoch
        (dotted line). Returns the matplotlib Figure."""
        import matplotlib  # local: matplotlib loads only when a figure is drawn (start-up time)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # local: drawn figures only (start-up time)
        from matplotlib.ticker import MaxNLocator  # local: as above

        scales = [s for s in self.scales if any(h["values"].get(s) is not None for h in self.history)] or self.scales
        fig, axes = plt.subplots(len(scales), 1, figsize=(7, 1.9 * len(scales) + 0.8), sharex=True, squeeze=False)
        for ax, s, colour in zip(axes[:, 0], scales, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")):
            pts = [(h["epoch"], h["values"][s]) for h in self.history if h["values"].get(s) is not None]
            if pts:
                ax.plot(*zip(*pts), ".-", color=colour)
            es = self.stoppers[s]
            if es.best is not None:
                ax.plot([es.best_epoch], [es.best], "o", color=colour)
            if self.stopped[s] is not None:
                ax.axvline(self.stopped[s], color=colour, ls=":", lw=1)
            stop = f", stopped at {self.stopped[s]}" if self.stopped[s] is not None else ""
            best = f"best {es.best:.4g} at epoch {es.best_epoch}" if es.best is not None else "no value yet"
            ax.set_title(f"{s}: {best}{stop}", fontsize=8, loc="left")
            ax.set_ylabel(s)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("epoch")
        axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.suptitle(f"per-scale convergence: {ylabel} (dot: best, dotted: stopped)", fontsize=10)
        fig.tight_layout()
        return fig

    def plot(self, path: str | Path, ylabel: str = "validation R-D cost") -> Path:
        """Write :meth:`figure` to ``path`` (PNG). Returns the path."""
        import matplotlib.pyplot as plt  # local: drawn figures only (start-up time)

        fig = self.figure(ylabel)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
