"""Bootstrap confidence intervals of classification metrics, and paired strategy comparisons.

Percentile bootstrap (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13):
``n_boot`` resamples of the images with replacement, stratified by class (every resample keeps the
class counts, so AUROC, sensitivity and specificity stay defined), and the ``(1 - level) / 2`` and
``(1 + level) / 2`` quantiles of the resampled metric. A paired comparison resamples the SAME
images for two strategies' predictions and reports the interval of the difference and the
two-sided bootstrap p-value ``2 * min(P(d <= 0), P(d >= 0))``.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from finetune_kit.calibration import expected_calibration_error
from finetune_kit.tasks.classification.metrics import auroc

__all__ = ["METRICS", "metric_value", "bootstrap_indices", "resampled_auroc", "bootstrap_auroc_ci", "bootstrap_metrics",
           "paired_difference", "mean_sd", "bootstrap_ci"]

#: metrics reported with intervals, by name: ``f(labels (N,), probs (N, C)) -> float``
METRICS = ("auroc", "accuracy", "sensitivity", "specificity", "ece")


def metric_value(name: str, labels, probs) -> float:
    """One metric of :data:`METRICS` on labels ``(N,)`` and probabilities ``(N, C)``: AUROC (binary:
    of ``probs[:, 1]``; multi-class one-vs-rest macro), accuracy, sensitivity / specificity of
    class 1 (binary; multi-class: the macro mean over the classes present of the one-vs-rest rates
    of the argmax decision) or ECE (15 bins).

    Raises:
        KeyError: an unknown metric name.
    """
    y, p = np.asarray(labels), np.asarray(probs)
    pred = p.argmax(axis=1)
    if name == "auroc":
        return auroc(y, p)
    if name == "accuracy":
        return float(np.mean(pred == y))
    if name == "ece":
        return expected_calibration_error(p, y)
    if name in ("sensitivity", "specificity"):
        if p.shape[1] != 2:  # multi-class: macro mean of the one-vs-rest rates over the classes present
            c_all = np.unique(y)
            if name == "specificity":
                return float(np.mean([np.mean(pred[y != c] != c) for c in c_all if np.any(y != c)] or [np.nan]))
            return float(np.mean([np.mean(pred[y == c] == c) for c in c_all]))
        c = 1 if name == "sensitivity" else 0
        m = y == c
        return float(np.mean(pred[m] == c)) if m.any() else float("nan")
    raise KeyError(f"unknown metric {name!r}; one of {', '.join(METRICS)}")


def bootstrap_indices(labels, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``(n_boot, N)`` resample indices, stratified by class, from ``np.random.default_rng(seed)``."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    return np.stack([np.concatenate([rng.choice(ix, size=len(ix), replace=True) for ix in by_class])
                     for _ in range(n_boot)]) if len(y) else np.zeros((n_boot, 0), dtype=int)


def resampled_auroc(labels, probs, idx: np.ndarray) -> np.ndarray:
    """AUROC of each resample ``idx`` (``(n_boot, N)`` indices, e.g. :func:`bootstrap_indices`).

    Binary ``probs`` (``(N, 2)``): all resamples at once by the Mann-Whitney rank formula
    ``(sum of positive ranks - n1 (n1 + 1) / 2) / (n1 n0)`` with mid-ranks for ties, which equals
    scikit-learn's ``roc_auc_score`` (NaN where a resample lacks a class); about 100x faster than
    one ``roc_auc_score`` call per resample. Multi-class: the mean over the classes of that binary
    AUROC of the class against the rest, which equals ``roc_auc_score(multi_class="ovr",
    average="macro")`` (NaN where a resample lacks a class).
    """
    y, p = np.asarray(labels), np.asarray(probs)
    if p.ndim != 2:
        return np.array([auroc(y[i], p[i]) for i in idx])
    if p.shape[1] != 2:  # one-vs-rest macro: the mean over the classes of each class's binary AUROC
        per_class = [resampled_auroc((y == c).astype(int), np.stack([1 - p[:, c], p[:, c]], 1), idx)
                     for c in range(p.shape[1])]
        return np.mean(per_class, axis=0)
    ys, ranks = y[idx] == 1, rankdata(p[:, 1][idx], axis=1)
    n1 = ys.sum(axis=1).astype(float)
    n0 = ys.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        out = ((ranks * ys).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), out, np.nan)


def bootstrap_auroc_ci(labels, probs, *, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of :func:`auroc` (scikit-learn ``roc_auc_score``).

    Each of ``n_boot`` resamples (default 1000) draws, with replacement, as many images of each
    class as the set has (stratified: every resample keeps the class counts, so every resample
    has both classes); the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles
    of the resampled AUROCs. The generator is seeded with ``seed``, so the interval repeats.

    Args:
        labels: ``(N,)`` integer labels. probs: ``(N, C)`` probabilities (binary: ``probs[:, 1]``
            is the positive class's score; multi-class: one-vs-rest macro AUROC).

    Returns:
        ``(low, high)`` in [0, 1], or None when a class has no image (AUROC undefined).
    """
    y, p = np.asarray(labels), np.asarray(probs)
    classes = np.unique(y)
    if len(classes) < 2 or (p.shape[1] > 2 and len(classes) < p.shape[1]):
        return None
    values = resampled_auroc(y, p, bootstrap_indices(y, n_boot, seed))
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_metrics(labels, probs, *, metrics=METRICS, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> dict[str, dict]:
    """``{metric: {"value", "ci95": [low, high], "sd"}}`` on labels ``(N,)`` and probabilities
    ``(N, C)``, by the stratified percentile bootstrap (module docstring); ``ci95`` is None where the
    metric is undefined (e.g. one class only)."""
    y, p = np.asarray(labels), np.asarray(probs)
    idx = bootstrap_indices(y, n_boot, seed)
    out = {}
    for name in metrics:
        v = metric_value(name, y, p)
        vals = (resampled_auroc(y, p, idx) if name == "auroc"
                else np.array([metric_value(name, y[i], p[i]) for i in idx]))
        vals = vals[np.isfinite(vals)]
        ci = [float(q) for q in np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])] if len(vals) else None
        out[name] = {"value": v, "ci95": ci, "sd": float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")}
    return out


def paired_difference(labels, probs_a, probs_b, *, metric: str = "auroc", n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> dict:
    """Paired bootstrap of ``metric(a) - metric(b)`` on the same images (``labels`` ``(N,)``, both
    ``probs`` ``(N, C)`` in the same image order).

    Returns:
        ``{"metric", "difference", "ci95": [low, high], "p_value"}`` (two-sided bootstrap p-value).
    """
    y, a, b = np.asarray(labels), np.asarray(probs_a), np.asarray(probs_b)
    if a.shape != b.shape or len(y) != len(a):
        raise ValueError(f"paired_difference: predictions {a.shape} and {b.shape} of {len(y)} images must match")
    d0 = metric_value(metric, y, a) - metric_value(metric, y, b)
    idx = bootstrap_indices(y, n_boot, seed)
    d = np.array([metric_value(metric, y[i], a[i]) - metric_value(metric, y[i], b[i]) for i in idx])
    d = d[np.isfinite(d)]
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    p = min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0)))
    return {"metric": metric, "difference": float(d0), "ci95": [float(lo), float(hi)], "p_value": float(p)}


