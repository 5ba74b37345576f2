"""Figures written to the run folder (matplotlib, Agg backend): ROC curve, reliability
diagram before/after temperature scaling, training curves, and the comparison figure."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from finetune_kit.calibration import reliability_bins

__all__ = ["plot_roc", "plot_reliability", "plot_training_curves", "plot_val_auroc_per_strategy"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)
    _plt().close(fig)
    return path


def plot_roc(labels, probs, path: Path, title: str = "ROC (test)") -> Path:
    """ROC curve of the positive class (label 1) or one curve per class (one-vs-rest)."""
    from sklearn.metrics import auc, roc_curve

    plt = _plt()
    y, p = np.asarray(labels), np.asarray(probs)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    classes = [1] if p.shape[1] == 2 else list(range(p.shape[1]))
    for c in classes:
        if len(np.unique(y == c)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y == c, p[:, c])
        ax.plot(fpr, tpr, label=f"class {c} AUC={auc(fpr, tpr):.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)", title=title)
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_reliability(labels, probs_before, probs_after, path: Path, temperature: float, n_bins: int = 15) -> Path:
    """Reliability diagrams (top-1 accuracy vs confidence, ``n_bins`` bins) before and after
    temperature scaling, side by side."""
    from finetune_kit.calibration import expected_calibration_error

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, probs, name in ((axes[0], probs_before, "before (T=1)"), (axes[1], probs_after, f"after (T={temperature:.2f})")):
        b = reliability_bins(probs, labels, n_bins)
        centers = (b["edges"][:-1] + b["edges"][1:]) / 2
        m = b["count"] > 0
        ax.bar(centers[m], b["accuracy"][m], width=1 / n_bins, edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
        ax.set(xlabel="confidence", title=f"{name}: ECE={expected_calibration_error(probs, labels, n_bins):.3f}")
        ax.legend(loc="upper left")
    axes[0].set_ylabel("accuracy")
    return _save(fig, path)


def plot_training_curves(history: Sequence[Mapping], path: Path) -> Path:
    """Train/val loss and val AUROC/accuracy per epoch, with unfreeze events marked."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator
    ep = [r["epoch"] for r in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, [r.get("train_loss") for r in history], "o-", label="train loss")
    a1.plot(ep, [r.get("val_loss") for r in history], "o-", label="val loss")
    a1.set(xlabel="epoch", ylabel="loss")
    a2.plot(ep, [r.get("val_auroc") for r in history], "o-", label="val AUROC")
    a2.plot(ep, [r.get("val_accuracy") for r in history], "o-", label="val accuracy")
    a2.set(xlabel="epoch", ylabel="metric")
    for a in (a1, a2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    for r in history:
        if r.get("unfrozen"):
            for a in (a1, a2):
                a.axvline(r["epoch"], color="gray", ls=":", lw=1)
    a1.legend(); a2.legend()
    return _save(fig, path)


def plot_val_auroc_per_strategy(histories: Mapping[str, Sequence[Mapping]], path: Path) -> Path:
    """One figure: validation AUROC per epoch, one line per strategy."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, hist in histories.items():
        ax.plot([r["epoch"] for r in hist], [r.get("val_auroc") for r in hist], "o-", label=name)
    ax.set(xlabel="epoch", ylabel="validation AUROC", title="validation AUROC per epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    return _save(fig, path)
