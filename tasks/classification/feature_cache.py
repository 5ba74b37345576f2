"""Linear-probe fast path: backbone features computed once, the head trained on the cache.

When only the classifier head trains (``strategy.head_only``), the training images are not
randomly augmented and no mixup/cutmix is used, every epoch would push the same images
through the same frozen backbone. We run the backbone once per split in eval mode
(``model.forward_features`` then ``model.forward_head(..., pre_logits=True)``, i.e. pooled
features ``(N, D)``) and train ``model.get_classifier()`` on those tensors: identical
gradients for the head, at the cost of one forward pass instead of one per epoch.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
from torch import nn

__all__ = ["can_use_feature_cache", "extract_features", "head_forward"]


def can_use_feature_cache(model: nn.Module, *, head_only: bool, random_train: bool, mixup: bool, enabled: bool = True) -> bool:
    """True when the cache gives the same training as the full loop: head-only strategy, no
    random augmentation, no mixup/cutmix, and a timm model with ``forward_head(pre_logits=True)``."""
    return (enabled and head_only and not random_train and not mixup
            and callable(getattr(model, "forward_head", None)) and callable(getattr(model, "get_classifier", None)))


@torch.inference_mode()
def extract_features(model: nn.Module, batches, prepare: Callable[[torch.Tensor], torch.Tensor],
                     device: torch.device, autocast=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled pre-logit features of every batch: ``(N, D)`` float32 and labels ``(N,)`` int64.

    ``batches`` yields ``(uint8 images (B, H, W, 3), labels (B,))``; ``prepare`` turns images into
    the normalised float input. The model runs in eval mode (BatchNorm statistics untouched);
    its previous mode is restored afterwards.
    """

    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for x, y in batches:
            with autocast() if autocast else nullcontext():
                f = model.forward_head(model.forward_features(prepare(x).to(device)), pre_logits=True)
            feats.append(f.float().cpu())
            labels.append(torch.as_tensor(y))
    finally:
        model.train(was_training)
    y = torch.cat(labels)  # class indices, or float multi-label targets (N, L)
    return torch.cat(feats), (y.float() if y.is_floating_point() else y.long())


def head_forward(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, C)`` from cached features ``(B, D)`` through the model's classifier head."""
    return model.get_classifier()(features)
