"""Temperature scaling (Guo et al. 2017), ECE with 15 bins, NLL."""
from __future__ import annotations

import numpy as np
import pytest

from finetune_kit.calibration import apply_temperature, expected_calibration_error, fit_temperature, nll


def _overconfident(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    margin = rng.normal(1.0, 1.0, n) * np.where(y == 1, 1, -1)  # true log-odds
    logits = np.stack([-margin, margin], 1) * 4.0  # 4x over-confident
    return logits, y


def test_temperature_lowers_nll_on_held_split():
    fit_logits, fit_y = _overconfident(400, 0)
    held_logits, held_y = _overconfident(400, 1)
    t = fit_temperature(fit_logits, fit_y)
    assert 2.5 < t < 6.0  # recovers the over-confidence factor
    assert nll(held_logits, held_y, t) < nll(held_logits, held_y) - 0.05
    before = expected_calibration_error(apply_temperature(held_logits, 1.0), held_y)
    after = expected_calibration_error(apply_temperature(held_logits, t), held_y)
    assert after < before
    assert (apply_temperature(held_logits, t).argmax(1) == held_logits.argmax(1)).all()  # accuracy unchanged


def test_ece_known_values():
    probs = np.array([[0.1, 0.9]] * 10)
    y = np.array([1] * 9 + [0])
    assert expected_calibration_error(probs, y, 15) == pytest.approx(0.0)
    y2 = np.array([1] * 5 + [0] * 5)
    assert expected_calibration_error(probs, y2, 15) == pytest.approx(0.4)


def test_temperature_positive_and_bounded_on_degenerate_input():
    logits = np.array([[2.0, -2.0], [2.0, -2.0], [-2.0, 2.0]])
    y = np.array([1, 1, 0])  # always wrong: the optimum runs to T -> inf
    t = fit_temperature(logits, y)
    assert 0 < t <= 20.0
    with pytest.raises(ValueError, match="diverged"):
        fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))
