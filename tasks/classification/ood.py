"""Out-of-distribution flags: Mahalanobis distance on penultimate features.

Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks", NeurIPS 2018: class-conditional Gaussians with one shared covariance on the
pooled pre-logit features; the OOD score of an image is its smallest squared Mahalanobis distance
``min_k (f - mu_k)^T S^-1 (f - mu_k)`` to a class mean. The covariance is shrunk by Ledoit-Wolf
(scikit-learn ``LedoitWolf``; the feature dimension, 1280 for MobileNetV2, exceeds a few hundred
training images). The threshold is the ``quantile`` (default 0.95) of the validation scores, so
about 5 % of in-distribution images are flagged; ``in_distribution = score <= threshold``.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from finetune_kit.tasks.classification.engine import label_array

__all__ = ["MahalanobisOOD", "fit_ood", "predict_with_features", "detection_auroc", "OOD_FILE"]

#: the fitted detector in a run folder
OOD_FILE = "ood.npz"


@dataclass
class MahalanobisOOD:
    """Class means ``(K, D)``, the shared precision ``(D, D)`` and the score ``threshold``."""

    means: np.ndarray
    precision: np.ndarray
    threshold: float
    quantile: float = 0.95

    def score(self, features) -> np.ndarray:
        """OOD scores ``(N,)`` of features ``(N, D)``: smallest squared Mahalanobis distance to a class mean."""
        f = np.asarray(features, np.float64)
        d = np.stack([np.einsum("nd,de,ne->n", f - m, self.precision, f - m) for m in self.means], axis=1)
        return d.min(axis=1)

    def flags(self, features) -> tuple[np.ndarray, np.ndarray]:
        """``(ood_score (N,), in_distribution (N,) bool)``."""
        s = self.score(features)
        return s, s <= self.threshold

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (``.npz``) atomically."""

        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        os.close(fd)
        np.savez(tmp, means=self.means, precision=self.precision, threshold=self.threshold, quantile=self.quantile)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "MahalanobisOOD | None":
        """The detector saved at ``path``, or None when the file is absent (a run without ``--ood``)."""
        if not Path(path).is_file():
            return None
        z = np.load(path)
        return cls(z["means"], z["precision"], float(z["threshold"]), float(z["quantile"]))


def fit_ood(train_features, train_labels, val_features, *, quantile: float = 0.95) -> MahalanobisOOD:
    """Fit class means and the Ledoit-Wolf shared covariance on training features ``(N, D)`` with
    labels ``(N,)``; set the threshold at the ``quantile`` of the validation features' scores.

    Raises:
        ValueError: empty inputs or ``quantile`` outside (0, 1).
    """

    f, y = np.asarray(train_features, np.float64), np.asarray(train_labels).astype(int)
    v = np.asarray(val_features, np.float64)
    if not len(f) or not len(v) or not 0 < quantile < 1:
        raise ValueError(f"fit_ood needs training and validation features and 0 < quantile < 1 (got {len(f)}, "
                         f"{len(v)}, {quantile})")
    classes = np.unique(y)
    means = np.stack([f[y == c].mean(axis=0) for c in classes])
    resid = f - means[np.searchsorted(classes, y)]
    precision = LedoitWolf(assume_centered=True).fit(resid).precision_
    det = MahalanobisOOD(means, precision, 0.0, quantile)
    det.threshold = float(np.quantile(det.score(v), quantile))
    return det


@torch.inference_mode()
def predict_with_features(model: torch.nn.Module, batches, prepare, amp=None,
                          device: torch.device = torch.device("cpu")) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits ``(N, C)``, pooled pre-logit features ``(N, D)`` and labels ``(N,)`` in one pass of a
    timm model (``forward_features`` -> ``forward_head(pre_logits=True)`` -> ``get_classifier()``);
    the caller sets eval mode."""

    logits, feats, labels = [], [], []
    for x, y in batches:
        with amp.autocast() if amp is not None else nullcontext():
            f = model.forward_head(model.forward_features(prepare(x).to(device)), pre_logits=True)
            logits.append(model.get_classifier()(f).float().cpu())
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(y))
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return torch.cat(logits).numpy(), torch.cat(feats).numpy(), label_array(labels)


def detection_auroc(in_scores, out_scores) -> float:
    """AUROC of telling ``out_scores`` (positives) from ``in_scores`` by the OOD score (higher = more OOD)."""

    a, b = np.asarray(in_scores), np.asarray(out_scores)
    return float(roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b]))