def bootstrap_ci(metric, y_true, scores, *, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05, stratify: bool = True) -> tuple[float, float, float]:
    """Percentile bootstrap interval of any metric (Efron & Tibshirani 1993, ch. 13).

    Args:
        metric: ``metric(y_true, scores) -> float`` (e.g. ``sklearn.metrics.roc_auc_score``).
        y_true: ``(N,)`` labels (resampling is stratified by them, so every resample keeps each
            class's count; ``stratify=False``: plain resampling, as for the per-label metrics of a
            multi-label run) or ``(N, L)`` label rows (plain resampling of the rows).
        scores: ``(N,)`` or ``(N, K)``, resampled with ``y_true``.
        n_boot: resamples (default 1000). seed: ``np.random.default_rng`` seed (default 0).
        alpha: 1 - confidence level (default 0.05: a 95 % interval).

    Returns:
        ``(point, low, high)``: the metric on all images and the ``alpha / 2``, ``1 - alpha / 2``
        quantiles of its finite resampled values (a resample where the metric is undefined, NaN or a
        ValueError such as one class only, is skipped; NaN, NaN when none is finite).
    """
    y, s = np.asarray(y_true), np.asarray(scores)
    point = float(metric(y, s))
    if y.ndim == 1 and stratify:
        idx = bootstrap_indices(y, n_boot, seed)
    else:
        idx = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    vals = np.array([_value_or_nan(metric, y[i], s[i]) for i in idx], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return point, float("nan"), float("nan")
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return point, float(lo), float(hi)


def _value_or_nan(metric, y, s) -> float:
    """``metric(y, s)``, or NaN where it is undefined on a resample (a ValueError such as one class only)."""
    try:
        return float(metric(y, s))
    except ValueError:
        return float("nan")


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for one value) of the finite ``values``."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")
