"""Figures written to the run folder (matplotlib, Agg backend): ROC curve, reliability
diagram before/after temperature scaling, training curves, and the comparison figure.

Each ``*_figure`` function returns the matplotlib Figure (so its texts can be checked before
it is saved); each ``plot_*`` function draws it, writes it atomically and returns the path.
Epochs on the x axes are counted from 1 (the ``epoch`` of ``metrics.jsonl``); an unfreeze
event's ``epoch`` is the first epoch in which its groups train.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from finetune_kit.calibration import expected_calibration_error
from finetune_kit.plot_axes import integer_epoch_axis
from finetune_kit.tasks.classification.bootstrap import bootstrap_auroc_ci

__all__ = ["plot_roc", "plot_reliability", "plot_training_curves", "plot_val_auroc_per_strategy", "roc_figure",
           "reliability_figure", "training_curves_figure", "val_auroc_figure", "dataset_label", "pyplot", "save_figure"]

#: Folder names that say nothing about the data set (its parent names it instead).
_GENERIC = {"images", "image", "data", "train", "all", "imgs", "raw"}


def pyplot():
    matplotlib.use("Agg")

    return plt


def save_figure(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)
    pyplot().close(fig)
    return path


def dataset_label(data: str | Path | None, label_preset: str | None = None) -> str:
    """A short name of a data set for figure titles: ``"SYNTHETIC data (generated)"`` when the
    folder is the generated demo set (its path or README says SYNTHETIC), else the label preset in
    capitals (``"ACRIMA"``), else the folder's name (its parent's for ``images/``, ``data/``...).
    Empty for no path."""
    if not data:
        return ""
    p = Path(str(data))
    readme = p / "README.txt"
    if "SYNTHETIC" in str(p).upper() or (readme.is_file() and "SYNTHETIC" in readme.read_text(errors="replace")[:200]):
        return "SYNTHETIC data (generated)"
    if label_preset:
        return str(label_preset).upper()
    name = p.parent.name if p.name.lower() in _GENERIC and p.parent.name else p.name
    return name or str(p)


def _class_names(class_names: Sequence[str] | None, k: int) -> list[str]:
    return list(class_names) if class_names is not None and len(class_names) == k else [f"class {c}" for c in range(k)]


def roc_figure(labels, probs, *, class_names: Sequence[str] | None = None, title: str = "ROC (test)",
               ci: Mapping[int, tuple[float, float] | None] | None = None, n_boot: int = 1000, seed: int = 0):
    """The ROC figure: binary, one curve of the positive class (label 1) labelled ``"glaucoma vs
    normal: AUROC 0.996 (95% CI 0.990-1.000), n = 70 / 75"`` (positives / negatives); multi-class,
    one curve per class against the rest.

    Args:
        labels: ``(N,)`` integer labels. probs: ``(N, C)`` probabilities.
        class_names: names of labels ``0..C-1`` (default ``class 0``...).
        ci: ``{class: (low, high)}`` intervals to show; missing ones are bootstrapped
            (:func:`~finetune_kit.tasks.classification.bootstrap.bootstrap_auroc_ci`, ``n_boot``
            stratified resamples, ``seed``).
    """


    plt = pyplot()
    y, p = np.asarray(labels), np.asarray(probs)
    names = _class_names(class_names, p.shape[1])
    fig, ax = plt.subplots(figsize=(5, 5))
    classes = [1] if p.shape[1] == 2 else list(range(p.shape[1]))
    for c in classes:
        pos = y == c
        if len(np.unique(pos)) < 2:
            continue
        fpr, tpr, _ = roc_curve(pos, p[:, c])
        interval = (ci or {}).get(c)
        if interval is None:
            two = np.stack([1 - p[:, c], p[:, c]], axis=1)
            interval = bootstrap_auroc_ci(pos.astype(int), two, n_boot=n_boot, seed=seed)
        other = names[0] if p.shape[1] == 2 else "rest"
        ci_text = f" (95% CI {interval[0]:.3f}-{interval[1]:.3f})" if interval else ""
        ax.plot(fpr, tpr, lw=1.8, label=f"{names[c]} vs {other}: AUROC {roc_auc_score(pos, p[:, c]):.3f}{ci_text}\n"
                                         f"n = {int(pos.sum())} {names[c]} / {int((~pos).sum())} {other}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)", title=title,
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_roc(labels, probs, path: Path, title: str = "ROC (test)", *, class_names: Sequence[str] | None = None,
             ci: Mapping[int, tuple[float, float] | None] | None = None) -> Path:
    """Write :func:`roc_figure` to ``path`` (PNG); returns ``path``."""
    return save_figure(roc_figure(labels, probs, class_names=class_names, title=title, ci=ci), path)


def _bins(score: np.ndarray, hit: np.ndarray, n_bins: int):
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, score, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.bincount(idx, weights=hit.astype(float), minlength=n_bins) / count
    return edges, count, frac


def reliability_figure(labels, probs_before, probs_after, temperature: float, *, n_bins: int = 15,
                       class_names: Sequence[str] | None = None):
    """Reliability diagrams before and after temperature scaling, side by side, with the image
    count of each bin written above its bar and the x axis limited to the populated bins.

    Binary: the predicted probability of the positive class (label 1) against the observed
    fraction of positives. Multi-class: top-1 confidence against top-1 accuracy. The titles give
    the (top-1) ECE over ``n_bins`` equal-width bins (default 15), the metric reported.
    """

    plt = pyplot()
    y = np.asarray(labels)
    k = np.asarray(probs_before).shape[1]
    names = _class_names(class_names, k)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    populated = []
    for ax, probs, name in ((axes[0], probs_before, "before (T=1)"), (axes[1], probs_after, f"after (T={temperature:.2f})")):
        p = np.asarray(probs, dtype=np.float64)
        if k == 2:
            score, hit = p[:, 1], y == 1
        else:
            score, hit = p.max(axis=1), p.argmax(axis=1) == y
        edges, count, frac = _bins(score, hit, n_bins)
        m = count > 0
        centers = (edges[:-1] + edges[1:]) / 2
        ax.bar(centers[m], frac[m], width=1 / n_bins, edgecolor="k", alpha=0.7,
               label=f"observed fraction of {names[1]}" if k == 2 else "accuracy")
        for x, f, c in zip(centers[m], frac[m], count[m]):
            ax.annotate(f"n={int(c)}", (x, f), xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7, rotation=90)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
        if m.any():
            populated += [edges[:-1][m].min(), edges[1:][m].max()]
        ax.set(xlabel=f"predicted probability of {names[1]}" if k == 2 else "confidence (top-1 probability)",
               title=f"{name}: ECE={expected_calibration_error(p, y, n_bins):.3f}")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    if populated:
        lo, hi = min(populated), max(populated)
        pad = 0.5 / n_bins
        for ax in axes:
            ax.set_xlim(max(0.0, lo - pad), min(1.0, hi + pad))
    axes[0].set_ylim(0, 1.25)  # room for the counts above full bars
    axes[0].set_yticks(np.linspace(0.0, 1.0, 6))
    axes[0].set_ylabel(f"observed fraction of {names[1]}" if k == 2 else "accuracy")
    return fig


def plot_reliability(labels, probs_before, probs_after, path: Path, temperature: float, n_bins: int = 15, *,
                     class_names: Sequence[str] | None = None) -> Path:
    """Write :func:`reliability_figure` to ``path`` (PNG); returns ``path``."""
    return save_figure(reliability_figure(labels, probs_before, probs_after, temperature, n_bins=n_bins,
                                    class_names=class_names), path)


def _groups_text(groups: Sequence[str], most: int = 3) -> str:
    return ", ".join(groups[:most]) + (f" +{len(groups) - most}" if len(groups) > most else "")


def _unfreeze_lines(axes, history: Sequence[Mapping]) -> None:
    """A labelled vertical line before the first epoch each unfreeze event's groups train in."""
    for r in history:
        for ev in r.get("unfrozen") or []:
            x = float(ev.get("epoch", r["epoch"])) - 0.5
            for i, a in enumerate(axes):
                a.axvline(x, color="gray", ls=":", lw=1.2)
                if i == 0:
                    a.text(x, 0.98, f" unfroze {_groups_text(list(ev.get('groups', [])))}", rotation=90, va="top",
                           ha="right", fontsize=7, color="dimgray", transform=a.get_xaxis_transform())


