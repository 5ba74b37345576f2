"""Task profiles: the data the tasks hand to the sweep and the analysis, and the core knowing no task."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from analysis_helpers import make_run
from finetune_kit.experiments.analysis import resolve_mode
from finetune_kit.experiments.metric_names import metric_mode
from finetune_kit.experiments.profiles import (TaskProfile, curve_candidates, metric_candidates, metric_directions,
                                               profiles_by_name, select_profile)
from finetune_kit.experiments.results import load_runs, run_value
from finetune_kit.experiments.sweep.config import SweepConfig, SweepError
from finetune_kit.experiments.sweep.space import Param, SearchSpace

CORE = Path(__file__).resolve().parents[3] / "finetune_kit"


def profile(name="t", metric="val_score", mode="max", **kw) -> TaskProfile:
    return TaskProfile(name=name, command=kw.pop("command", ("t",)), output_flag="--out", name_flag="--tag",
                       metric=metric, mode=mode, **kw)


def test_profile_defaults_and_validation():
    p = profile(command=["a", "b"])
    assert p.command == ("a", "b") and p.rank_metrics == ("val_score",) and p.fallback_metrics == ()
    assert p.run_flags == ("--out", "--tag") and p.directions() == {"val_score": "max"}
    with pytest.raises(TypeError):
        p.metric_modes["x"] = "min"  # read-only
    with pytest.raises(ValueError, match="modes .*use 'max' or 'min'"):
        profile(mode="up")
    with pytest.raises(ValueError, match="modes .*'odd': 'lower'"):
        profile(metric_modes={"odd": "lower"})
    with pytest.raises(ValueError, match="must start with '-'"):
        TaskProfile(name="t", command=(), output_flag="out", name_flag="--tag", metric="m", mode="max")
    with pytest.raises(ValueError, match="must not be empty"):
        profile(name="")


def test_registry_helpers_keep_the_order_given():
    a = profile("a", "val_acc", rank_metrics=("test_acc", "val_acc"))
    b = profile("b", "val_cost", "min", fallback_metrics=("psnr",), metric_modes={"odd": "min"})
    c = profile("c", "val_err", "min", fallback_metrics=("psnr", "loss"))
    found = profiles_by_name(a, b, c)
    assert list(found) == ["a", "b", "c"] and select_profile(found, "b") is b
    assert metric_candidates(found.values()) == ("test_acc", "val_acc", "val_cost", "val_err", "psnr", "loss")
    assert curve_candidates([a, profile("d", "test.acc")]) == ("val_acc",)  # the per-epoch keys, each once
    assert metric_directions(found.values()) == {"val_acc": "max", "val_cost": "min", "odd": "min", "val_err": "min"}
    with pytest.raises(ValueError, match="unknown task 'x': use one of a, b, c"):
        select_profile(found, "x")
    with pytest.raises(ValueError, match="two task profiles are named 'a'"):
        profiles_by_name(a, profile("a"))
    with pytest.raises(ValueError, match="disagree on the direction of 'val_acc'"):
        metric_directions([a, profile("e", "val_acc", "min")])


def test_handed_in_directions_win_and_decide_best_columns(tmp_path):
    modes = {"val_odd": "min", "test.odd": "max"}
    assert metric_mode("val_odd") is None and metric_mode("val_odd", modes) == "min"
    assert metric_mode("best.val_odd", modes) == "min" and metric_mode("final.test.odd", modes) == "max"
    assert metric_mode("val_loss", {"val_loss": "max"}) == "max"  # the task's word, whatever the name says
    assert metric_mode("final.val_rd_s2", {"*rd_s[0-9]*": "min"}) == "min"  # a declared pattern
    assert resolve_mode("final.val_odd", None, modes) == "min"
    with pytest.raises(ValueError, match="no declared direction: pass --mode max or --mode min"):
        resolve_mode("final.val_odd", None)
    run = make_run(tmp_path / "runs", "r", {"seed": 0}, [{"epoch": 0, "val_odd": 2.0}, {"epoch": 1, "val_odd": 1.0}],
                   final={"x": 1})
    assert "best.val_odd" not in load_runs(tmp_path / "runs").df.columns  # the name tells no direction
    df = load_runs(tmp_path / "runs", metric_modes=modes).df
    assert df.loc[0, "best.val_odd"] == 1.0 and df.loc[0, "best_epoch.val_odd"] == 1
    assert run_value(run, "val_odd", {"val_odd": "max"}) == (2.0, None)
    assert run_value(run, "val_odd") == (1.0, None)  # without a direction: the last value, no best


def test_sweep_config_takes_everything_task_specific_from_the_profile(tmp_path):
    p = profile("t", "val_odd", "min", command=("sub", "cmd"), metric_modes={"final.size": "min"})
    space = SearchSpace([Param("lr", choices=[1, 2])])
    cfg = SweepConfig(profile=p, space=space, output_dir=tmp_path, program=["prog", "-x"])
    assert cfg.command == ["prog", "-x", "sub", "cmd"] and cfg.run_flags == ("--out", "--tag")
    assert (cfg.task, cfg.metric, cfg.mode, cfg.prune_metric) == ("t", "val_odd", "min", "val_odd")
    assert cfg.spec()["task"] == "t" and cfg.spec()["command"] == ["-x", "sub", "cmd"]
    assert SweepConfig(profile=p, space=space, output_dir=tmp_path, program=["prog"], metric="final.size").mode == "min"
    with pytest.raises(SweepError, match="'test_acc' has no declared direction: pass --mode max or --mode min"):
        SweepConfig(profile=p, space=space, output_dir=tmp_path, program=["prog"], metric="test_acc")
    assert SweepConfig(profile=p, space=space, output_dir=tmp_path, program=["prog"], metric="test_acc",
                       mode="max").mode == "max"
    other = SweepConfig(profile=p, space=space, output_dir=tmp_path, command=["own"], run_flags=("-o", "-n"))
    assert other.command == ["own"] and other.run_flags == ("-o", "-n")
    assert other.metric_modes == {"val_odd": "min", "final.size": "min"}
    best = SweepConfig(profile=p, space=space, output_dir=tmp_path, program=["prog"], metric="best.val_new", mode="max")
    assert best.metric_modes == {"val_odd": "min", "final.size": "min", "val_new": "max"}


def _code_strings(path: Path) -> set[str]:
    """String constants of a module that are not docstrings."""
    tree = ast.parse(path.read_text())
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs}


def test_the_experiments_core_names_no_task_and_imports_none():
    from finetune_kit.tasks.experiments_cli import PROFILES

    words = set()
    for p in PROFILES.values():
        words |= {p.name, *p.command, p.metric, *p.rank_metrics, *p.metric_modes}
    files = sorted((CORE / "experiments").rglob("*.py"))
    assert files
    for path in files:
        text = path.read_text()
        assert "finetune_kit.tasks" not in text and "finetune_kit.strategies" not in text, path
        assert not (_code_strings(path) & words), (path, _code_strings(path) & words)
