"""Tables and plots of every gamma schedule (:mod:`finetune_kit.tasks.compression.objectives.gamma_schedules`).

Used by ``scripts/plot_gamma_schedules.py`` and ``scripts/test_gamma_scheduler.py``. The
``adaptive`` schedules react to a validation history; here they are fed
:func:`synthetic_history`, a made-up R-D cost that improves and then plateaus (single gamma at
40 % of the run; per scale s1/s2/s3 at 30/40/50 %), so their plateau rule can be seen. It is
not a measured curve.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from finetune_kit.tasks.compression.objectives.gamma_schedules import GAMMA_STRATEGIES, SCALE_GAMMA_STRATEGIES, gamma_at, scale_gammas_at

__all__ = ["synthetic_history", "synthetic_scale_histories", "GammaCurves", "gamma_curves", "key_epochs",
           "format_gamma_table", "GammaPlot", "plot_gamma_schedules"]

SCALES = ("s1", "s2", "s3")
#: where the synthetic per-scale histories stop improving (fraction of the run)
SCALE_PLATEAUS = {"s1": 0.3, "s2": 0.4, "s3": 0.5}


def synthetic_history(epochs: int, plateau_at: float = 0.4) -> list[float]:
    """A validation R-D cost per epoch (``epochs`` values): ``1 + exp(-e / (epochs / 10))``, flat from
    epoch ``plateau_at * epochs`` on. Raises ValueError for ``epochs < 1``."""
    if epochs < 1:
        raise ValueError(f"epochs={epochs}: need at least 1 epoch")
    stop = max(1, int(plateau_at * epochs))
    return [1.0 + math.exp(-min(e, stop) / max(1.0, epochs / 10)) for e in range(epochs)]


def synthetic_scale_histories(epochs: int) -> dict[str, list[float]]:
    """Per-scale synthetic histories plateauing at :data:`SCALE_PLATEAUS`."""
    return {s: synthetic_history(epochs, p) for s, p in SCALE_PLATEAUS.items()}


@dataclass
class GammaCurves:
    """Gamma per epoch of every schedule.

    Attributes:
        single: ``{strategy: [gamma per epoch]}`` for :data:`GAMMA_STRATEGIES`.
        per_scale: ``{strategy: {scale: [gamma per epoch]}}`` for :data:`SCALE_GAMMA_STRATEGIES`.
        gamma, gamma_final: start and end of the single schedules (per-scale ones end at
            ``start * gamma_final / gamma``).
    """

    single: dict[str, list[float]]
    per_scale: dict[str, dict[str, list[float]]]
    gamma: float
    gamma_final: float


def gamma_curves(epochs: int, gamma: float = 0.001, gamma_final: float | None = None, *, window: int = 5,
                 threshold: float = 1e-3) -> GammaCurves:
    """Every schedule over ``epochs`` epochs (``gamma_final`` default ``gamma / 10``; ``window`` and
    ``threshold`` of the adaptive rule, as ``--gamma_window`` / ``--gamma_threshold``).

    Raises:
        ValueError: ``epochs < 2`` or ``gamma <= 0``.
    """
    if epochs < 2:
        raise ValueError(f"epochs={epochs}: need at least 2 epochs to draw a schedule")
    if gamma <= 0:
        raise ValueError(f"gamma={gamma}: must be > 0 (reference 0.001)")
    final = gamma / 10 if gamma_final is None else gamma_final
    history, histories = synthetic_history(epochs), synthetic_scale_histories(epochs)
    adaptive = {"window": window, "threshold": threshold}
    single = {s: [gamma_at(s, e, epochs=epochs, gamma=gamma, gamma_final=final, history=history,
                           **(adaptive if s == "adaptive" else {})) for e in range(epochs)]
              for s in GAMMA_STRATEGIES}
    per_scale = {}
    for s in SCALE_GAMMA_STRATEGIES:
        vals = [scale_gammas_at(s, e, epochs=epochs, final_ratio=final / gamma, histories=histories,
                                **(adaptive if s == "adaptive" else {})) for e in range(epochs)]
        per_scale[s] = {sc: [v[sc] for v in vals] for sc in SCALES}
    return GammaCurves(single, per_scale, gamma, final)


def key_epochs(epochs: int) -> list[int]:
    """Epochs worth printing: 0, 10 %, 20 %, 35 %, 50 %, 70 % and the last."""
    return sorted({0, epochs // 10, epochs // 5, int(0.35 * epochs), epochs // 2, int(0.7 * epochs), epochs - 1})


def format_gamma_table(curves: GammaCurves, epochs: Sequence[int]) -> str:
    """A text table of every schedule's gamma at ``epochs`` (one row per schedule and scale)."""
    w = 2 + max(len(s) + 3 for s in [*curves.single, *curves.per_scale])  # the longest "name:s1"
    head = "".join(f"{'ep ' + str(e):>12}" for e in epochs)
    lines = [f"{'strategy':<{w}}{head}"]
    lines += [f"{s:<{w}}" + "".join(f"{v[e]:>12.3e}" for e in epochs) for s, v in curves.single.items()]
    lines.append("per scale (hierarchical variant)")
    for s, scales in curves.per_scale.items():
        lines += [f"{s + ':' + sc:<{w}}" + "".join(f"{scales[sc][e]:>12.3e}" for e in epochs) for sc in SCALES]
    return "\n".join(lines)


@dataclass
class GammaPlot:
    """What :func:`plot_gamma_schedules` drew: the file and the legend labels of each panel."""

    path: Path
    single_labels: list[str]
    scale_labels: list[str]


def plot_gamma_schedules(out: str | Path, curves: GammaCurves, *, log_scale: bool = True) -> GammaPlot:
    """Draw ``curves`` to ``out`` (PNG; parent folders created): left every single-gamma schedule,
    right every per-scale schedule (s1/s2/s3 solid/dashed/dotted in one colour per schedule).

    Returns the path and the legend labels read back from the figure.
    """
    import matplotlib  # local: matplotlib loads only when a figure is drawn (start-up time)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # local: drawn figures only (start-up time)

    epochs = range(len(next(iter(curves.single.values()))))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    try:
        for s, vals in curves.single.items():
            ax1.plot(epochs, vals, label=s)
        ax1.set_title(f"single gamma (--gamma_strategy): {curves.gamma:g} -> {curves.gamma_final:g}")
        for i, (s, scales) in enumerate(curves.per_scale.items()):
            for sc, style in zip(SCALES, ("-", "--", ":")):
                ax2.plot(epochs, scales[sc], style, color=f"C{i}", label=f"{s} {sc}")
        ax2.set_title("per-scale gamma (hierarchical; s1 solid, s2 dashed, s3 dotted)")
        for ax in (ax1, ax2):
            ax.set_xlabel("epoch")
            ax.set_ylabel("gamma")
            if log_scale:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
        # legends below the axes: they cover no curve
        leg1 = ax1.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.2))
        leg2 = ax2.legend(fontsize=6, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
        fig.suptitle("adaptive: fed a synthetic validation curve (plateau at 40 %; per scale 30/40/50 %)",
                     fontsize=7, color="0.4", y=0.995)
        fig.tight_layout()
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
        return GammaPlot(path, [t.get_text() for t in leg1.get_texts()], [t.get_text() for t in leg2.get_texts()])
    finally:
        plt.close(fig)
