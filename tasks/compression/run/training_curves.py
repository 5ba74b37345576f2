"""The training-curve figure of a ``compress train`` or ``compress finetune`` run (``training_curves.png``).

Panels over epochs (counted from 1), read from the run's ``metrics.jsonl`` records:

1. train and validation R-D cost (``train_rd``, ``val_rd``: ``lambda * 255^2 * MSE + bpp``),
   with a dotted vertical line at every epoch whose record lists ``unfrozen`` groups
   (progressive unfreezing), labelled with the groups;
2. the learning rate of every optimizer group (``lr/<group>``, log scale; frozen = 0 is not drawn);
3. the balanced optimizer's task weights (``task_weight/<task>``), when the run balances;
4. its gamma (``gamma`` or ``gamma_s1`` ...), when recorded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["plot_training_curves", "training_curves_figure"]


def plot_training_curves(records: Sequence[Mapping], path: str | Path, *, title: str = "") -> Path | None:
    """Draw :func:`training_curves_figure` of ``records`` to ``path`` (PNG).

    Returns ``path``, or None when there are no records with an ``epoch``.
    """
    import matplotlib.pyplot as plt  # local: drawn figures only (start-up time)

    fig = training_curves_figure(records, title=title)
    if fig is None:
        return None
    path = Path(path)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def _legend_outside(ax) -> None:
    """The legend right of the axes, so it never covers a curve."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def training_curves_figure(records: Sequence[Mapping], *, title: str = ""):
    """The figure of ``records`` (``metrics.jsonl`` dicts with ``epoch``, counted from 1): R-D
    costs, LR per group, and (balanced runs) task weights and gamma in a panel each; integer epoch
    ticks; legends outside the axes. Returns the matplotlib Figure, or None without records."""
    import matplotlib  # local: matplotlib loads only when a figure is drawn (start-up time)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # local: drawn figures only (start-up time)
    from matplotlib.ticker import MaxNLocator  # local: as above

    recs = [r for r in records if "epoch" in r]
    if not recs:
        return None
    ep = [r["epoch"] for r in recs]
    lr_keys = sorted({k for r in recs for k in r if k.startswith("lr/")})
    w_keys = sorted({k for r in recs for k in r if k.startswith("task_weight/")})
    g_keys = sorted({k for r in recs for k in r if k == "gamma" or k.startswith("gamma_s")})
    panels = 2 + bool(w_keys) + bool(g_keys)
    fig, axes = plt.subplots(panels, 1, figsize=(8, 2.4 * panels + 0.4), dpi=110, sharex=True)
    ax = axes[0]
    for key, label in (("train_rd", "train R-D cost"), ("val_rd", "validation R-D cost")):
        pts = [(r["epoch"], r[key]) for r in recs if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), "o-", ms=3, label=label)
    for r in recs:
        if r.get("unfrozen"):
            for a in axes:
                a.axvline(r["epoch"] - 0.5, ls=":", color="grey")
            ax.annotate("+" + ",".join(r["unfrozen"]), (r["epoch"] - 0.5, 1.0), xycoords=("data", "axes fraction"),
                        fontsize=7, rotation=90, va="top", ha="right")
    ax.set_ylabel("R-D cost")
    _legend_outside(ax)
    ax.set_title(title or "training curves")
    ax = axes[1]
    for i, k in enumerate(lr_keys):  # groups often share an LR: line styles keep each one visible
        pts = [(r["epoch"], r[k]) for r in recs if r.get(k)]
        if pts:
            ax.plot(*zip(*pts), marker=".", ls=("-", "--", "-.", ":")[i % 4], lw=2.5 - 0.4 * (i % 4), label=k[3:])
    if lr_keys:
        ax.set_yscale("log")
        _legend_outside(ax)
    ax.set_ylabel("LR per group")
    row = 2
    if w_keys:
        ax = axes[row]
        row += 1
        for k in w_keys:
            ax.plot(ep, [r.get(k) for r in recs], ".-", label=k.split("/", 1)[1])
        ax.set_ylabel("task weight softmax(w)")
        _legend_outside(ax)
    if g_keys:
        ax = axes[row]
        for k in g_keys:
            ax.plot(ep, [r.get(k) for r in recs], ".--", lw=1, label=k)
        ax.set_ylabel("gamma")
        _legend_outside(ax)
    axes[-1].set_xlabel("epoch")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig
