"""Sweeps on Optuna (SQLite) with a stand-in task (analysis_fake_trial.py writes real run folders in < 1 s)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune_kit.experiments.results import load_runs
from finetune_kit.experiments.study_report import find_study
from finetune_kit.experiments.sweep.runner import SweepConfig, SweepError, run_sweep
from finetune_kit.experiments.sweep.space import Param, SearchSpace
from analysis_fake_trial import PROFILE, PROGRAM as FAKE, quality  # the stand-in task (tests folder on sys.path)


def cfg(tmp_path, space, **kw):
    kw.setdefault("poll_s", 0.1)
    kw.setdefault("pruner", "none")
    return SweepConfig(profile=PROFILE, space=SearchSpace(space), output_dir=Path(tmp_path) / "sweep",
                       program=FAKE, **kw)


GRID = [Param("ft_strategy", choices=["linear", "full"]), Param("learning_rate", choices=[1e-4, 1e-3])]
MIXED = [Param("ft_strategy", choices=["linear", "full"]), Param("learning_rate", "float", low=1e-4, high=1e-2,
                                                                   log=True)]


def states(trials):
    return [t.state.name for t in trials]


def test_grid_sweep_two_workers_then_rerun_skips_finished(tmp_path):
    c = cfg(tmp_path, GRID, fixed_args=["--num_epochs", "2"], workers=2)
    trials = run_sweep(c, echo=lambda s: None)
    assert states(trials) == ["COMPLETE"] * 4
    assert sorted((t.params["ft_strategy"], t.params["learning_rate"]) for t in trials) == \
        sorted((s, lr) for s in ("linear", "full") for lr in (1e-4, 1e-3))
    for t in trials:  # objective: best val_auroc over epochs = quality at the last epoch; reported per epoch
        assert t.value == pytest.approx(quality(t.params["ft_strategy"], t.params["learning_rate"]))
        assert Path(t.user_attrs["run_dir"]).parent == (tmp_path / "sweep" / "trials" / t.user_attrs["tag"]).resolve()
        assert t.intermediate_values == {0: pytest.approx(t.value - 0.1), 1: pytest.approx(t.value)}
    assert (tmp_path / "sweep" / "optuna.db").is_file()
    messages: list[str] = []
    again = run_sweep(c, echo=messages.append)
    assert not any("started" in m for m in messages) and "4 of 4 trials already there" in messages[0]
    assert len(again) == 4
    res = load_runs(tmp_path / "sweep")
    assert len(res.completed) == 4 and res.resolve_param("lr") == "config.learning_rate"


@pytest.mark.parametrize("method", ["random", "tpe", "cmaes", "nsga2"])
def test_each_sampler_runs_a_tiny_study(tmp_path, method):
    c = cfg(tmp_path, MIXED, method=method, trials=3, fixed_args=["--num_epochs", "1"])
    trials = run_sweep(c, echo=lambda s: None)
    assert states(trials) == ["COMPLETE"] * 3
    assert all(1e-4 <= t.params["learning_rate"] <= 1e-2 and t.params["ft_strategy"] in ("linear", "full")
               for t in trials)
    assert type(find_study(tmp_path / "sweep").sampler).__name__  # the study is readable back


def test_median_pruner_stops_a_hopeless_trial(tmp_path):
    # the objective is the final test metric; pruning watches its per-epoch validation counterpart
    space = [Param("learning_rate", choices=[1e-3, 2e-3, 5e-4, 1e-1])]
    c = cfg(tmp_path, space, pruner="median", prune_min_trials=3, prune_warmup=1, metric="test_auroc",
            fixed_args=["--num_epochs", "4", "--sleep", "0.4"])
    assert c.prune_metric == "val_auroc"
    import optuna

    from finetune_kit.experiments.sweep.runner import open_study

    s = open_study(c)
    for lr in (1e-3, 2e-3, 5e-4, 1e-1):  # a fixed order: the hopeless trial comes last
        s.enqueue_trial({"learning_rate": lr})
    trials = run_sweep(c, echo=lambda s: None)
    assert states(trials) == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
    pruned = trials[3]
    assert "MedianPruner" in pruned.user_attrs["error"] and len(pruned.intermediate_values) < 4
    assert trials[0].value == pytest.approx(quality("full", 1e-3) - 0.01)  # test_auroc
    status = json.loads((Path(pruned.user_attrs["run_dir"]) / "status.json").read_text())
    assert status["status"] == "pruned"
    assert [r.status for r in load_runs(tmp_path / "sweep").incomplete] == ["pruned"]
    assert isinstance(s.pruner, optuna.pruners.MedianPruner)


@pytest.mark.parametrize("pruner", ["sha", "hyperband"])
def test_halving_pruners_prune_through_optuna(tmp_path, pruner):
    space = [Param("learning_rate", choices=[1e-3, 1e-1, 3e-1, 1e-2])]
    c = cfg(tmp_path, space, pruner=pruner, fixed_args=["--num_epochs", "4", "--sleep", "0.3"])
    from finetune_kit.experiments.sweep.runner import open_study

    s = open_study(c)
    for lr in (1e-3, 1e-1, 3e-1, 1e-2):
        s.enqueue_trial({"learning_rate": lr})
    trials = run_sweep(c, echo=lambda s: None)
    assert type(s.pruner).__name__ == {"sha": "SuccessiveHalvingPruner", "hyperband": "HyperbandPruner"}[pruner]
    assert states(trials)[0] == "COMPLETE" and set(states(trials)) <= {"COMPLETE", "PRUNED"}
    assert all(t.intermediate_values for t in trials)  # every epoch reached the pruner
    if pruner == "sha":  # hyperband spreads 4 trials over its brackets: too few to compare within one
        assert "PRUNED" in states(trials)
    for t in trials:
        recorded = json.loads((Path(t.user_attrs["run_dir"]) / "status.json").read_text())["status"]
        assert recorded == ("pruned" if t.state.name == "PRUNED" else "completed")


def test_metric_not_logged_per_epoch_turns_pruning_off_with_one_note(tmp_path):
    space = [Param("learning_rate", choices=[1e-3, 2e-3, 5e-4])]
    c = cfg(tmp_path, space, pruner="median", prune_min_trials=1, metric="final.epochs", mode="max",
            fixed_args=["--num_epochs", "2"])
    messages: list[str] = []
    assert states(run_sweep(c, echo=messages.append)) == ["COMPLETE"] * 3
    notes = [m for m in messages if "pruning is off" in m]
    assert len(notes) == 1 and "'epochs'" in notes[0] and "val_auroc" in notes[0] and "\n" not in notes[0]


def test_failed_trial_is_recorded_with_its_error(tmp_path):
    c = cfg(tmp_path, [Param("learning_rate", choices=[1e-3])], fixed_args=["--num_epochs", "2", "--fail_at", "1"])
    (t,) = run_sweep(c, echo=lambda s: None)
    assert t.state.name == "FAIL" and "scripted failure at epoch 1" in t.user_attrs["error"]


#: trials long enough (3 epochs of 1.5 s) that the poll below sees trial 1 running and stops the
#: sweep before that trial ends, even on a loaded machine
SLOW_TRIAL = ["--num_epochs", "3", "--sleep", "1.5"]


def test_interrupted_sweep_resumes_without_rerunning_finished(tmp_path):
    script = (
        "import sys; sys.path.insert(0, %r)\n"
        "from test_sweep import cfg, GRID, SLOW_TRIAL\n"
        "from finetune_kit.experiments.sweep.runner import run_sweep\n"
        "run_sweep(cfg(%r, GRID, fixed_args=SLOW_TRIAL), echo=print)\n"
    ) % (str(Path(__file__).parent), str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.3)
        try:  # the sweep may still be creating the database's tables: read again on the next poll
            study = find_study(tmp_path / "sweep") if (tmp_path / "sweep" / "optuna.db").is_file() else None
        except ValueError:
            study = None
        trials = study.get_trials() if study else []
        if states(trials)[:2] == ["COMPLETE", "RUNNING"] and trials[1].user_attrs.get("run_dir"):
            break
    else:
        proc.kill()
        pytest.fail(f"sweep did not reach trial 1: {proc.communicate()[0][-2000:]}")
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode != 0, out
    trials = find_study(tmp_path / "sweep").get_trials()
    assert states(trials) == ["COMPLETE", "FAIL", "WAITING"] and trials[1].user_attrs["error"] == "interrupted"
    first_attempt = Path(trials[1].user_attrs["run_dir"])
    assert json.loads((first_attempt / "status.json").read_text())["status"] == "interrupted"
    done = run_sweep(cfg(tmp_path, GRID, fixed_args=SLOW_TRIAL), echo=lambda s: None)
    assert states(done) == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert done[2].params == trials[1].params  # the interrupted trial re-ran with its values
    assert len({tuple(sorted(t.params.items())) for t in done if t.state.name == "COMPLETE"}) == 4
    assert len(list((tmp_path / "sweep" / "trials" / "trial-0000").iterdir())) == 1  # never re-run
    res = load_runs(tmp_path / "sweep")
    assert len(res.completed) == 4
    assert [(r.status, "interrupted" in r.reason) for r in res.incomplete] == [("interrupted", True)]


def test_errors(tmp_path):
    with pytest.raises(SweepError, match="unknown method 'bayes'"):
        cfg(tmp_path, GRID, method="bayes")
    with pytest.raises(SweepError, match="unknown pruner 'asha'"):
        cfg(tmp_path, GRID, pruner="asha")
    with pytest.raises(SweepError, match="grid search needs a list of values for learning_rate"):
        cfg(tmp_path, MIXED)
    with pytest.raises(SweepError, match="workers 0"):
        cfg(tmp_path, GRID, workers=0)
    assert cfg(tmp_path, GRID, trials=99).trials == 4 and cfg(tmp_path, MIXED, method="tpe").trials == 10
    run_sweep(cfg(tmp_path, GRID[:1], fixed_args=["--num_epochs", "1"]), echo=lambda s: None)
    with pytest.raises(SweepError, match=r"made with other settings \(differs in: fixed_args\)"):
        run_sweep(cfg(tmp_path, GRID[:1], fixed_args=["--num_epochs", "2"]), echo=lambda s: None)
    with pytest.raises(SweepError, match="cannot open"):
        run_sweep(cfg(tmp_path, GRID, storage="postgresql+psycopg://u:secret@127.0.0.1:1/none"), echo=lambda s: None)


def test_analyze_joins_the_study_and_draws_optuna_figures(tmp_path):
    from typer.testing import CliRunner

    from finetune_kit.tasks.cli import app

    c = cfg(tmp_path, MIXED, method="tpe", trials=5, seed=1, fixed_args=["--num_epochs", "2"], workers=2)
    run_sweep(c, echo=lambda s: None)
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["analyze", str(tmp_path / "sweep"), "--metric", "val_auroc", "-o", str(out)])
    assert r.exit_code == 0, r.output
    report = (out / "report.md").read_text()
    assert "## Optuna study `sweep`" in report and "5 trials: 5 complete" in report
    assert "Parameter importances" in report
    for name in ("history", "importances", "parallel", "contour"):
        assert (out / f"optuna_{name}.png").stat().st_size > 5000, name
        assert f"(optuna_{name}.png)" in report
    csv = (out / "runs.csv").read_text().splitlines()[0]
    assert "trial.number" in csv and "trial.state" in csv
