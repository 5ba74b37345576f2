"""``analyze`` and ``sweep``: every option generated from a config field, today's names kept, the
space file's settings validated like typed options, and the analysis callable without the CLI."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from finetune_kit.tasks.cli import app
from finetune_kit.tasks.cli_options import config_options
from finetune_kit.tasks.experiments_config import AnalyzeConfig, SweepCommandConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "finetune_kit" / "experiments"))
from analysis_helpers import MODES, classification_grid  # noqa: E402  (the analysis tests' run writer)

runner = CliRunner()
#: every option name users typed before the options came from config fields
NAMES = {
    "analyze": {"--also", "--compare-param", "--compare_param", "--curves", "--group-by", "--group_by", "--heatmap",
                "--metric", "--mode", "--output", "--stale-after", "--stale_after", "--storage", "--study", "--top-k",
                "--top_k", "--where", "-g", "-k", "-m", "-o"},
    "sweep": {"--config", "--grace", "--heartbeat", "--method", "--metric", "--mode", "--output-dir", "--output_dir",
              "--parallel", "--param", "--prune-metric", "--prune-min-trials", "--prune-warmup", "--prune_metric",
              "--prune_min_trials", "--prune_warmup", "--pruner", "--pruning", "--seed", "--space", "--storage",
              "--study", "--task", "--trial-timeout", "--trial_timeout", "--trials", "--workers", "-j", "-n", "-p"},
}
MODELS = {"analyze": AnalyzeConfig, "sweep": SweepCommandConfig}


@pytest.mark.parametrize("name", ["analyze", "sweep"])
def test_every_option_is_a_config_field_and_every_old_name_works(name):
    command = typer.main.get_command(app).commands[name]
    options = [p for p in command.params if p.param_type_name == "option" and p.name != "help"]
    fields = {o.name for o in config_options(MODELS[name])}
    assert {p.name for p in options} == fields  # nothing declared by hand
    typed = {n for p in options for n in p.opts + p.secondary_opts}
    assert NAMES[name] <= typed, NAMES[name] - typed


def test_analyze_heatmap_takes_two_values_and_bad_options_are_one_line(tmp_path):
    root = tmp_path / "runs"
    classification_grid(root, seeds=(0,))
    r = runner.invoke(app, ["analyze", str(root), "--heatmap", "lr", "strategy", "-k", "1", "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "heatmap_final.test_auroc_ft_strategy_x_learning_rate.png").is_file()
    r = runner.invoke(app, ["analyze", str(root), "--top-k", "0"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "--top-k" in r.output, r.output
    r = runner.invoke(app, ["analyze", str(root), "--metric", "last.lr", "-o", str(tmp_path / "p")])
    assert r.exit_code == 2 and "has no declared direction: pass --mode max or --mode min" in r.output
    assert not (tmp_path / "p").exists()  # refused before anything is written
    r = runner.invoke(app, ["analyze", str(root), "--metric", "last.lr", "--mode", "min",
                            "-o", str(tmp_path / "p")])
    assert r.exit_code == 0 and "lower is better" in r.output


def test_space_file_settings_are_the_same_options_typed_ones_win(tmp_path, monkeypatch):
    import finetune_kit.experiments.sweep.runner as sweep_mod

    seen = {}
    monkeypatch.setattr(sweep_mod, "run_sweep", lambda cfg, echo: seen.setdefault("cfg", cfg) and [])
    space = tmp_path / "s.yaml"
    space.write_text("params:\n  llrd_decay: [0.7, 0.9]\nmethod: tpe\nparallel: 2\npruning: sha\nprune_warmup: 2\n"
                     "heartbeat: 5\nseed: 7\n")
    r = runner.invoke(app, ["sweep", "--config", str(space), "--seed", "3", "--output_dir", str(tmp_path / "sw")])
    assert r.exit_code == 0, r.output
    cfg = seen["cfg"]
    assert (cfg.method, cfg.workers, cfg.pruner, cfg.prune_warmup, cfg.heartbeat_s, cfg.seed) == ("tpe", 2, "sha", 2,
                                                                                                  5, 3)
    space.write_text("params:\n  llrd_decay: [0.7, 0.9]\nworkrs: 2\n")
    r = runner.invoke(app, ["sweep", "--space", str(space), "--output_dir", str(tmp_path / "sw2")])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "workrs" in r.output, r.output


def test_analyze_runs_from_python_without_the_cli(tmp_path):
    from finetune_kit.experiments.analyze import AnalysisError, analyze_runs

    root = tmp_path / "runs"
    classification_grid(root, seeds=(0, 1))
    res = analyze_runs(root, metric="test_auroc", group_by="strategy", heatmap=("lr", "strategy"),
                       where=["ft_strategy=full"], metric_modes=MODES, output=tmp_path / "o")
    assert (res.metric_col, res.mode) == ("final.test_auroc", "max")
    assert (tmp_path / "o" / "report.md").read_text() == res.report and "linear" not in res.report
    assert res.figures and all((tmp_path / "o" / f).is_file() for f in res.figures)
    with pytest.raises(AnalysisError, match="no run has config.ft_strategy=none; values present: full, linear"):
        analyze_runs(root, metric="test_auroc", where=["ft_strategy=none"], metric_modes=MODES)
    with pytest.raises(AnalysisError, match="no default metric found"):
        analyze_runs(root, metric_candidates=("val_nothing",), metric_modes=MODES)
