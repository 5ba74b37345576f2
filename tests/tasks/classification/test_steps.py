"""The run's steps one at a time, and strategy options travelling as the strategy's own."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_kit.tasks.cli import app
from tests.tasks.classification.conftest import small_config
from tests.conftest import PLUGIN_SOURCE

runner = CliRunner()
REPO = Path(__file__).resolve().parents[3]
FAST = ["--wandb", "disabled", "--no-progress", "--img_size", "64", "--model_name", "resnet18", "--num_threads", "1",
        "--batch_size", "8", "--val_fraction", "0.25", "--test_fraction", "0.25"]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    """12 generated SYNTHETIC images (6 per class) at 48 px."""
    from finetune_kit.tasks.classification.synthetic import ensure_synthetic_dataset

    return ensure_synthetic_dataset(tmp_path_factory.mktemp("tiny"), size=48, per_class=6)


def _error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_build_then_fit_one_epoch(tiny_set, tmp_path):
    """build writes nothing; fit_one_epoch trains one epoch and returns its record; end_epoch
    logs and checkpoints it once the run folder is started."""
    from finetune_kit.tasks.classification.loop import end_epoch, fit_one_epoch
    from finetune_kit.tasks.classification.setup import build, start_run

    state = build(small_config(tiny_set, tmp_path / "out", ft_strategy="progressive", unfreeze_schedule="1",
                               unfreeze_warmup_epochs=0))
    assert not (tmp_path / "out").exists() and state.run is None
    assert (len(state.data.train), len(state.data.val), len(state.data.test)) == (6, 3, 3)
    assert state.opt.steps == 1 and state.strategy.name == "progressive"
    first = fit_one_epoch(state, 0)
    assert first["epoch"] == 1 and first["global_step"] == 1 and state.global_step == 1
    assert math.isfinite(first["train_loss"]) and 0.0 <= first["val_auroc"] <= 1.0
    assert first["feature_cache"] and first["unfrozen"] == [] and first["trainable_fraction"] < 0.01
    second = fit_one_epoch(state, 1)  # scheduled stage 1: head + layer4, on augmented images
    assert not second["feature_cache"] and "layer4" in second["unfrozen"][0]["groups"]
    assert second["trainable_fraction"] > first["trainable_fraction"]
    start_run(state)
    end_epoch(state, second)
    run = Path(state.run.path)
    assert json.loads((run / "metrics.jsonl").read_text())["epoch"] == 2
    assert (run / "checkpoints" / "epoch_0002.pt").exists()  # the second epoch
    assert (run / "checkpoints" / "last.pt").exists() and (run / "split.csv").exists()
    env = json.loads((run / "environment.json").read_text())
    assert env["inputs"]["data"]["kind"] == "folder" and env["inputs"]["data"]["files"] == 13  # 12 images + README.txt
    assert env["inputs"]["split"]["kind"] == "file" and "weights" not in env["inputs"]


def test_named_options_go_only_to_the_strategy_that_takes_them(tmp_path):
    from finetune_kit.strategy import StrategyOptionError
    from finetune_kit.tasks.classification.compare import strategy_configs
    from finetune_kit.tasks.classification.config import ClassificationConfig
    from finetune_kit.tasks.classification.setup import build_strategy

    assert ClassificationConfig(ft_strategy="linear").strategy_options() == {}
    assert ClassificationConfig(ft_strategy="progressive").strategy_options() == {
        "unfreeze_schedule": "2,4", "unfreeze_warmup_epochs": 2}
    assert ClassificationConfig(ft_strategy="gradual", monitor="loss").strategy_options() == {
        "gradual_patience": 3, "monitor_mode": "min", "llrd_decay": 0.9, "unfreeze_warmup_epochs": 2}
    cfg = ClassificationConfig(ft_strategy="full", llrd_decay=0.8, strategy_kwargs=["llrd_decay=0.7", "layer_stages=[[\"head\"]]"])
    assert cfg.strategy_options() == {"llrd_decay": 0.7, "layer_stages": [["head"]]}
    with pytest.raises(StrategyOptionError, match="'linear' has no option 'llrd_decay'"):
        build_strategy(ClassificationConfig(ft_strategy="linear", llrd_decay=0.8))
    # compare: one set of options, each strategy gets its own; the saved config validates again
    base = ClassificationConfig(llrd_decay=0.8, gradual_patience=1, strategy_kwargs={"min_delta": 0.01})
    cfgs = strategy_configs(base, ["linear", "gradual", "full"])
    assert cfgs["linear"].strategy_options() == {} and cfgs["linear"].strategy.llrd_decay == 0.9
    assert cfgs["gradual"].strategy_options() == {"gradual_patience": 1, "min_delta": 0.01, "llrd_decay": 0.8,
                                                  "unfreeze_warmup_epochs": 2}
    assert cfgs["full"].strategy_options() == {"llrd_decay": 0.8}
    saved = ClassificationConfig.model_validate(cfgs["linear"].model_dump())
    assert saved.for_strategy("linear").strategy_options() == {}
    with pytest.raises(StrategyOptionError, match="'unfreeze_schedule'"):
        strategy_configs(ClassificationConfig(unfreeze_schedule="1"), ["linear", "full"])
    with pytest.raises(StrategyOptionError, match="'bogus'"):
        strategy_configs(ClassificationConfig(strategy_kwargs={"bogus": 1}), ["linear", "full"])


def test_cli_rejects_an_option_the_strategy_does_not_take(tmp_path):
    line = _error_line(runner.invoke(app, ["classify", "--ft_strategy", "linear", "--llrd_decay", "0.8",
                                           "--output_dir", str(tmp_path), *FAST]))
    assert "'linear'" in line and "'llrd_decay'" in line and "lr_mults" in line
    line = _error_line(runner.invoke(app, ["classify", "--ft_strategy", "full", "--strategy_kwargs", "bogus=1",
                                           "--output_dir", str(tmp_path), *FAST]))
    assert "'full'" in line and "'bogus'" in line and "llrd_decay" in line
    line = _error_line(runner.invoke(app, ["classify", "--strategy_kwargs", "no_value", *FAST]))
    assert line.startswith("error: --strategy-kwargs:") and "NAME=VALUE" in line
    assert not list(tmp_path.iterdir())  # nothing was written


PLUGIN = PLUGIN_SOURCE


def _strategy_state(run_dir: Path) -> dict:
    import torch

    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["strategy"]


def test_registered_plugin_gets_its_option_from_the_cli(tiny_set, tmp_path, monkeypatch):
    from finetune_kit.strategy import _REGISTRY

    namespace: dict = {}
    exec(compile(PLUGIN, "plugin", "exec"), namespace)  # register_strategy("myplugin") as a user's module would
    try:
        res = runner.invoke(app, ["classify", "--data", str(tiny_set), "--ft_strategy", "myplugin", "--strategy_kwargs",
                                  "myopt=3", "--num_epochs", "1", "--output_dir", str(tmp_path), *FAST])
        assert res.exit_code == 0, res.output
        run = next(tmp_path.glob("*/metrics.json")).parent
        assert _strategy_state(run)["myopt"] == 3
        assert json.loads((run / "config.json").read_text())["strategy"]["strategy_kwargs"] == {"myopt": 3}
        line = _error_line(runner.invoke(app, ["classify", "--data", str(tiny_set), "--ft_strategy", "myplugin",
                                               "--gradual_patience", "2", *FAST]))
        assert "'myplugin'" in line and "'gradual_patience'" in line and "myopt" in line
    finally:
        _REGISTRY.pop("myplugin", None)


def test_plugin_declared_under_the_entry_point_group(tiny_set, tmp_path):
    """A plugin distribution (dist-info with entry_points.txt on PYTHONPATH) is found by the CLI."""
    site = tmp_path / "site"
    (site / "myplugin_strategies-0.1.dist-info").mkdir(parents=True)
    (site / "myplugin_strategies.py").write_text(PLUGIN)
    info = site / "myplugin_strategies-0.1.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin-strategies\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[finetune_kit.strategies]\nmyplugin = myplugin_strategies\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    cmd = [sys.executable, "-m", "finetune_kit.tasks.cli", "classify", "--data", str(tiny_set), "--ft_strategy",
           "myplugin", "--num_epochs", "1", "--output_dir", str(tmp_path / "runs"), *FAST]
    done = subprocess.run([*cmd, "--strategy_kwargs", "myopt=3"], capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    run = next((tmp_path / "runs").glob("*/metrics.json")).parent
    assert _strategy_state(run)["myopt"] == 3
    bad = subprocess.run([*cmd, "--strategy_kwargs", "nope=1"], capture_output=True, text=True, env=env, cwd=REPO)
    errors = [ln for ln in bad.stderr.splitlines() if ln.startswith("error: ")]
    assert bad.returncode == 2 and len(errors) == 1, bad.stderr
    assert "'myplugin'" in errors[0] and "'nope'" in errors[0] and "myopt" in errors[0]


def test_lifecycle_records_a_planned_stop_and_bad_input_writes_nothing(tiny_set, tmp_path):
    from finetune_kit.tasks.classification.train import run_training

    part = run_training(small_config(tiny_set, tmp_path / "a", ft_strategy="full", num_epochs=3, stop_after_epoch=1))
    status = json.loads((Path(part["run_dir"]) / "status.json").read_text())
    assert part["status"] == status["status"] == "interrupted"
    assert status["error"] == f"stopped after epoch 1; continue with --resume {part['run_dir']}"
    with pytest.raises(ValueError, match="decoder"):
        run_training(small_config(tiny_set, tmp_path / "b", ft_strategy="gradual", layer_stages=[["head"], ["decoder"]]))
    assert not (tmp_path / "b").exists()
