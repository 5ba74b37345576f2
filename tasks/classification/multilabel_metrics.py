"""Metrics of multi-label predictions with missing labels (scikit-learn), per label and summarised.

Every metric of label ``j`` is computed on the images where label ``j`` is graded (target not
NaN); a blank label is never read as a negative. Per label: AUROC and average precision (the
formulas of scikit-learn's ``roc_auc_score`` and ``average_precision_score``, computed directly so
that 1000 bootstrap resamples stay fast; the tests check equality with scikit-learn) and, at a threshold chosen on VALIDATION
(:func:`choose_thresholds`: Youden's J = max(sensitivity + specificity - 1), Youden 1949, or the
``--operating-point`` rule through :func:`~finetune_kit.tasks.classification.operating_point.choose_threshold`),
sensitivity, specificity, PPV and NPV, each with a percentile bootstrap 95 % interval
(:func:`~finetune_kit.tasks.classification.bootstrap.bootstrap_ci`). Summaries: macro = the mean of
the per-label values; micro = the metric on all graded (image, label) entries pooled.

Calibration per label (:func:`fit_label_temperatures`): one temperature per label, fitted on the
graded validation entries by minimising the binary NLL of ``sigmoid(z / T)`` (Guo et al., "On
Calibration of Modern Neural Networks", ICML 2017, applied label-wise).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.stats import rankdata
from sklearn.metrics import roc_curve

from finetune_kit.tasks.classification.bootstrap import bootstrap_ci
from finetune_kit.tasks.classification.multilabel_loss import masked_bce
from finetune_kit.tasks.classification.operating_point import choose_threshold

__all__ = ["sigmoid", "graded", "youden_threshold", "choose_thresholds", "label_metrics", "multilabel_metrics",
           "fit_label_temperatures", "multilabel_summary", "multilabel_validation",
           "auroc_score", "average_precision"]


def sigmoid(z) -> np.ndarray:
    """Element-wise logistic function (float64)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def graded(targets, scores, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets ``(n,)`` int and scores ``(n,)`` of label ``j`` on the images where it is graded."""
    y, s = np.asarray(targets, np.float64)[:, j], np.asarray(scores, np.float64)[:, j]
    m = ~np.isnan(y)
    return y[m].astype(int), s[m]


def youden_threshold(y_true, scores) -> float:
    """The threshold (decision ``score >= t``) maximising Youden's J = sensitivity + specificity - 1
    on ``(y_true (N,) 0/1, scores (N,))`` (scikit-learn ``roc_curve``)."""
    fpr, tpr, thr = roc_curve(np.asarray(y_true).astype(int), np.asarray(scores, np.float64))
    ok = np.isfinite(thr)
    i = int(np.argmax(np.where(ok, tpr - fpr, -np.inf)))
    return float(thr[i])


def choose_thresholds(val_targets, val_probs, operating_point: tuple[str, float] | None = None) -> list[float]:
    """One threshold per label on the validation set: Youden's J, or ``(kind, target)`` of
    ``--operating-point`` (e.g. ``("sensitivity", 0.9)``); 0.5 for a label whose validation
    entries lack positives or negatives."""
    out = []
    for j in range(np.asarray(val_probs).shape[1]):
        y, s = graded(val_targets, val_probs, j)
        if len(np.unique(y)) < 2:
            out.append(0.5)
        elif operating_point is None:
            out.append(youden_threshold(y, s))
        else:
            out.append(choose_threshold(y, s, operating_point[0], operating_point[1]))
    return out


def _rate(pos_value: int, on: int):
    """Share of rows with ``y == on`` whose decision equals ``pos_value`` (sensitivity: 1, 1; specificity: 0, 0)."""
    def metric(y, d):
        m = y == on
        return float(np.mean(d[m] == pos_value)) if m.any() else float("nan")
    return metric


def _predictive(value: int):
    """PPV (1) or NPV (0): share of decisions ``value`` that are right."""
    def metric(y, d):
        m = d == value
        return float(np.mean(y[m] == value)) if m.any() else float("nan")
    return metric


def auroc_score(y, s) -> float:
    """AUROC by the Mann-Whitney rank formula with mid-ranks for ties (equals scikit-learn's
    ``roc_auc_score``, without its per-call overhead in the bootstrap); NaN with one class."""
    y = np.asarray(y) == 1
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float((rankdata(s)[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def average_precision(y, s) -> float:
    """Average precision ``sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds, as
    scikit-learn's ``average_precision_score``; NaN without positives."""
    y, s = np.asarray(y) == 1, np.asarray(s, np.float64)
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), len(ss) - 1]  # the last index of each distinct score
    tps = np.cumsum(ys)[last]
    precision = tps / (last + 1)
    recall = tps / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _entry(value_ci: tuple[float, float, float]) -> dict:
    v, lo, hi = value_ci
    return {"value": v, "ci95": None if np.isnan(lo) else [lo, hi]}


