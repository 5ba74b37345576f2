"""Post-hoc calibration: temperature scaling, expected calibration error (ECE) and NLL.

Temperature scaling (Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural
Networks", ICML 2017) divides the logits by one scalar ``T > 0`` fitted by minimising the
negative log-likelihood on held-out (validation) logits. It changes confidences, never the
predicted class (accuracy and AUROC are unchanged). We optimise ``log T`` with L-BFGS so
``T = exp(log T)`` stays positive without constraints.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["fit_temperature", "apply_temperature", "expected_calibration_error", "nll", "reliability_bins"]


def _as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats) of integer ``labels`` ``(N,)`` under
    ``softmax(logits / temperature)``, ``logits`` of shape ``(N, C)``."""
    z = _as_tensor(logits) / float(temperature)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return float(torch.nn.functional.cross_entropy(z, y))


def fit_temperature(logits, labels, *, max_iter: int = 200, init: float = 1.0,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Fit the temperature ``T > 0`` minimising NLL of ``labels`` ``(N,)`` given ``logits`` ``(N, C)``
    (Guo et al. 2017). Optimises ``log T`` with L-BFGS (strong-Wolfe line search) in float64.
    The result is clipped to ``bounds`` (default 0.05-20): on a tiny or uninformative validation
    set the optimum can run off to ``T -> inf`` (uniform probabilities), which says more about
    the validation set than about the model.

    Returns:
        ``T`` as a float (1.0 means already calibrated; ``T > 1`` softens over-confidence).

    Raises:
        ValueError: empty input, mismatched lengths, or non-finite logits.
    """
    z = _as_tensor(logits)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[0] != y.shape[0]:
        raise ValueError(f"fit_temperature needs logits (N, C) and labels (N,), got {tuple(z.shape)} and {tuple(y.shape)}")
    if not torch.isfinite(z).all():
        raise ValueError("fit_temperature: logits contain NaN or inf; the model diverged (lower the learning rate)")
    log_t = torch.tensor([math.log(init)], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t) or t <= 0:
        return 1.0
    t = min(max(t, bounds[0]), bounds[1])
    # never worse than no scaling on the fitting set
    return t if nll(z, y, t) <= nll(z, y, 1.0) + 1e-12 else 1.0


def apply_temperature(logits, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``softmax(logits / T)``, shape ``(N, C)``."""
    return torch.softmax(_as_tensor(logits) / float(temperature), dim=1).numpy()


def reliability_bins(probs, labels, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin confidence, accuracy and count of the top-1 prediction over ``n_bins`` equal-width
    bins of (0, 1]. ``probs`` ``(N, C)``; returns arrays of shape ``(n_bins,)`` (NaN for empty bins)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return {"edges": edges, "confidence": mean_conf, "accuracy": acc, "count": count}


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """ECE (Naeini et al. 2015; Guo et al. 2017): ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|`` over
    ``n_bins`` (default 15) equal-width confidence bins of the top-1 prediction. ``probs`` ``(N, C)``.
    Returns a value in [0, 1]; NaN for empty input."""
    b = reliability_bins(probs, labels, n_bins)
    n = b["count"].sum()
    if n == 0:
        return float("nan")
    m = b["count"] > 0
    return float(np.sum(b["count"][m] / n * np.abs(b["accuracy"][m] - b["confidence"][m])))
