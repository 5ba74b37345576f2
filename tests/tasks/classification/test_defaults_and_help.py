"""One set of run defaults for classify and compare, and help that tells the whole truth: every
registered strategy, the launch options, and the linear-probe option the exact solver ignores."""
from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from finetune_kit.strategy import list_strategies, strategy_aliases
from finetune_kit.tasks.classification.config import COMPARE_DEFAULTS, ClassificationConfig
from finetune_kit.tasks.cli import app

runner = CliRunner()


def _help(*command: str) -> str:
    res = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"}, terminal_width=200)
    assert res.exit_code == 0, res.output
    return re.sub(r"[│╭╮╰╯─]", " ", res.output)


def test_classify_and_compare_share_the_learning_rate_defaults():
    cfg = ClassificationConfig()
    assert (cfg.optim.learning_rate, cfg.optim.head_lr_mult) == (5e-4, 10.0)
    assert not {"learning_rate", "head_lr_mult"} & set(COMPARE_DEFAULTS)
    for command in ("classify", "compare"):
        text = " ".join(_help(command).split())
        assert "after warm-up). [default: 0.0005]" in text
        assert re.search(r"lp_ft, gradual\)\. \[default: 10\.0\]", text)


@pytest.mark.parametrize("command", ["classify", "compare"])
def test_help_lists_every_strategy_and_the_launch_options(command):
    text = " ".join(_help(command).split())
    strategy_help = text.split("Fine-tuning strategy:")[1].split("[default: gradual]")[0]
    for name in list_strategies():
        assert name in strategy_help
    for alias in strategy_aliases():
        assert f"(alias {alias})" in strategy_help
    assert "lp_ft" in strategy_help
    assert "--nproc N" in text and "--sync-bn" in text
    assert "ignored by the lbfgs solver" in text


def test_top_level_help_names_the_launch_options():
    text = " ".join(_help().split())
    assert "--nproc N" in text and "--sync-bn" in text
