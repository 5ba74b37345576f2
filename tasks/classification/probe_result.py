"""The result of an exact linear probe (a solved logistic-regression head), shared by the K-class
probe (:mod:`~finetune_kit.tasks.classification.linear_probe`) and the multi-label one-vs-rest probe
(:mod:`~finetune_kit.tasks.classification.multilabel_probe`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LinearProbeResult"]


@dataclass
class LinearProbeResult:
    """The solved head: ``weight`` ``(K, D)`` and ``bias`` ``(K,)`` acting on raw features ``(N, D)``
    (K = number of classes, also 2 for binary problems), the chosen ``C``, its validation NLL and
    AUROC, the grid searched (``[{"C", "val_nll", "val_auroc"}]``) and the solve time in seconds."""

    weight: np.ndarray
    bias: np.ndarray
    C: float
    val_nll: float
    val_auroc: float
    grid: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def logits(self, features) -> np.ndarray:
        """Logits ``(N, K)`` of features ``(N, D)``."""
        return np.asarray(features, dtype=np.float64) @ self.weight.T + self.bias
