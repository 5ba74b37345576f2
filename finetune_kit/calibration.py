"""Post-hoc calibration: temperature, vector and isotonic scaling chosen on validation; ECE and NLL.

Temperature scaling (Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural
Networks", ICML 2017) divides the logits by one scalar ``T > 0`` fitted by minimising the
negative log-likelihood on held-out (validation) logits. It changes confidences, never the
predicted class (accuracy and AUROC are unchanged). We optimise ``log T`` with L-BFGS so
``T = exp(log T)`` stays positive without constraints.

One scalar fitted on a small validation split may not transfer (it can make test calibration
worse), and on imbalanced sets one scalar may not be enough. :func:`choose_calibrator` therefore
scores each candidate -- temperature, vector scaling (per-class scale and bias, Guo et al. 2017
Sec. 4.2; for two classes it is Platt scaling of the logit difference, Platt 1999) and isotonic
regression (Zadrozny & Elkan, KDD 2002; scikit-learn ``IsotonicRegression``, binary) -- by
out-of-fold NLL *within* the validation split, and keeps one only when its NLL gain is more than
twice its bootstrap standard error; otherwise no calibration (``T = 1``), and says why.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["fit_temperature", "apply_temperature", "expected_calibration_error", "nll", "reliability_bins",
           "Calibrator", "fit_calibrator", "choose_calibrator", "CALIBRATORS"]


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


#: the calibrators :func:`choose_calibrator` may pick, besides ``none``
CALIBRATORS = ("temperature", "vector", "isotonic")
_EPS = 1e-4


class Calibrator:
    """A fitted post-hoc calibrator: ``method`` (``none``, ``temperature``, ``vector``, ``isotonic``)
    and its ``params`` (JSON-able: ``{"T"}``, ``{"w": [C], "b": [C]}``, or the isotonic
    ``{"x": [...], "y": [...]}`` knots on ``p(class 1)``). :meth:`probs` maps logits ``(N, C)`` to
    calibrated probabilities ``(N, C)``."""

    def __init__(self, method: str = "none", params: dict | None = None, info: dict | None = None):
        if method not in ("none", *CALIBRATORS):
            raise ValueError(f"calibration {method!r}: one of none, {', '.join(CALIBRATORS)}")
        self.method, self.params, self.info = method, dict(params or {}), dict(info or {})

    @property
    def temperature(self) -> float:
        """``T`` of temperature scaling (1.0 for any other method)."""
        return float(self.params.get("T", 1.0)) if self.method == "temperature" else 1.0

    def probs(self, logits) -> np.ndarray:
        """Calibrated probabilities ``(N, C)`` of logits ``(N, C)``."""
        z = _as_tensor(logits)
        if self.method == "temperature":
            return apply_temperature(z, self.temperature)
        if self.method == "vector":
            w, b = _as_tensor(self.params["w"]), _as_tensor(self.params["b"])
            return torch.softmax(z * w + b, dim=1).numpy()
        p = torch.softmax(z, dim=1).numpy()
        if self.method == "isotonic":
            p1 = np.clip(np.interp(p[:, 1], self.params["x"], self.params["y"]), _EPS, 1 - _EPS)
            return np.stack([1 - p1, p1], axis=1)
        return p

    def to_dict(self) -> dict:
        """``{"method", "params", **info}`` for ``metrics.json``."""
        return {"method": self.method, "params": self.params, **self.info}

    @classmethod
    def from_dict(cls, d: dict | None, temperature: float = 1.0) -> "Calibrator":
        """From :meth:`to_dict`'s output; without it (older runs), temperature scaling by ``temperature``."""
        if not d:
            return cls("temperature", {"T": float(temperature)}) if temperature != 1.0 else cls()
        return cls(d.get("method", "none"), d.get("params"))


