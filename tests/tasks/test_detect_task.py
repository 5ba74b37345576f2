"""``rerun`` knows a run's command from its folder; old folders fall back to the config keys."""
from __future__ import annotations

import pytest

from finetune_kit.runs.run_dir import RunDir
from finetune_kit.tasks.cli import detect_task

# config keys the guess reads as a fine-tune (lr_mults), recorded by a run made with compress train
AMBIGUOUS = {"lmbda": 0.0018, "lr": 1e-4, "metric": "mse", "lr_mults": {}}


def test_the_recorded_command_wins_over_the_config_keys(tmp_path):
    run = RunDir(tmp_path / "r")
    run.start(AMBIGUOUS, command="compress train")
    assert detect_task(AMBIGUOUS, run.path) == "compress train"
    assert detect_task(AMBIGUOUS) == "compress finetune"  # what the keys alone say


def test_old_folders_fall_back_to_the_config_keys(tmp_path):
    old = RunDir(tmp_path / "old")
    old.start({"ft_strategy": "full"})
    assert detect_task({"ft_strategy": "full"}, old.path) == "classify"
    odd = RunDir(tmp_path / "odd")
    odd.start({"ft_strategy": "full"}, command="segment")  # not a command rerun knows
    assert detect_task({"ft_strategy": "full"}, odd.path) == "classify"
    with pytest.raises(ValueError, match="config.json of no known command"):
        detect_task({"x": 1}, old.path)
