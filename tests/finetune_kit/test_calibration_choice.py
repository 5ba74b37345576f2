"""The calibrator chosen on a small, imbalanced validation split never makes test calibration worse
than the uncalibrated model by more than the interval reported with it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from finetune_kit.calibration import Calibrator, choose_calibrator, expected_calibration_error, fit_calibrator


torch.set_num_threads(1)


def _imbalanced_logits(seed: int, n_val: int, n_test: int = 800, over: float = 1.0):
    """A tiny real model: scikit-learn logistic regression fitted (weak L2) on 60 images of a 20-D
    Gaussian problem, imbalanced 1:3; its logits on a small validation split and a large test set.
    ``over`` multiplies the logits (> 1: over-confident, as fine-tuned networks are)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)

    def draw(n):
        y = (rng.random(n) < 0.25).astype(int)
        x = rng.normal(size=(n, 20)) + y[:, None] * np.r_[np.full(3, 0.9), np.zeros(17)]
        return x, y

    xt, yt = draw(60)
    clf = LogisticRegression(C=10.0, max_iter=2000).fit(xt, yt)

    def logits(x):
        z = clf.decision_function(x) * over
        return np.stack([-z / 2, z / 2], axis=1)

    (xv, yv), (xs, ys) = draw(n_val), draw(n_test)
    return logits(xv), yv, logits(xs), ys


def _ece_interval(probs, labels, n_boot=300, seed=0):
    from finetune_kit.tasks.classification.bootstrap import bootstrap_metrics

    return bootstrap_metrics(labels, probs, metrics=("ece",), n_boot=n_boot, seed=seed)["ece"]["ci95"]


@pytest.mark.parametrize("n_val", [40, 80])
def test_chosen_calibration_never_worse_beyond_its_interval(n_val):
    for seed in range(8):
        vl, vy, tl, ty = _imbalanced_logits(seed, n_val, over=1.0 + (seed % 3))
        before = expected_calibration_error(Calibrator().probs(tl), ty)
        cal = choose_calibrator(vl, vy, seed=seed, n_boot=200)
        assert cal.method in ("none", "temperature", "vector", "isotonic") and cal.info["reason"]
        after_p = cal.probs(tl)
        after = expected_calibration_error(after_p, ty)
        lo, hi = _ece_interval(after_p, ty, n_boot=200, seed=seed)
        assert after <= before + (hi - lo) / 2, (seed, cal.method, before, after, (lo, hi))


def test_overconfident_model_with_enough_validation_is_calibrated():
    vl, vy, tl, ty = _imbalanced_logits(1, 400, over=4.0)
    cal = choose_calibrator(vl, vy)
    assert cal.method != "none" and cal.info["candidates"][cal.method]["qualifies"]
    before = expected_calibration_error(Calibrator().probs(tl), ty)
    assert expected_calibration_error(cal.probs(tl), ty) < before - 0.05
    again = Calibrator.from_dict(cal.to_dict())
    assert np.allclose(again.probs(tl), cal.probs(tl))


def test_calibrator_errors_and_tiny_validation():
    with pytest.raises(ValueError, match="isotonic.*two classes"):
        fit_calibrator("isotonic", np.zeros((4, 3)), np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="calibration 'platt'"):
        Calibrator("platt")
    cal = choose_calibrator(np.zeros((6, 2)), np.array([0, 1, 0, 1, 0, 1]))
    assert cal.method == "none" and "too small" in cal.info["reason"]
    assert Calibrator.from_dict(None, 1.5).temperature == 1.5
