"""Operating points: the decision threshold that reaches a target sensitivity or specificity.

:func:`choose_threshold` is applied on validation (one label, or one class one-vs-rest) and the
threshold is then used unchanged on test and in ``predict``.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.metrics import roc_curve

__all__ = ["choose_threshold", "parse_operating_point"]


def choose_threshold(y_true, scores, kind: Literal["sensitivity", "specificity"], target: float) -> float:
    """The threshold ``t`` (decision ``score >= t``) reaching ``target`` on ``(y_true, scores)``.

    ``sensitivity``: the highest threshold whose sensitivity is >= target (the most specific one that
    meets it); ``specificity``: the lowest threshold whose specificity is >= target. Computed from
    scikit-learn's ``roc_curve``.

    Args:
        y_true: ``(N,)`` 0/1. scores: ``(N,)`` higher = more likely positive. target: in (0, 1).

    Raises:
        ValueError: ``target`` outside (0, 1) or ``y_true`` without both classes.
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"operating point {kind}={target}: the target must be in (0, 1), e.g. {kind}=0.90")
    y, s = np.asarray(y_true).astype(int), np.asarray(scores, np.float64)
    if len(np.unique(y)) < 2:
        raise ValueError("choose_threshold needs both positive and negative examples")
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)  # every threshold: the exact highest one
    if kind == "sensitivity":
        i = int(np.argmax(tpr >= target))
    else:
        i = int(np.flatnonzero(1 - fpr >= target)[-1])
    return float(thr[i]) if np.isfinite(thr[i]) else float(np.nextafter(s.max(), np.inf))


def parse_operating_point(text: str | None) -> tuple[str, float] | None:
    """``"sensitivity=0.90"`` -> ``("sensitivity", 0.9)``; None stays None.

    Raises:
        ValueError: another form, another name, or a target outside (0, 1).
    """
    if text is None:
        return None
    kind, _, value = text.partition("=")
    try:
        target = float(value)
    except ValueError:
        target = float("nan")
    if kind.strip() not in ("sensitivity", "specificity") or not 0.0 < target < 1.0:
        raise ValueError(f"--operating-point {text!r}: write sensitivity=T or specificity=T with T in (0, 1), e.g. "
                         "sensitivity=0.90")
    return kind.strip(), target
