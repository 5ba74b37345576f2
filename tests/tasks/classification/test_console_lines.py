"""Console lines of classification runs and sweeps: an unfreezing is said before the epoch it applies
to, a sweep says when the linear probe ignores the learning rate it searches, the comparison table's
T is a temperature only for temperature scaling, and no run prints timm's cosine warning."""
from __future__ import annotations

import logging

import torch
from rich.console import Console
from typer.testing import CliRunner

from finetune_kit.schedulers import build_lr_scheduler
from finetune_kit.tasks.classification.compare import strategy_row
from finetune_kit.tasks.classification.sweep_notes import ignored_lr_note
from finetune_kit.tasks.classification.synthetic import ensure_synthetic_dataset
from finetune_kit.tasks.cli import app
from tests.tasks.classification.conftest import small_config


def test_unfroze_line_comes_before_the_epoch_it_applies_to(tmp_path):
    from finetune_kit.tasks.classification.train import run_training

    data = ensure_synthetic_dataset(tmp_path / "data", size=48, per_class=6)
    console = Console(record=True, width=300)
    run_training(small_config(data, tmp_path / "run", ft_strategy="progressive", unfreeze_schedule="1",
                              num_epochs=2, unfreeze_warmup_epochs=0), console=console)
    lines = console.export_text().splitlines()
    unfroze = [i for i, ln in enumerate(lines) if ln.startswith("epoch 2/2: unfroze ")]
    epoch1 = [i for i, ln in enumerate(lines) if ln.startswith("epoch 1/2 loss")]
    epoch2 = [i for i, ln in enumerate(lines) if ln.startswith("epoch 2/2 loss")]
    assert len(unfroze) == 1 and epoch1[0] < unfroze[0] < epoch2[0], "\n".join(lines)
    assert "unfroze" not in lines[epoch1[0]] and "unfroze" not in lines[epoch2[0]]


def test_one_step_cosine_is_a_constant_schedule_without_timm_warning(caplog):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with caplog.at_level(logging.WARNING):
        sched = build_lr_scheduler(opt, epochs=1, steps_per_epoch=3, warmup_epochs=1)
    assert "no effect" not in caplog.text
    assert abs(sched.lr_at(3) - 0.1) < 1e-9  # the base LR after the warm-up, as the cosine would give


def test_sweep_note_for_a_learning_rate_the_exact_probe_ignores(tmp_path, monkeypatch):
    assert ignored_lr_note({"learning_rate": None, "ft_strategy": ["linear", "full"]}, [])
    assert ignored_lr_note({"learning_rate": None}, ["--ft_strategy", "linear"])
    assert ignored_lr_note({"learning_rate": None, "ft_strategy": ["full"]}, []) is None
    assert ignored_lr_note({"learning_rate": None, "ft_strategy": ["linear"]},
                           ["--linear-probe-solver", "epochs"]) is None
    import finetune_kit.experiments.sweep.runner as sweep_mod

    monkeypatch.setattr(sweep_mod, "run_sweep", lambda cfg, echo: [])
    res = CliRunner().invoke(app, ["sweep", "--param", "ft_strategy=linear,full", "--param",
                                   "learning_rate=loguniform(1e-4,1e-2)", "--method", "random", "--trials", "2", "--output_dir",
                                   str(tmp_path / "sw"), "--", "--data", "/x/images"])
    assert res.exit_code == 0, res.output
    assert "note: learning_rate is searched, but the trials with ft_strategy=linear" in res.output


def test_comparison_T_is_only_a_temperature_for_temperature_scaling():
    vector = {"temperature": 1.0, "calibration": {"method": "vector", "params": {"w": [1.2, 0.8], "b": [0, 0.1]}}}
    temp = {"temperature": 1.7, "calibration": {"method": "temperature", "params": {"T": 1.7}}}
    assert strategy_row("linear", vector)["temperature"] is None
    assert strategy_row("linear", vector)["calibration"] == "vector"
    assert strategy_row("full", temp)["temperature"] == 1.7
