"""Per-class metrics of a K-class classifier with bootstrap intervals, their macro and
prevalence-weighted averages, and the quadratic weighted kappa over ordinal classes.

For each class ``c`` (one-vs-rest): AUROC of ``probs[:, c]`` (scikit-learn ``roc_auc_score``),
and, for the argmax decision ``pred == c``: sensitivity (recall), specificity, PPV (precision)
and NPV. Each gets a 95 % percentile bootstrap interval from ``n_boot`` resamples stratified by
class (:func:`~finetune_kit.tasks.classification.bootstrap.bootstrap_indices`, seeded), the same
resamples for every class and metric. ``macro`` is the unweighted mean over the classes and
``weighted`` the mean weighted by each class's prevalence in the evaluated set, both computed on
every resample too, so they carry intervals.

Quadratic weighted kappa (Cohen 1968, ``sklearn.metrics.cohen_kappa_score(weights="quadratic")``)
for ``--ordinal-classes normal,npdr,pdr``: over the images whose TRUE class is one of the listed
classes; the predicted class is the most probable of the listed classes only (the other
classes' probabilities are ignored), and the classes are ranked in the order given.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import cohen_kappa_score

from finetune_kit.tasks.classification.bootstrap import bootstrap_indices, resampled_auroc
from finetune_kit.tasks.classification.classes_config import parse_class_list

__all__ = ["PER_CLASS_METRICS", "per_class_metrics", "ordinal_kappa", "quadratic_kappa", "ordinal_indices", "OrdinalClassError"]

#: one-vs-rest metrics per class
PER_CLASS_METRICS = ("auroc", "sensitivity", "specificity", "ppv", "npv")


class OrdinalClassError(ValueError):
    """``--ordinal-classes`` names a class the data does not have."""


def _rates(y: np.ndarray, pred: np.ndarray, c: int) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV of ``pred == c`` vs ``y == c`` along the last axis (NaN for 0/0)."""
    t, d = y == c, pred == c
    tp, fn = (t & d).sum(-1), (t & ~d).sum(-1)
    tn, fp = (~t & ~d).sum(-1), (~t & d).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp), "ppv": tp / (tp + fp),
                "npv": tn / (tn + fn)}


def _ci(values: np.ndarray, level: float = 0.95) -> list[float] | None:
    v = values[np.isfinite(values)]
    if not len(v):
        return None
    return [float(q) for q in np.quantile(v, [(1 - level) / 2, (1 + level) / 2])]


def per_class_metrics(labels, probs, class_names: Sequence[str], *, n_boot: int = 1000, seed: int = 0) -> dict:
    """One-vs-rest metrics of each class with bootstrap intervals (module docstring).

    Args:
        labels: ``(N,)`` class indices. probs: ``(N, K)`` probabilities. class_names: K names.
        n_boot: bootstrap resamples (default 1000). seed: their seed (default 0).

    Returns:
        ``{"classes": {name: {"n", "prevalence", metric: {"value", "ci95"}}}, "macro": {metric:
        {"value", "ci95"}}, "weighted": {...}, "n_boot", "seed"}``; a metric undefined on the set
        (a class with no image) is NaN and left out of the averages.
    """
    y, p = np.asarray(labels).astype(int), np.asarray(probs, dtype=np.float64)
    k = p.shape[1]
    pred = p.argmax(axis=1)
    idx = bootstrap_indices(y, n_boot, seed)
    prevalence = np.array([np.mean(y == c) if len(y) else 0.0 for c in range(k)])
    values, boots = np.full((len(PER_CLASS_METRICS), k), np.nan), np.full((len(PER_CLASS_METRICS), k, n_boot), np.nan)
    for c in range(k):
        binary = np.stack([1 - p[:, c], p[:, c]], axis=1)
        yc = (y == c).astype(int)
        values[0, c] = resampled_auroc(yc, binary, np.arange(len(y))[None])[0] if len(y) else np.nan
        boots[0, c] = resampled_auroc(yc, binary, idx)
        full, res = _rates(y, pred, c), _rates(y[idx], pred[idx], c)
        for j, m in enumerate(PER_CLASS_METRICS[1:], start=1):
            values[j, c], boots[j, c] = full[m], res[m]
    out: dict = {"classes": {}, "macro": {}, "weighted": {}, "n_boot": n_boot, "seed": seed,
                 "decision": "argmax (one-vs-rest per class)"}
    for c, name in enumerate(class_names):
        row = {"n": int(np.sum(y == c)), "prevalence": float(prevalence[c])}
        for j, m in enumerate(PER_CLASS_METRICS):
            row[m] = {"value": float(values[j, c]), "ci95": _ci(boots[j, c])}
        out["classes"][name] = row
    for j, m in enumerate(PER_CLASS_METRICS):
        ok = np.isfinite(values[j])
        macro_b = np.nanmean(np.where(ok[:, None], boots[j], np.nan), axis=0) if ok.any() else np.full(n_boot, np.nan)
        w = np.where(ok, prevalence, 0.0)
        w = w / w.sum() if w.sum() else w
        weighted_b = np.nansum(boots[j] * w[:, None], axis=0) if ok.any() else np.full(n_boot, np.nan)
        out["macro"][m] = {"value": float(values[j][ok].mean()) if ok.any() else float("nan"), "ci95": _ci(macro_b)}
        out["weighted"][m] = {"value": float((values[j][ok] * w[ok]).sum()) if ok.any() else float("nan"),
                              "ci95": _ci(weighted_b)}
    return out


