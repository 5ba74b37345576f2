"""Fixtures for the analysis tests."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def grid_runs(tmp_path):
    """A synthetic strategy x lr grid with two seeds, a crashed and a failed run."""
    from analysis_helpers import classification_grid, make_run

    root = tmp_path / "runs"
    truth = classification_grid(root, seeds=(0, 1))
    make_run(root, "zz-crashed", {"ft_strategy": "full", "learning_rate": 1e-3, "seed": 0},
             [{"epoch": 0, "val_auroc": 0.99}], status="running")
    make_run(root, "zz-failed", {"ft_strategy": "full", "learning_rate": 1e-3, "seed": 0}, [],
             status="failed", error="RuntimeError: out of memory")
    return root, truth
