"""Classification metrics (scikit-learn) on probabilities ``(N, C)`` and labels ``(N,)``.

Their bootstrap confidence intervals are in :mod:`finetune_kit.tasks.classification.bootstrap`
(which imports this module, never the other way round).
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, cohen_kappa_score, confusion_matrix, f1_score,
                             recall_score, roc_auc_score)

from finetune_kit.calibration import expected_calibration_error, nll

__all__ = ["classification_metrics", "auroc", "one_vs_rest_rates"]


def auroc(labels, probs) -> float:
    """Area under the ROC curve: binary uses ``probs[:, 1]``; multi-class is one-vs-rest macro.
    NaN when only one class is present."""
    y, p = np.asarray(labels), np.asarray(probs)
    if len(np.unique(y)) < 2:
        return float("nan")
    if p.shape[1] == 2:
        return float(roc_auc_score(y, p[:, 1]))
    return float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(p.shape[1]))))


def one_vs_rest_rates(cm) -> tuple[np.ndarray, np.ndarray]:
    """Per-class sensitivity ``TP / (TP + FN)`` and specificity ``TN / (TN + FP)`` ``(K,)`` from a
    confusion matrix ``(K, K)`` (rows: true class), NaN where the denominator is 0."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fn, fp = cm.sum(1) - tp, cm.sum(0) - tp
    tn = cm.sum() - tp - fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / (tp + fn), tn / (tn + fp)


def classification_metrics(labels, probs, logits=None, *, n_bins: int = 15) -> dict:
    """Accuracy, balanced accuracy, AUROC, F1, sensitivity, specificity, Cohen's kappa,
    confusion matrix, ECE (``n_bins`` bins) and NLL (from ``logits`` when given).

    Binary: positive class = label 1 (glaucoma); F1/sensitivity/specificity for it.
    Multi-class: macro F1; ``sensitivity`` / ``specificity`` are the macro means over the classes
    of the one-vs-rest rates of the argmax decision, and ``sensitivity_per_class`` /
    ``specificity_per_class`` list them in class order (NaN for a class absent from ``labels``).
    """
    y, p = np.asarray(labels), np.asarray(probs)
    k = p.shape[1]
    pred = p.argmax(axis=1)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    out = {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if len(np.unique(y)) > 1 else float("nan"),
        "auroc": auroc(y, p),
        "kappa": float(cohen_kappa_score(y, pred)) if len(np.unique(np.r_[y, pred])) > 1 else float("nan"),
        "confusion_matrix": cm.tolist(),
        "ece": expected_calibration_error(p, y, n_bins),
    }
    if k == 2:
        tn, fp, fn, tp = cm.ravel()
        out["f1"] = float(f1_score(y, pred, pos_label=1, zero_division=0))
        out["sensitivity"] = float(tp / (tp + fn)) if tp + fn else float("nan")
        out["specificity"] = float(tn / (tn + fp)) if tn + fp else float("nan")
    else:
        out["f1"] = float(f1_score(y, pred, average="macro", zero_division=0))
        out["sensitivity"] = float(recall_score(y, pred, average="macro", zero_division=0))
        sens, spec = one_vs_rest_rates(cm)
        out["specificity"] = float(np.nanmean(spec)) if np.isfinite(spec).any() else float("nan")
        out["sensitivity_per_class"] = [float(v) for v in sens]
        out["specificity_per_class"] = [float(v) for v in spec]
    if logits is not None:
        out["nll"] = nll(logits, y)
    else:
        out["nll"] = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))
    return out