def ordinal_indices(ordinal: str | Sequence[str], class_names: Sequence[str]) -> list[int]:
    """Class indices of the ordinal class names, in their order.

    Raises:
        OrdinalClassError: a name that is no class (lists the classes).
    """
    names = parse_class_list(ordinal) if isinstance(ordinal, str) else list(ordinal)
    unknown = [n for n in names if n not in class_names]
    if unknown:
        raise OrdinalClassError(f"--ordinal-classes: {', '.join(map(repr, unknown))} is not a class of the data; the "
                                f"classes are {', '.join(class_names)}")
    return [list(class_names).index(n) for n in names]


def quadratic_kappa(a, b, k: int, idx: np.ndarray) -> np.ndarray:
    """Quadratic weighted kappa of ranks ``a`` vs ``b`` (``(N,)`` in ``0..k-1``) on each resample
    ``idx`` ``(B, N)`` at once: ``1 - sum(W O) / sum(W E)`` with ``W_ij = (i - j)^2 / (k - 1)^2``,
    ``O`` the confusion counts and ``E`` the outer product of its margins over N (Cohen 1968);
    equal to ``cohen_kappa_score(weights="quadratic")`` (tested), NaN where ``sum(W E) = 0``."""
    a, b, idx = np.asarray(a), np.asarray(b), np.asarray(idx)
    n_b, n = idx.shape
    codes = (a[idx] * k + b[idx]) + np.arange(n_b)[:, None] * k * k
    o = np.bincount(codes.ravel(), minlength=n_b * k * k).reshape(n_b, k, k).astype(np.float64)
    e = o.sum(2)[:, :, None] * o.sum(1)[:, None, :] / max(n, 1)
    w = (np.subtract.outer(np.arange(k), np.arange(k)) ** 2) / max((k - 1) ** 2, 1)
    num, den = (w * o).sum((1, 2)), (w * e).sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 1 - num / den, np.nan)


def ordinal_kappa(labels, probs, class_names: Sequence[str], ordinal: str | Sequence[str], *, n_boot: int = 1000,
                  seed: int = 0) -> dict:
    """Quadratic weighted kappa over the ordinal classes (module docstring) with a bootstrap interval.

    Args:
        labels: ``(N,)`` class indices. probs: ``(N, K)``. class_names: K names.
        ordinal: the ordered class names (``"normal,npdr,pdr"`` or a list).

    Returns:
        ``{"classes": [...], "n", "value", "ci95", "rule"}`` (value NaN when fewer than 2 classes occur).

    Raises:
        OrdinalClassError: an unknown class name.
    """
    order = ordinal_indices(ordinal, class_names)
    y, p = np.asarray(labels).astype(int), np.asarray(probs)
    keep = np.isin(y, order)
    rank = {c: r for r, c in enumerate(order)}
    yt = np.array([rank[c] for c in y[keep]], dtype=int)
    yp = p[keep][:, order].argmax(axis=1)
    labels_r = list(range(len(order)))

    value = float(cohen_kappa_score(yt, yp, weights="quadratic", labels=labels_r)) \
        if len(np.unique(np.r_[yt, yp])) > 1 else float("nan")
    vals = quadratic_kappa(yt, yp, len(order), bootstrap_indices(yt, n_boot, seed)) if len(yt) else np.array([])
    return {"classes": [class_names[c] for c in order], "n": int(len(yt)), "value": value, "ci95": _ci(vals),
            "rule": "true class in the list; prediction = most probable listed class; quadratic weights"}
