"""Loud checks of what a classification run learns from: a model built without weights, and a model
whose outputs do not depend on the image (every validation probability the same)."""
from __future__ import annotations

import numpy as np

__all__ = ["random_init_warning", "constant_outputs_warning"]


def random_init_warning(model_name: str, pretrained: bool, custom_weights_path: str | None) -> str | None:
    """The warning for a model built without weights (neither ``--pretrained`` nor
    ``--custom-weights-path``): it trains from random initialisation, which on a small data set gives
    a far weaker model than fine-tuning pretrained weights. None when weights are given."""
    if pretrained or custom_weights_path:
        return None
    return (f"WARNING: {model_name} has no pretrained weights (no --pretrained, no --custom-weights-path): it "
            "trains from RANDOM initialisation. Give --custom-weights-path FILE (e.g. ../shared/weights/...) or "
            "--pretrained (timm hub, needs network) to fine-tune pretrained weights.")


def constant_outputs_warning(val_logits: np.ndarray, tol: float = 1e-4) -> str | None:
    """The warning for constant outputs: every validation image ``(N, C)`` logits gets the same class
    probabilities (largest spread of a class probability over the images below ``tol``, default 1e-4),
    so the model ignores its input (dead features, e.g. a random-init network whose activations vanish)
    and its AUROC means nothing. None for fewer than two images or varying outputs."""
    logits = np.asarray(val_logits, dtype=np.float64)
    if logits.ndim != 2 or len(logits) < 2:
        return None
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    spread = float(np.ptp(probs, axis=0).max())
    if spread >= tol:
        return None
    first = ", ".join(f"{p:.4f}" for p in probs[0])
    return (f"WARNING: constant outputs: every validation image gets the same probabilities ({first}; spread "
            f"{spread:.1e}): the model ignores its input. Check the weights (--custom-weights-path), the learning "
            "rate and the input size.")
