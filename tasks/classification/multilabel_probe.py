"""The exact linear probe for multi-label data: one-vs-rest logistic regression on frozen features.

Each label ``j`` gets its own L2-regularised binary logistic regression (scikit-learn
``LogisticRegression(solver="lbfgs")`` on standardised features), fitted ONLY on the training
images where label ``j`` is graded; a blank label is never a negative. One L2 strength ``C`` of the
grid is shared by all labels: the one with the lowest masked validation NLL (the protocol of
:mod:`~finetune_kit.tasks.classification.linear_probe`, Kornblith et al. CVPR 2019). The result is
a plain ``nn.Linear`` ``(L, D)`` whose logits are the labels' sigmoid logits.
:func:`ovr_reference` is the simplest reference: ``LogisticRegression()`` defaults per label.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from finetune_kit.tasks.classification.multilabel_loss import masked_bce
from finetune_kit.tasks.classification.multilabel_metrics import multilabel_validation
from finetune_kit.tasks.classification.probe_result import LinearProbeResult

__all__ = ["OvrProbeResult", "fit_ovr_probe", "ovr_reference", "C_GRID"]

#: Inverse L2 strengths tried (scikit-learn ``C``, on standardised features): 1e-4 .. 1e2, as the multi-class probe.
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 13))


@dataclass
class OvrProbeResult(LinearProbeResult):
    """The solved multi-label head: ``weight`` ``(L, D)``, ``bias`` ``(L,)`` on raw features (``logits``
    gives the sigmoid logits ``(N, L)``), the shared ``C``, its masked validation NLL and macro AUROC,
    the grid and the solve time (s)."""


def fit_ovr_probe(train_x, train_y, val_x, val_y, *, grid=C_GRID, max_iter: int = 2000) -> OvrProbeResult:
    """Solve one binary logistic regression per label on its graded training rows and choose the
    shared ``C`` on validation.

    Args:
        train_x, val_x: features ``(N, D)``. train_y, val_y: targets ``(N, L)``, NaN = not graded.
        grid: inverse L2 strengths (default :data:`C_GRID`).

    Returns:
        :class:`OvrProbeResult`; ``val_nll`` is the masked binary NLL and ``val_auroc`` the macro
        AUROC over labels.

    A label whose graded training rows are all 0 (or all 1), as in a small fold, gets ``w = 0`` and
    the bias of its smoothed training prevalence ``log((pos + 0.5) / (neg + 0.5))``.
    """
    t0 = time.perf_counter()
    xt, yt = np.asarray(train_x, np.float64), np.asarray(train_y, np.float64)
    xv, yv = np.asarray(val_x, np.float64), np.asarray(val_y, np.float64)
    mean, scale = xt.mean(axis=0), xt.std(axis=0)
    scale[scale < 1e-8] = 1.0
    zt = (xt - mean) / scale
    one_valued = [j for j in range(yt.shape[1]) if len(np.unique(yt[:, j][~np.isnan(yt[:, j])])) < 2]
    best, rows = None, []
    for c in grid:
        w, b = np.zeros((yt.shape[1], xt.shape[1])), np.zeros(yt.shape[1])
        for j in range(yt.shape[1]):
            m = ~np.isnan(yt[:, j])
            if j in one_valued:  # nothing to separate: the smoothed training prevalence, w = 0
                pos = float(np.sum(yt[m, j] == 1))
                b[j] = np.log((pos + 0.5) / (m.sum() - pos + 0.5))
                continue
            clf = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter, tol=1e-6).fit(zt[m], yt[m, j].astype(int))
            w[j] = clf.coef_[0] / scale
            b[j] = clf.intercept_[0] - w[j] @ mean
        lv = xv @ w.T + b
        row = {"C": float(c), "val_nll": masked_bce(lv, yv), "val_auroc": multilabel_validation(lv, yv)["val_auroc"]}
        rows.append(row)
        key = (row["val_nll"], -np.nan_to_num(row["val_auroc"]))
        if best is None or key < best[0]:
            best = (key, w, b, row)
    _, w, b, row = best
    return OvrProbeResult(weight=w, bias=b, C=row["C"], val_nll=row["val_nll"], val_auroc=row["val_auroc"],
                          grid=rows, seconds=time.perf_counter() - t0)


def ovr_reference(train_x, train_y, test_x) -> np.ndarray:
    """scikit-learn ``LogisticRegression()`` defaults (C = 1) on standardised features, one per label,
    each fitted on that label's graded training rows (a label of one value there: its smoothed
    prevalence); returns test probabilities ``(N, L)``."""
    xt, yt = np.asarray(train_x, np.float64), np.asarray(train_y, np.float64)
    out = []
    for j in range(yt.shape[1]):
        m = ~np.isnan(yt[:, j])
        if len(np.unique(yt[m, j])) < 2:  # one value only: its smoothed prevalence
            pos = float(np.sum(yt[m, j] == 1))
            out.append(np.full(len(test_x), (pos + 0.5) / (m.sum() + 1.0)))
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(xt[m], yt[m, j].astype(int))
        out.append(clf.predict_proba(np.asarray(test_x, np.float64))[:, 1])
    return np.stack(out, axis=1)