def label_metrics(y_true, scores, threshold: float, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Metrics of one label on its graded images: ``y_true`` ``(n,)`` 0/1, ``scores`` ``(n,)``.

    Returns:
        ``{"n_graded", "n_positive", "threshold", "auroc", "ap", "sensitivity", "specificity", "ppv",
        "npv"}``; each metric a ``{"value", "ci95": [low, high] | None}`` (``n_boot`` resamples).
    """
    y, s = np.asarray(y_true).astype(int), np.asarray(scores, np.float64)
    d = (s >= threshold).astype(int)
    out = {"n_graded": int(len(y)), "n_positive": int(y.sum()), "threshold": float(threshold)}
    kw = dict(n_boot=n_boot, seed=seed, stratify=False)  # plain resampling of the graded rows
    out["auroc"] = _entry(bootstrap_ci(auroc_score, y, s, **kw))
    out["ap"] = _entry(bootstrap_ci(average_precision, y, s, **kw))
    for name, fn in (("sensitivity", _rate(1, 1)), ("specificity", _rate(0, 0)), ("ppv", _predictive(1)),
                     ("npv", _predictive(0))):
        out[name] = _entry(bootstrap_ci(fn, y, d, **kw))
    return out


def _macro(metric, label_count: int):
    """Mean over labels of ``metric`` on each label's graded rows of ``(targets (N, L), scores (N, L))``."""
    def fn(t, s):
        vals = []
        for j in range(label_count):
            y, p = graded(t, s, j)
            vals.append(metric(y, p) if len(y) else float("nan"))
        return float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return fn


def _micro(metric):
    def fn(t, s):
        t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
        m = ~np.isnan(t)
        return metric(t[m].astype(int), s[m])
    return fn


def multilabel_metrics(targets, probs, thresholds, label_names, *, logits=None, n_boot: int = 1000,
                       seed: int = 0) -> dict:
    """Per-label metrics (:func:`label_metrics`) and macro / micro AUROC and AP with bootstrap
    intervals (images resampled; ``n_boot`` resamples, ``seed``).

    Args:
        targets: ``(N, L)`` with NaN = not graded. probs: ``(N, L)`` sigmoid outputs.
        thresholds: ``(L,)`` chosen on validation. label_names: ``(L,)``.
        logits: ``(N, L)``, for the masked binary NLL (``nll``).

    Returns:
        ``{"n", "labels": {name: {...}}, "macro": {"auroc", "ap", "sensitivity", "specificity"},
        "micro": {"auroc", "ap"}, "nll", "auroc" (the macro value), "accuracy" (graded entries decided
        right at the thresholds)}``.
    """
    t, p = np.asarray(targets, np.float64), np.asarray(probs, np.float64)
    L = t.shape[1]
    labels = {name: label_metrics(*graded(t, p, j), thresholds[j], n_boot=n_boot, seed=seed)
              for j, name in enumerate(label_names)}
    kw = dict(n_boot=n_boot, seed=seed, stratify=False)  # plain resampling of the graded rows
    out = {"n": int(len(t)), "labels": labels,
           "macro": {"auroc": _entry(bootstrap_ci(_macro(auroc_score, L), t, p, **kw)),
                     "ap": _entry(bootstrap_ci(_macro(average_precision, L), t, p, **kw)),
                     "sensitivity": float(np.nanmean([v["sensitivity"]["value"] for v in labels.values()])),
                     "specificity": float(np.nanmean([v["specificity"]["value"] for v in labels.values()]))},
           "micro": {"auroc": _entry(bootstrap_ci(_micro(auroc_score), t, p, **kw)),
                     "ap": _entry(bootstrap_ci(_micro(average_precision), t, p, **kw))}}
    out["nll"] = masked_bce(logits, t) if logits is not None else float("nan")
    m = ~np.isnan(t)
    decisions = p >= np.asarray(thresholds, np.float64)[None, :]
    out["auroc"] = out["macro"]["auroc"]["value"]  # the headline numbers of compare's table
    out["accuracy"] = float(np.mean(decisions[m] == (t[m] == 1))) if m.any() else float("nan")
    return out


def fit_label_temperatures(val_logits, val_targets) -> np.ndarray:
    """One temperature per label ``(L,)`` minimising the graded validation entries' binary NLL of
    ``sigmoid(z / T)``, T in [0.05, 20] (bounded 1-D search on log T); 1 for a label without graded
    entries."""
    z, t = np.asarray(val_logits, np.float64), np.asarray(val_targets, np.float64)
    temps = []
    for j in range(z.shape[1]):
        m = ~np.isnan(t[:, j])
        if not m.any():
            temps.append(1.0)
            continue
        zj, tj = z[m, j], t[m, j]
        res = minimize_scalar(lambda lt: masked_bce(zj[:, None] / np.exp(lt), tj[:, None]),
                              bounds=(np.log(0.05), np.log(20.0)), method="bounded")
        temps.append(float(np.exp(res.x)))
    return np.array(temps)


def multilabel_summary(m: dict) -> str:
    """One console line: macro AUROC/AP and per-label AUROC of :func:`multilabel_metrics` output."""
    per = "  ".join(f"{k} {v['auroc']['value']:.3f}" for k, v in m["labels"].items())
    return f"macro AUROC {m['macro']['auroc']['value']:.4f}  macro AP {m['macro']['ap']['value']:.4f}  | AUROC {per}"


def multilabel_validation(logits, targets) -> dict:
    """The epoch record's validation numbers of a multi-label run (no bootstrap; graded entries only):
    ``val_loss`` (masked binary NLL), ``val_auroc`` (macro over labels), ``val_accuracy`` (graded
    entries right at 0.5), ``val_balanced_accuracy`` (macro over labels of (sensitivity + specificity) / 2
    at 0.5) and ``val_ece`` (15-bin ECE of the pooled graded entries' sigmoid outputs)."""
    z, t = np.asarray(logits, np.float64), np.asarray(targets, np.float64)
    p = sigmoid(z)
    m = ~np.isnan(t)
    bal = []
    for j in range(t.shape[1]):
        y, s = graded(t, p, j)
        if len(np.unique(y)) > 1:
            d = s >= 0.5
            bal.append((np.mean(d[y == 1]) + np.mean(~d[y == 0])) / 2)
    ty, tp = t[m], p[m]
    bins = np.minimum((tp * 15).astype(int), 14)
    ece = sum(abs(np.mean(tp[bins == b]) - np.mean(ty[bins == b])) * np.mean(bins == b)
              for b in range(15) if (bins == b).any()) if len(ty) else float("nan")
    return {"val_loss": masked_bce(z, t), "val_auroc": _macro(auroc_score, t.shape[1])(t, p),
            "val_accuracy": float(np.mean((tp >= 0.5) == (ty == 1))) if len(ty) else float("nan"),
            "val_balanced_accuracy": float(np.mean(bal)) if bal else float("nan"), "val_ece": float(ece)}
