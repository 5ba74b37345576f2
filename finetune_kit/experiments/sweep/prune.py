"""Pruning of hopeless trials from their per-epoch validation values.

Without Optuna the rule is :func:`median_rule` (Optuna's median stopping rule, on the values of
the completed trials kept in the sweep state); with ``--method tpe`` it is Optuna's
``MedianPruner``, fed through ``trial.report``. Both read the trial's ``metrics.jsonl``
(:func:`epoch_values`). A metric the trials do not log per epoch (``test_auroc`` is written
once at the end) cannot prune: :class:`Pruner` says so once and stops trying.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Callable

from finetune_kit.experiments.run_files import flatten, read_jsonl

__all__ = ["Pruner", "epoch_values", "median_rule"]


def median_rule(values: dict[int, float], completed: list[dict[str, float]], mode: str, *, metric: str = "metric",
                warmup: int = 1, min_trials: int = 3) -> str | None:
    """Optuna's median stopping rule on per-epoch values; the reason to prune, or None.

    Args:
        values: the running trial's ``{epoch: value}``.
        completed: completed trials' ``{"epoch": value}`` maps (keys are strings, as in the state file).
        mode: ``"max"`` or ``"min"``.
        metric: the metric's name, for the reason text.
        warmup: first epoch that may prune. min_trials: completed trials with a value at
            that epoch needed before comparing.

    A trial is pruned at the first epoch ``e >= warmup`` where its best value up to ``e`` is
    worse than the median of the completed trials' values at ``e``.
    """
    if len(completed) < min_trials:
        return None
    better = max if mode == "max" else min
    for epoch in sorted(values):
        if epoch < warmup:
            continue
        others = [c[str(epoch)] for c in completed if str(epoch) in c]
        if len(others) < min_trials:
            continue
        median = statistics.median(others)
        best_so_far = better(v for e, v in values.items() if e <= epoch)
        if (best_so_far < median) if mode == "max" else (best_so_far > median):
            return (f"pruned at epoch {epoch}: best {metric} so far {best_so_far:.4g} is worse than the median "
                    f"{median:.4g} of {len(others)} completed trials at that epoch")
    return None


def epoch_values(run_dir: str | Path, key: str) -> tuple[dict[int, float], set[str]]:
    """``({epoch: value}, keys)`` of ``key`` in a run's ``metrics.jsonl``: the numeric values
    (by the record's ``epoch``, else its position) and every (flattened) key the records hold."""
    records, _ = read_jsonl(Path(run_dir) / "metrics.jsonl")
    values: dict[int, float] = {}
    keys: set[str] = set()
    for i, r in enumerate(records):
        flat = flatten(r)
        keys.update(flat)
        v = flat.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            values[int(r.get("epoch", i))] = float(v)
    return values, keys


class Pruner:
    """Decides whether a running trial is pruned.

    Args:
        metric: the per-epoch key (``SweepConfig.prune_metric``). objective: the sweep's
            objective (for messages). mode: ``max``/``min``. enabled: ``pruning == "median"``.
        warmup, min_trials: see :func:`median_rule`. echo: where the one-line notice goes.
    """

    def __init__(self, metric: str, objective: str, mode: str, *, enabled: bool = True, warmup: int = 1,
                 min_trials: int = 3, echo: Callable[[str], None] = print) -> None:
        self.metric, self.objective, self.mode = metric, objective, mode
        self.enabled, self.warmup, self.min_trials, self.echo = enabled, warmup, min_trials, echo

    def check_logged(self, tag: str, values: dict[int, float], keys: set[str]) -> None:
        """Turn pruning off, with one line saying why, when a finished trial's per-epoch
        records (``keys``: all their keys) never hold the pruning key (``values`` empty)."""
        if self.enabled and keys and not values:
            self.enabled = False
            shown = ", ".join(sorted(k for k in keys if k.startswith("val_"))[:8]) or ", ".join(sorted(keys)[:8])
            self.echo(f"note: pruning is off: {tag} logs no per-epoch {self.metric!r} for the objective "
                      f"{self.objective!r} (it logs e.g. {shown}); pass --prune-metric KEY to prune on one of them")

    def reason(self, values: dict[int, float], completed: list[dict[str, float]], optuna_trial: Any = None,
               reported: set[int] | None = None) -> str | None:
        """Why the trial with per-epoch ``values`` should stop, or None.

        ``completed``: the completed trials' per-epoch values (median rule). ``optuna_trial``:
        the trial of a TPE sweep (its values are reported once per epoch, recorded in
        ``reported``, and Optuna's pruner decides).
        """
        if not self.enabled or not values:
            return None
        if optuna_trial is not None:
            reported = reported if reported is not None else set()
            for epoch in sorted(values):
                if epoch not in reported:
                    optuna_trial.report(values[epoch], epoch)
                    reported.add(epoch)
            if optuna_trial.should_prune():
                better = max if self.mode == "max" else min
                return (f"pruned by Optuna's MedianPruner at epoch {max(values)}: {self.metric} "
                        f"{better(values.values()):.4g} is worse than the median of earlier trials")
            return None
        return median_rule(values, completed, self.mode, metric=self.metric, warmup=self.warmup,
                           min_trials=self.min_trials)
