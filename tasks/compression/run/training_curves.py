"""The training-curve figure of a ``compress finetune`` run (``training_curves.png``).

Three panels over epochs (counted from 1), read from the run's ``metrics.jsonl`` records:

1. train and validation R-D cost (``train_rd``, ``val_rd``: ``lambda * 255^2 * MSE + bpp``),
   with a dotted vertical line at every epoch whose record lists ``unfrozen`` groups
   (progressive unfreezing), labelled with the groups;
2. the learning rate of every optimizer group (``lr/<group>``, log scale; frozen = 0 is not drawn);
3. the balanced optimizer's task weights (``task_weight/<task>``) and gamma (``gamma`` or
   ``gamma_s1`` ..., right axis), when the run balances.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["plot_training_curves"]


def plot_training_curves(records: Sequence[Mapping], path: str | Path, *, title: str = "") -> Path | None:
    """Draw the figure of ``records`` (``metrics.jsonl`` dicts with ``epoch``) to ``path`` (PNG).

    Returns ``path``, or None when there are no records with an ``epoch``.
    """
    import matplotlib  # local: matplotlib loads only when a figure is drawn (start-up time)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # local: drawn figures only (start-up time)

    recs = [r for r in records if "epoch" in r]
    if not recs:
        return None
    ep = [r["epoch"] for r in recs]
    lr_keys = sorted({k for r in recs for k in r if k.startswith("lr/")})
    w_keys = sorted({k for r in recs for k in r if k.startswith("task_weight/")})
    g_keys = sorted({k for r in recs for k in r if k == "gamma" or k.startswith("gamma_s")})
    panels = 2 + bool(w_keys)
    fig, axes = plt.subplots(panels, 1, figsize=(7, 2.6 * panels), dpi=110, sharex=True)
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
    ax.legend(fontsize=7)
    ax.set_title(title or "training curves")
    ax = axes[1]
    for k in lr_keys:
        pts = [(r["epoch"], r[k]) for r in recs if r.get(k)]
        if pts:
            ax.plot(*zip(*pts), ".-", label=k[3:])
    if lr_keys:
        ax.set_yscale("log")
        ax.legend(fontsize=6, ncol=3)
    ax.set_ylabel("LR per group")
    if w_keys:
        ax = axes[2]
        for k in w_keys:
            ax.plot(ep, [r.get(k) for r in recs], ".-", label=k.split("/", 1)[1])
        ax.set_ylabel("task weight softmax(w)")
        ax.legend(fontsize=6, ncol=3, loc="upper left")
        if g_keys:
            ax2 = ax.twinx()
            for k in g_keys:
                ax2.plot(ep, [r.get(k) for r in recs], "--", lw=1, label=k)
            ax2.set_ylabel("gamma")
            ax2.legend(fontsize=6, loc="upper right")
    axes[-1].set_xlabel("epoch")
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
