"""Operating points: a decision threshold chosen on validation for a required sensitivity or
specificity, then reported on test with bootstrap intervals.

Clinical papers report a screening model at an operating point ("sensitivity at 90 %
specificity"), not only its AUROC. :func:`choose_threshold` picks the threshold on validation
scores from the empirical ROC curve (scikit-learn ``roc_curve``, every threshold kept);
:func:`operating_point_report` does it for the positive class (binary) or each class one-vs-rest
(multi-class) and reports test sensitivity, specificity, PPV and NPV at that threshold, each with
a percentile bootstrap interval (:func:`~finetune_kit.tasks.classification.bootstrap.bootstrap_ci`).
A score ``>= threshold`` is a positive decision.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
from sklearn.metrics import roc_curve

from finetune_kit.tasks.classification.bootstrap import bootstrap_ci

__all__ = ["choose_threshold", "decision_metrics", "operating_point_report", "operating_point_at", "OperatingPointError", "DECISION_METRICS"]

#: metrics of binary decisions reported at an operating point
DECISION_METRICS = ("sensitivity", "specificity", "ppv", "npv")


class OperatingPointError(ValueError):
    """An operating point that cannot be chosen (e.g. a class without validation images)."""


def choose_threshold(y_true, scores, kind: Literal["sensitivity", "specificity"], target: float) -> float:
    """The decision threshold on ``scores`` meeting a sensitivity or specificity target.

    ``kind="sensitivity"``: the highest threshold whose sensitivity (fraction of positives with
    ``score >= threshold``) is at least ``target`` -- the most specific such rule.
    ``kind="specificity"``: the lowest threshold whose specificity (fraction of negatives with
    ``score < threshold``) is at least ``target`` -- the most sensitive such rule. Thresholds are
    the distinct scores (``sklearn.metrics.roc_curve(drop_intermediate=False)``); a rule that must
    call nothing positive gets a threshold just above the highest score.

    Args:
        y_true: ``(N,)`` binary labels (1 = positive). scores: ``(N,)`` scores, higher = more positive.
        kind: which rate is fixed. target: the required rate, 0 < target < 1.

    Returns:
        the threshold (float).

    Raises:
        OperatingPointError: target outside (0, 1), an unknown ``kind``, or no positive or no
            negative example.
    """
    y, s = np.asarray(y_true).astype(int), np.asarray(scores, dtype=np.float64)
    if not 0.0 < float(target) < 1.0:
        raise OperatingPointError(f"operating point {kind}={target}: the target must lie strictly between 0 and 1, "
                                  "e.g. sensitivity=0.90")
    if kind not in ("sensitivity", "specificity"):
        raise OperatingPointError(f"operating point kind {kind!r}: use sensitivity or specificity")
    if y.min(initial=1) == y.max(initial=0) or not len(y):
        raise OperatingPointError(f"operating point {kind}={target}: the validation set needs positive and negative "
                                  f"examples (it has {int(y.sum())} positive of {len(y)}); add validation images "
                                  "of every class")
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    if kind == "sensitivity":
        i = int(np.argmax(tpr >= target - 1e-12))  # tpr is non-decreasing; the first index meets the target
    else:
        i = int(np.flatnonzero(fpr <= 1.0 - target + 1e-12)[-1])
    t = float(thr[i])
    return t if np.isfinite(t) else float(np.nextafter(s.max(), np.inf))


def decision_metrics(y_true, decisions) -> dict[str, float]:
    """Sensitivity, specificity, PPV and NPV of binary ``decisions`` ``(N,)`` against ``y_true``
    ``(N,)`` (NaN where the denominator is 0)."""
    y, d = np.asarray(y_true).astype(bool), np.asarray(decisions).astype(bool)
    tp, fn = np.sum(y & d), np.sum(y & ~d)
    tn, fp = np.sum(~y & ~d), np.sum(~y & d)
    ratio = lambda a, b: float(a / (a + b)) if a + b else float("nan")  # noqa: E731
    return {"sensitivity": ratio(tp, fn), "specificity": ratio(tn, fp), "ppv": ratio(tp, fp), "npv": ratio(tn, fn)}


def operating_point_report(val_labels, val_probs, test_labels, test_probs, class_names: Sequence[str], kind: str,
                           target: float, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Choose the threshold on validation and report it on test.

    Binary (2 classes): the positive class (index 1) and its probability. Multi-class: each class
    one-vs-rest on its own probability. Probabilities are the run's calibrated ones.

    Args:
        val_labels, test_labels: ``(N,)`` class indices. val_probs, test_probs: ``(N, K)``.
        class_names: K names. kind, target: see :func:`choose_threshold`.
        n_boot, seed: the bootstrap of the test intervals (default 1000 resamples, seed 0).

    Returns:
        ``{"kind", "target", "n_boot", "classes": {name: {"threshold", "val": {metric: value},
        "test": {metric: {"value", "ci95": [low, high]}}}}}``.

    Raises:
        OperatingPointError: a class with no validation example (or all validation images of one class).
    """
    yv, pv = np.asarray(val_labels).astype(int), np.asarray(val_probs)
    yt, pt = np.asarray(test_labels).astype(int), np.asarray(test_probs)
    k = pv.shape[1]
    classes = [1] if k == 2 else list(range(k))
    out = {"kind": kind, "target": float(target), "n_boot": n_boot, "seed": seed, "classes": {}}
    for c in classes:
        name = class_names[c]
        if not np.any(yv == c) or np.all(yv == c):
            raise OperatingPointError(f"--operating-point {kind}={target:g}: class {name!r} has "
                                      f"{int(np.sum(yv == c))} of {len(yv)} validation images; every class needs "
                                      "validation examples (raise --val-fraction or add images of it)")
        thr = choose_threshold(yv == c, pv[:, c], kind, target)
        row = {"threshold": thr, "val": decision_metrics(yv == c, pv[:, c] >= thr),
               "test": _test_rows(yt == c, pt[:, c], thr, n_boot, seed) if len(yt) else {}}
        out["classes"][name] = row
    return out


def _test_rows(y, p, thr: float, n_boot: int, seed: int) -> dict:
    """Test sensitivity, specificity, PPV, NPV of ``p >= thr`` with bootstrap intervals."""
    out = {}
    for m in DECISION_METRICS:
        point, lo, hi = bootstrap_ci(lambda yy, ss, m=m: decision_metrics(yy, ss >= thr)[m], y, p, n_boot=n_boot,
                                     seed=seed)
        out[m] = {"value": point, "ci95": [lo, hi]}
    return out


def operating_point_at(operating_point: dict, labels, probs, class_names: Sequence[str], *, n_boot: int = 1000,
                       seed: int = 0) -> dict:
    """A run's operating point (the ``operating_point`` dict of its ``metrics.json``: thresholds
    already chosen on its validation set) applied to new labelled probabilities ``(N, K)``:
    the same dict with each class's ``test`` metrics recomputed on them (``evaluate``)."""
    y, p = np.asarray(labels).astype(int), np.asarray(probs)
    out = {**operating_point, "classes": {}}
    for name, row in operating_point["classes"].items():
        c = list(class_names).index(name)
        out["classes"][name] = {**row, "test": _test_rows(y == c, p[:, c], row["threshold"], n_boot, seed)}
    return out
