"""Per-scale early stopping signals on a scripted metric sequence (finetune_kit.scale_early_stopping)."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from finetune_kit.scale_early_stopping import IMPROVED, NO_IMPROVEMENT, STOPPED, ScaleEarlyStopping


def test_signals_scripted(tmp_path):
    es = ScaleEarlyStopping(["s1", "s2"], patience=2, adaptive=False, min_delta=0.01, directory=tmp_path)
    script = [  # (s1, s2)
        (1.00, 1.00),  # both improve (first value)
        (0.90, 0.995),  # s1 improves; s2 within min_delta -> no improvement
        (0.95, 0.98),  # s1 no; s2 improves (0.98 < 1.0 - 0.01)
        (0.95, 0.99),  # s1 second bad epoch -> stopped; s2 no
        (0.10, 0.99),  # s1 stays stopped whatever it does; s2 second bad -> stopped
    ]
    expected = [
        {"s1": IMPROVED, "s2": IMPROVED},
        {"s1": IMPROVED, "s2": NO_IMPROVEMENT},
        {"s1": NO_IMPROVEMENT, "s2": IMPROVED},
        {"s1": STOPPED, "s2": NO_IMPROVEMENT},
        {"s1": STOPPED, "s2": STOPPED},
    ]
    states = iter(range(100))
    for epoch, ((a, b), exp) in enumerate(zip(script, expected)):
        assert es.step({"s1": a, "s2": b}, epoch, state_fn=lambda: next(states)) == exp, epoch
        assert es.should_stop == (epoch == 4)
    best = es.best()
    assert best["s1"]["value"] == 0.90 and best["s1"]["epoch"] == 1 and best["s1"]["stopped_at"] == 3
    assert best["s2"]["epoch"] == 2 and best["s2"]["stopped_at"] == 4
    assert (tmp_path / "best_s1.pt").is_file() and (tmp_path / "best_s2.pt").is_file()
    import torch
    assert torch.load(tmp_path / "best_s1.pt")["epoch"] == 1
    data = json.loads(es.save_history(tmp_path / "history.json").read_text())
    assert [h["signals"]["s1"] for h in data["history"]] == [e["s1"] for e in expected]
    assert es.plot(tmp_path / "convergence.png").stat().st_size > 1000


def test_adaptive_patience_grows_and_shrinks():
    es = ScaleEarlyStopping(["s"], patience=20, max_patience=25, min_patience=10, fast=0.01, slow=0.001)
    es.step({"s": 100.0}, 0)
    es.step({"s": 90.0}, 1)  # 10 % gain: +4 (20 % of 20)
    assert es.stoppers["s"].patience == 24
    es.step({"s": 80.0}, 2)  # capped at max_patience
    assert es.stoppers["s"].patience == 25
    for e in range(3, 20):
        es.step({"s": 80.0 - 0.001 * e}, e)  # tiny gains shrink patience to the floor
    assert es.stoppers["s"].patience == 10
    small = ScaleEarlyStopping(["s"], patience=3)  # floor never above the user's patience
    assert small.min_patience == 3


def test_missing_scale_and_resume():
    es = ScaleEarlyStopping(["s1", "s2"], patience=2)
    with pytest.raises(KeyError, match="s2"):
        es.step({"s1": 1.0}, 0)
    es2 = ScaleEarlyStopping(["s1", "s2"], patience=2)
    es2.step({"s1": 1.0, "s2": 1.0}, 0)
    es2.step({"s1": 1.0, "s2": 1.0}, 1)
    es3 = ScaleEarlyStopping(["s1", "s2"], patience=2)
    es3.load_state_dict(es2.state_dict())
    assert es3.step({"s1": 1.0, "s2": 0.5}, 2) == {"s1": STOPPED, "s2": IMPROVED}


def test_resume_from_an_earlier_epoch_drops_abandoned_best_files(tmp_path):
    """Resume from the state after epoch 0 while best files of epoch 1 (abandoned) are on disk."""
    es = ScaleEarlyStopping(["s1", "s2"], patience=3, directory=tmp_path)
    es.step({"s1": 2.0, "s2": 2.0}, 0, state_fn=lambda: {"w": 0})
    after_epoch0 = copy.deepcopy(es.state_dict())
    es.step({"s1": 1.0, "s2": 3.0}, 1, state_fn=lambda: {"w": 1})  # s1 improves at epoch 1, s2 does not
    resumed = ScaleEarlyStopping(["s1", "s2"], patience=3, directory=tmp_path)
    with pytest.warns(UserWarning, match="best_s1.pt: best state of epoch 1 belongs to epochs abandoned"):
        resumed.load_state_dict(after_epoch0)
    assert not (tmp_path / "best_s1.pt").exists() and "s1" not in resumed.best_states
    assert resumed.best_states["s2"] == tmp_path / "best_s2.pt"  # epoch 0's file is still the right one
    resumed.step({"s1": 1.5, "s2": 2.5}, 1, state_fn=lambda: {"w": 2})
    assert torch.load(tmp_path / "best_s1.pt", weights_only=False)["state"] == {"w": 2}
