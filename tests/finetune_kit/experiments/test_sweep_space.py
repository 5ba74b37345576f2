"""Search spaces: --param parsing, grid, Optuna distributions, flags, spec files."""
from __future__ import annotations

import pytest

from finetune_kit.experiments.sweep.space import Param, SearchSpace, load_space_file, parse_param, to_flags


def test_parse_param_forms():
    p = parse_param("learning_rate=1e-4,3e-4,1e-3")
    assert p.kind == "choice" and p.choices == [1e-4, 3e-4, 1e-3]
    assert parse_param("ft_strategy=linear,full").choices == ["linear", "full"]
    assert parse_param("--amp=true,false").choices == [True, False]
    r = parse_param("learning_rate=loguniform:1e-5:1e-2")
    assert (r.kind, r.low, r.high, r.log) == ("float", 1e-5, 1e-2, True)
    i = parse_param("gradual_patience=int:1:4")
    assert (i.kind, i.low, i.high) == ("int", 1, 4)
    with pytest.raises(ValueError, match="expected NAME=v1,v2"):
        parse_param("learning_rate")
    with pytest.raises(ValueError, match="log range needs low > 0"):
        parse_param("x=loguniform:0:1")


def test_call_syntax_of_ranges():
    r = parse_param("learning_rate=loguniform(1e-4, 3e-3)")
    assert (r.kind, r.low, r.high, r.log) == ("float", 1e-4, 3e-3, True)
    assert (parse_param("x=uniform(0.6,0.95)").log, parse_param("k=int(1,4)").kind) == (False, "int")
    assert parse_param("k=logint(1,64)").log


def test_grid_and_optuna_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = SearchSpace([Param("a", choices=[1, 2]), Param("b", choices=["x", "y", "z"])])
    assert space.grid() == {"a": [1, 2], "b": ["x", "y", "z"]} and space.grid_size() == 6
    with pytest.raises(ValueError, match="grid search needs a list of values for lr"):
        SearchSpace([Param("lr", "float", low=1e-4, high=1e-2, log=True)]).grid()
    with pytest.raises(ValueError, match="more than once"):
        SearchSpace([Param("a", choices=[1]), Param("a", choices=[2])])
    mixed = SearchSpace([Param("lr", "float", low=1e-5, high=1e-2, log=True), Param("k", "int", low=1, high=4),
                         Param("s", choices=["linear", "full"])])
    d = mixed.distributions()
    assert d["lr"] == FloatDistribution(1e-5, 1e-2, log=True) and d["k"] == IntDistribution(1, 4)
    assert d["s"] == CategoricalDistribution(["linear", "full"]) and mixed.grid_size() == 0


def test_to_flags():
    assert to_flags({"learning_rate": 1e-3, "ft_strategy": "full", "amp": True, "ema": False, "x": None,
                     "unfreeze_schedule": [100, 200]}) == [
        "--learning_rate", "0.001", "--ft_strategy", "full", "--amp", "--unfreeze_schedule", "100,200"]


def _task_command(*names):
    """The real click command of a task, as ``finetune-kit`` builds it."""
    import click
    import typer

    from finetune_kit.tasks.cli import app

    cmd = typer.main.get_command(app)
    ctx = click.Context(cmd)
    for name in names:
        cmd = cmd.get_command(ctx, name)
    return cmd


def test_flags_parse_with_the_real_task_commands():
    finetune = _task_command("compress", "finetune")
    argv = to_flags({"use_balanced": False, "adaptive_gamma": True, "progress": False, "gamma": 0.004,
                     "learning_rate": 1e-5}, finetune)
    assert argv == ["--no-use-balanced", "--adaptive_gamma", "--no-progress", "--gamma", "0.004", "--learning_rate",
                    "1e-05"]
    params = finetune.make_context("finetune", list(argv)).params
    assert (params["use_balanced"], params["adaptive_gamma"], params["progress"]) == (False, True, False)
    assert params["gamma"] == 0.004 and params["learning_rate"] == 1e-5
    classify = _task_command("classify")
    for ema in (True, False):
        argv = to_flags({"ema": ema, "amp": not ema, "learning_rate": 1e-3}, classify)
        params = classify.make_context("classify", argv).params
        assert (params["ema"], params["amp"], params["learning_rate"]) == (ema, not ema, 1e-3)
    with pytest.raises(ValueError, match="has no option --lrr"):
        to_flags({"lrr": 1e-3}, classify)


def test_false_for_a_flag_without_off_form_that_defaults_on_is_an_error():
    import click

    cmd = click.Command("t", params=[click.Option(["--fast"], is_flag=True, default=True)])
    assert to_flags({"fast": True}, cmd) == ["--fast"]
    with pytest.raises(ValueError, match="fast=false cannot be passed: --fast is on by default"):
        to_flags({"fast": False}, cmd)


def test_space_file(tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text("task: compression-finetune\nmethod: random\ntrials: 4\n"
                 "params:\n  gamma: [0.004, 0.008]\n  w_lr: {low: 0.01, high: 0.1, log: true}\n"
                 "  patience: {type: int, low: 1, high: 3}\nfixed: {epochs: 2}\n")
    spec = load_space_file(f)
    assert spec["task"] == "compression-finetune" and spec["trials"] == 4
    kinds = {p.name: p.kind for p in spec["params"].params}
    assert kinds == {"gamma": "choice", "w_lr": "float", "patience": "int"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("gamma: [1, 2]\n")
    with pytest.raises(ValueError, match="needs a 'params:' mapping"):
        load_space_file(bad)
    with pytest.raises(FileNotFoundError):
        load_space_file(tmp_path / "nope.yaml")
