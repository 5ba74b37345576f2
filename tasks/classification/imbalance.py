"""Class imbalance in training: class weights, the softmax focal loss and a balanced sampler.

- :func:`class_weight_vector`: ``--class-weights none|balanced|w1,...`` as a ``(K,)`` vector
  (``balanced``: scikit-learn ``compute_class_weight``, ``n / (K * count_c)``, on the training labels).
- :class:`WeightedSoftmaxLoss`: ``--loss focal`` and/or class weights, for hard or soft targets
  (mixup/cutmix, label smoothing) alike.
- :func:`balanced_sampler`: ``--sampler balanced`` (``torch.utils.data.WeightedRandomSampler``).

A run with ``--class-weights none --loss ce --sampler shuffle`` (the defaults) uses none of them:
its loss is the plain ``CrossEntropyLoss`` / ``SoftTargetCrossEntropy`` of timm.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

__all__ = ["class_weight_vector", "WeightedSoftmaxLoss", "balanced_sampler", "ImbalanceError"]


class ImbalanceError(ValueError):
    """A class-imbalance option that does not fit the data; the message names the option and the fix."""


def class_weight_vector(spec: str, train_labels, num_classes: int, class_names=None) -> np.ndarray | None:
    """The loss weight of each class.

    Args:
        spec: ``none``, ``balanced`` or comma-separated positive weights in class order.
        train_labels: ``(N,)`` integer labels of the training split. num_classes: K.
        class_names: for the error message.

    Returns:
        ``(K,)`` float64 weights, or None for ``none``. ``balanced`` is scikit-learn's
        ``compute_class_weight("balanced")``: ``N / (K * count_c)`` (a class with no training image
        is an error).

    Raises:
        ImbalanceError: a class without training images (balanced), or a weight list of the wrong length.
    """
    if spec == "none":
        return None
    names = list(class_names or range(num_classes))
    if spec == "balanced":
        y = np.asarray(train_labels).astype(int)
        missing = [str(names[c]) for c in range(num_classes) if not np.any(y == c)]
        if missing:
            raise ImbalanceError(f"--class-weights balanced: class {', '.join(missing)} has no training image; add "
                                 "images of it or give explicit weights")
        return compute_class_weight("balanced", classes=np.arange(num_classes), y=y).astype(np.float64)
    w = np.array([float(x) for x in spec.split(",")], dtype=np.float64)
    if len(w) != num_classes:
        raise ImbalanceError(f"--class-weights {spec}: {len(w)} weights for {num_classes} classes "
                             f"({', '.join(map(str, names))}); give one weight per class in that order")
    return w


class WeightedSoftmaxLoss(nn.Module):
    """Class-weighted softmax focal loss; cross-entropy when ``gamma = 0``.

    Focal loss (Lin, Goyal, Girshick, He & Dollar, "Focal Loss for Dense Object Detection",
    ICCV 2017, eq. 5 written for a softmax over K classes): for logits ``z`` ``(N, K)`` and target
    distributions ``t`` ``(N, K)`` (one-hot, smoothed, or mixed by mixup/cutmix),

        l_i = - sum_c w_c t_ic (1 - p_ic)^gamma log p_ic,   p = softmax(z),

    and the batch loss is ``sum_i l_i / sum_i sum_c w_c t_ic`` (the weighted mean: with one-hot
    targets and ``gamma = 0`` exactly ``nn.CrossEntropyLoss(weight=w)``; unweighted, the mean over
    the batch). Hard targets ``(N,)`` are turned into ``(1 - smoothing)`` one-hot ``+ smoothing / K``.

    Args:
        weight: ``(K,)`` class weights or None (all 1). gamma: focusing parameter >= 0.
        smoothing: label smoothing of hard targets (soft targets are used as given).
    """

    def __init__(self, weight=None, gamma: float = 0.0, smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma, self.smoothing = float(gamma), float(smoothing)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss (scalar) of ``logits`` ``(N, K)`` against ``target`` ``(N,)`` class indices or ``(N, K)`` distributions."""
        k = logits.shape[1]
        if target.ndim == 1:
            target = F.one_hot(target.long(), k).to(logits.dtype) * (1 - self.smoothing) + self.smoothing / k
        logp = F.log_softmax(logits, dim=1)
        term = target * logp
        if self.gamma:
            term = term * (1 - logp.exp()).pow(self.gamma)
        w = self.weight.to(logits) if self.weight is not None else torch.ones(k, dtype=logits.dtype,
                                                                             device=logits.device)
        return -(term * w).sum() / (target * w).sum().clamp_min(1e-12)


def balanced_sampler(labels, seed: int) -> torch.utils.data.WeightedRandomSampler:
    """A sampler drawing ``len(labels)`` training images per epoch with replacement, each with
    probability ``1 / (K * count_of_its_class)``, so every class is drawn equally often in
    expectation (``torch.utils.data.WeightedRandomSampler``, generator seeded with ``seed``: the
    epoch's seed, so a resumed run draws the same order)."""
    y = np.asarray(labels).astype(int)
    counts = np.bincount(y)
    g = torch.Generator().manual_seed(int(seed))
    return torch.utils.data.WeightedRandomSampler(torch.as_tensor(1.0 / counts[y], dtype=torch.double), len(y),
                                                  replacement=True, generator=g)


def build_criterion(classes_cfg, train_labels, num_classes: int, *, smoothing: float,
                    class_names=None) -> tuple[nn.Module | None, np.ndarray | None]:
    """The training loss of ``classes_cfg`` (the ``classes`` config section) when it asks for class
    weights or the focal loss: :class:`WeightedSoftmaxLoss` (hard and soft targets alike, so
    mixup/cutmix stay correct); ``(None, None)`` for the defaults (the caller keeps its plain loss).

    Returns:
        ``(loss or None, the (K,) class weights or None)``.

    Raises:
        ImbalanceError: see :func:`class_weight_vector`.
    """
    weights = class_weight_vector(classes_cfg.class_weights, train_labels, num_classes, class_names)
    if weights is None and classes_cfg.loss == "ce":
        return None, None
    gamma = classes_cfg.focal_gamma if classes_cfg.loss == "focal" else 0.0
    return WeightedSoftmaxLoss(weights, gamma=gamma, smoothing=smoothing), weights