def training_curves_figure(history: Sequence[Mapping], *, run_name: str = "", dataset: str = "",
                           monitor: str = "val_auroc"):
    """Train/val loss and validation AUROC/accuracy per epoch (counted from 1), the unfreeze
    events as labelled vertical lines (the groups unfrozen), titled with ``run_name`` and
    ``dataset`` (see :func:`dataset_label`)."""
    plt = pyplot()

    ep = [r["epoch"] for r in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    a1.plot(ep, [r.get("train_loss") for r in history], "o-", label="train loss")
    a1.plot(ep, [r.get("val_loss") for r in history], "o-", label="validation loss")
    a1.set(xlabel="epoch", ylabel="cross-entropy loss")
    a2.plot(ep, [r.get("val_auroc") for r in history], "o-", label="validation AUROC")
    a2.plot(ep, [r.get("val_accuracy") for r in history], "o-", label="validation accuracy")
    a2.set(xlabel="epoch", ylabel="validation AUROC / accuracy")
    for a in (a1, a2):  # whole epochs, also for a one-epoch run (the exact linear probe)
        integer_epoch_axis(a, ep)
    _unfreeze_lines((a1, a2), history)
    for a in (a1, a2):  # below the axes: the curves and the unfreeze labels stay uncovered
        a.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    parts = [t for t in (run_name, dataset) if t]
    fig.suptitle("training curves: " + " - ".join(parts) if parts else "training curves", fontsize=10)
    return fig


def plot_training_curves(history: Sequence[Mapping], path: Path, *, run_name: str = "", dataset: str = "") -> Path:
    """Write :func:`training_curves_figure` to ``path`` (PNG); returns ``path``."""
    return save_figure(training_curves_figure(history, run_name=run_name, dataset=dataset), path)


def val_auroc_figure(histories: Mapping[str, Sequence[Mapping]], *, dataset: str = "", title: str = ""):
    """Validation AUROC per epoch (counted from 1), one line per strategy, each strategy's
    unfreeze events as small markers; the title names ``dataset`` (SYNTHETIC when generated)."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    for name, hist in histories.items():
        line, = ax.plot([r["epoch"] for r in hist], [r.get("val_auroc") for r in hist], "o-", label=name)
        for r in hist:
            for ev in r.get("unfrozen") or []:
                ax.axvline(float(ev.get("epoch", r["epoch"])) - 0.5, color=line.get_color(), ls=":", lw=0.8)
    head = title or "validation AUROC per epoch"
    ax.set(xlabel="epoch", ylabel="validation AUROC", title=f"{head} - {dataset}" if dataset else head)
    integer_epoch_axis(ax, [r["epoch"] for hist in histories.values() for r in hist])
    # beside the axes: a legend inside would cover the curves of some strategy
    ax.legend(title="strategy (dotted: unfreeze)", fontsize=8, title_fontsize=8, loc="center left",
              bbox_to_anchor=(1.01, 0.5))
    return fig


def plot_val_auroc_per_strategy(histories: Mapping[str, Sequence[Mapping]], path: Path, *, dataset: str = "",
                                title: str = "") -> Path:
    """Write :func:`val_auroc_figure` to ``path`` (PNG); returns ``path``."""
    return save_figure(val_auroc_figure(histories, dataset=dataset, title=title), path)