def _fit_vector(z: torch.Tensor, y: torch.Tensor, max_iter: int = 200) -> dict:
    """Vector scaling ``softmax(w * z + b)`` (per-class ``w``, ``b``) by L-BFGS on NLL, with a small
    L2 pull of ``w`` to 1 and ``b`` to 0 (1e-3) so tiny sets stay finite."""
    c = z.shape[1]
    w = torch.ones(c, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z * w + b, y) + 1e-3 * (((w - 1) ** 2).sum() + (b ** 2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    return {"w": w.detach().tolist(), "b": b.detach().tolist()}


def fit_calibrator(method: str, logits, labels) -> Calibrator:
    """Fit ``method`` (``none``, ``temperature``, ``vector``, ``isotonic``) on logits ``(N, C)`` and
    labels ``(N,)``.

    Raises:
        ValueError: an unknown method, isotonic with more than two classes, or bad logits.
    """
    z = _as_tensor(logits)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if method == "none":
        return Calibrator()
    if method == "temperature":
        return Calibrator("temperature", {"T": fit_temperature(z, y)})
    if method == "vector":
        return Calibrator("vector", _fit_vector(z, y))
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        if z.shape[1] != 2:
            raise ValueError("calibration 'isotonic' is for two classes; use 'vector' or 'temperature'")
        p1 = torch.softmax(z, 1)[:, 1].numpy()
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p1, y.numpy())
        return Calibrator("isotonic", {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()})
    raise ValueError(f"calibration {method!r}: one of none, {', '.join(CALIBRATORS)}")


def _per_sample_nll(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1.0))


def choose_calibrator(logits, labels, *, methods=CALIBRATORS, n_splits: int = 5, n_boot: int = 500,
                      seed: int = 0) -> Calibrator:
    """Pick the calibrator that generalises, then fit it on all of ``logits`` ``(N, C)`` / ``labels`` ``(N,)``.

    Each method is fitted on ``n_splits - 1`` stratified folds of the validation logits and scored
    on the held-out fold (out-of-fold NLL per image). Its gain is the mean of
    ``nll_none - nll_method`` over images; ``n_boot`` bootstrap resamples of the images give its
    standard error. A method qualifies when ``gain > 2 * se``; the qualifying one with the largest
    gain wins, else ``none`` (``T = 1``). ``info`` of the result records every method's gain and
    se and a one-line ``reason``.

    Returns:
        a fitted :class:`Calibrator` (``none`` when the set is too small to check: fewer than 2
        images of a class).
    """
    from sklearn.model_selection import StratifiedKFold

    z, y = np.asarray(logits, np.float64), np.asarray(labels).astype(int)
    counts = np.bincount(y, minlength=z.shape[1]) if len(y) else np.zeros(1, int)
    k = int(min(n_splits, counts[counts > 0].min() if len(y) else 0))
    if len(y) < 10 or k < 2 or (counts > 0).sum() < 2:
        return Calibrator(info={"reason": f"validation too small to check a calibrator ({len(y)} images): kept T = 1",
                                "candidates": {}})
    methods = [m for m in methods if not (m == "isotonic" and z.shape[1] != 2)]
    base = torch.softmax(torch.from_numpy(z), 1).numpy()
    oof = {m: np.zeros_like(base) for m in methods}
    for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed).split(z, y):
        for m in methods:
            oof[m][te] = fit_calibrator(m, z[tr], y[tr]).probs(z[te])
    nll0 = _per_sample_nll(base, y)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    cands, best = {}, None
    for m in methods:
        d = nll0 - _per_sample_nll(oof[m], y)
        gain, se = float(d.mean()), float(d[idx].mean(axis=1).std(ddof=1))
        cands[m] = {"oof_nll_gain": gain, "se": se, "qualifies": gain > 2 * se}
        if gain > 2 * se and (best is None or gain > cands[best]["oof_nll_gain"]):
            best = m
    if best is None:
        reason = ("no calibrator lowered out-of-fold validation NLL by more than twice its bootstrap standard error "
                  "(" + ", ".join(f"{m} {c['oof_nll_gain']:+.4f} +- {c['se']:.4f}" for m, c in cands.items())
                  + "): kept T = 1 (uncalibrated)")
        return Calibrator(info={"reason": reason, "candidates": cands, "oof_nll": float(nll0.mean())})
    cal = fit_calibrator(best, z, y)
    cal.info = {"reason": f"{best}: out-of-fold validation NLL lower by {cands[best]['oof_nll_gain']:.4f} "
                          f"(bootstrap se {cands[best]['se']:.4f})", "candidates": cands,
                "oof_nll": float(nll0.mean())}
    return cal
