"""Losses of multi-label training with missing labels: blank (NaN) targets never contribute.

:class:`MaskedMultiLabelLoss` computes a per-entry loss on sigmoid outputs -- binary
cross-entropy (``torch.nn.functional.binary_cross_entropy_with_logits(reduction="none")``) or the
focal loss of Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017), as
``torchvision.ops.sigmoid_focal_loss`` -- multiplies it by the mask of graded entries and averages
over the graded entries only. A per-label ``pos_weight`` (``--class-weights balanced``: negatives /
positives among the graded entries of each label, :func:`balanced_pos_weight`) scales the positive
term, as ``BCEWithLogitsLoss(pos_weight=...)`` does.
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.ops import sigmoid_focal_loss

__all__ = ["MaskedMultiLabelLoss", "balanced_pos_weight", "masked_bce", "multilabel_criterion"]


class MaskedMultiLabelLoss(nn.Module):
    """Mean loss over the graded entries of ``targets``.

    Args:
        kind: ``"bce"`` (binary cross-entropy) or ``"focal"`` (sigmoid focal loss, ``gamma``; no alpha
            weighting: class balance is the ``pos_weight``'s job).
        pos_weight: ``(L,)`` weight of the positive term per label, or None (all 1).
        gamma: focal-loss focusing parameter (default 2, Lin et al. 2017).

    ``forward(logits (B, L), targets (B, L) float with NaN = not graded)`` -> scalar; 0 when no entry
    of the batch is graded.
    """

    def __init__(self, kind: Literal["bce", "focal"] = "bce", pos_weight: Sequence[float] | None = None,
                 gamma: float = 2.0) -> None:
        super().__init__()
        self.kind, self.gamma = kind, gamma
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        mask = ~torch.isnan(targets)
        t = torch.nan_to_num(targets.to(logits.dtype), nan=0.0)
        if self.kind == "focal":
            per = sigmoid_focal_loss(logits, t, alpha=-1, gamma=self.gamma, reduction="none")
        else:
            per = nn.functional.binary_cross_entropy_with_logits(logits, t, reduction="none")
        if self.pos_weight is not None:
            per = per * (t * self.pos_weight.to(per) + (1 - t))
        per = torch.where(mask, per, torch.zeros_like(per))  # a NaN-free zero, also for the gradient
        return per.sum() / mask.sum().clamp_min(1)


def balanced_pos_weight(targets) -> np.ndarray:
    """Per-label ``negatives / positives`` counted on the graded entries of ``targets`` ``(N, L)``
    (NaN = not graded); 1 for a label without positives or negatives."""
    y = np.asarray(targets, np.float64)
    pos, neg = np.nansum(y == 1, axis=0), np.nansum(y == 0, axis=0)
    return np.where((pos > 0) & (neg > 0), neg / np.maximum(pos, 1), 1.0)


def masked_bce(logits, targets) -> float:
    """Mean binary cross-entropy (nats) over the graded entries of ``targets`` ``(N, L)`` for
    ``logits`` ``(N, L)``; NaN when nothing is graded."""
    t = torch.as_tensor(np.asarray(targets, np.float64))
    if not (~torch.isnan(t)).any():
        return math.nan
    return float(MaskedMultiLabelLoss()(torch.as_tensor(np.asarray(logits, np.float64)), t))


def multilabel_criterion(cfg, train_targets) -> MaskedMultiLabelLoss:
    """The run's loss from ``--loss`` (ce -> BCE, focal) and ``--class-weights`` (none, balanced:
    :func:`balanced_pos_weight` of the training targets, or ``w1,w2,...`` one per label).

    Raises:
        ValueError: a weight list of the wrong length.
    """
    y = np.asarray(train_targets)
    cw = cfg.classes.class_weights
    weights = None
    if cw == "balanced":
        weights = balanced_pos_weight(y)
    elif cw not in (None, "none"):
        weights = [float(w) for w in cw.split(",")]
        if len(weights) != y.shape[1]:
            raise ValueError(f"--class-weights {cw}: give {y.shape[1]} weights (one per label column), or balanced")
    return MaskedMultiLabelLoss("focal" if cfg.classes.loss == "focal" else "bce", pos_weight=weights)
