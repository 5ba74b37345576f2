"""Sweeps with a stand-in task (analysis_fake_trial.py writes real run folders through RunDir, in < 1 s)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune_kit.experiments.results import load_runs
from finetune_kit.experiments.sweep.runner import SweepConfig, SweepError, load_state, run_sweep
from finetune_kit.experiments.sweep.space import Param, SearchSpace
from analysis_fake_trial import PROFILE, PROGRAM as FAKE  # the stand-in task (tests folder on sys.path: conftest)


def quality(strategy, lr):
    sys.path.insert(0, str(Path(__file__).parent))
    from analysis_fake_trial import quality as q

    return q(strategy, lr)


def cfg(tmp_path, space, **kw):
    kw.setdefault("poll_s", 0.1)
    kw.setdefault("pruning", "none")
    return SweepConfig(profile=PROFILE, space=SearchSpace(space), output_dir=tmp_path / "sweep",
                       program=FAKE, **kw)


GRID = [Param("ft_strategy", choices=["linear", "full"]), Param("learning_rate", choices=[1e-4, 1e-3])]


def sleeper(*argv: str) -> subprocess.Popen:
    """A process standing in for another sweep; returns once its command line is readable."""
    from finetune_kit.runs.status import process_cmdline

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", *argv])
    deadline = time.time() + 10
    while "time.sleep" not in process_cmdline(proc.pid) and time.time() < deadline:
        time.sleep(0.02)
    return proc


def write_lock(folder: Path, pid: int, host: str | None = None, cmdline: str | None = None) -> Path:
    import platform

    lock = folder / ".sweep.lock"
    lock.write_text(json.dumps({"pid": pid, "host": host or platform.node(), "cmdline": cmdline}))
    return lock


def test_grid_sweep_then_rerun_skips_finished(tmp_path):
    c = cfg(tmp_path, GRID, fixed_args=["--num_epochs", "2"])
    state = run_sweep(c, echo=lambda s: None)
    trials = state["trials"]
    assert [t["status"] for t in trials] == ["completed"] * 4
    assert [t["params"] for t in trials] == [{"ft_strategy": s, "learning_rate": lr}
                                             for s in ("linear", "full") for lr in (1e-4, 1e-3)]
    for t in trials:  # objective: best val_auroc over epochs = quality at the last epoch
        assert t["value"] == pytest.approx(quality(t["params"]["ft_strategy"], t["params"]["learning_rate"]))
        assert Path(t["run_dir"]).parent == tmp_path / "sweep" / "trials" / t["tag"]
        assert t["intermediate"] == {"0": pytest.approx(t["value"] - 0.1), "1": pytest.approx(t["value"])}
    assert not (tmp_path / "sweep" / ".sweep.lock").exists()
    messages: list[str] = []
    again = run_sweep(c, echo=messages.append)
    assert not any("started" in m for m in messages) and "4 of 4 trials already finished" in messages[0]
    assert [t["attempts"] for t in again["trials"]] == [1] * 4
    res = load_runs(tmp_path / "sweep")
    assert len(res.completed) == 4 and res.resolve_param("lr") == "config.learning_rate"


def test_interrupted_sweep_resumes_without_rerunning_finished(tmp_path):
    script = (
        "import sys; sys.path.insert(0, %r)\n"
        "from test_sweep import cfg, GRID\n"
        "from pathlib import Path\n"
        "from finetune_kit.experiments.sweep.runner import run_sweep\n"
        "run_sweep(cfg(Path(%r), GRID, fixed_args=['--num_epochs', '3', '--sleep', '0.7']), echo=print)\n"
    ) % (str(Path(__file__).parent), str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    state = None
    while time.time() < deadline:
        time.sleep(0.2)
        state = load_state(tmp_path / "sweep")
        if state and [t["status"] for t in state["trials"]][:2] == ["completed", "running"] \
                and state["trials"][1].get("run_dir"):
            break
    else:
        proc.kill()
        pytest.fail(f"sweep did not reach trial 1: {state}")
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode != 0, out
    state = load_state(tmp_path / "sweep")
    assert [t["status"] for t in state["trials"]] == ["completed", "pending", "pending", "pending"]
    first_attempt = Path(state["trials"][1]["run_dir"])
    assert json.loads((first_attempt / "status.json").read_text())["status"] == "interrupted"
    done = run_sweep(cfg(tmp_path, GRID, fixed_args=["--num_epochs", "3", "--sleep", "0.7"]), echo=lambda s: None)
    assert [t["status"] for t in done["trials"]] == ["completed"] * 4
    assert [t["attempts"] for t in done["trials"]] == [1, 2, 1, 1]
    res = load_runs(tmp_path / "sweep")
    assert len(res.completed) == 4
    assert [(r.status, "interrupted" in r.reason) for r in res.incomplete] == [("interrupted", True)]


def test_median_pruning_stops_a_hopeless_trial(tmp_path):
    # the objective is the final test metric; pruning watches its per-epoch validation counterpart
    space = [Param("learning_rate", choices=[1e-3, 2e-3, 5e-4, 1e-1])]
    c = cfg(tmp_path, space, pruning="median", prune_min_trials=3, prune_warmup=1, metric="test_auroc",
            fixed_args=["--num_epochs", "4", "--sleep", "0.4"])
    assert c.prune_metric == "val_auroc"
    state = run_sweep(c, echo=lambda s: None)
    assert [t["status"] for t in state["trials"]] == ["completed", "completed", "completed", "pruned"]
    pruned = state["trials"][3]
    assert "worse than the median" in pruned["error"] and pruned["value"] is None
    assert state["trials"][0]["value"] == pytest.approx(quality("full", 1e-3) - 0.01)  # test_auroc
    assert len(pruned["intermediate"]) < 4
    status = json.loads((Path(pruned["run_dir"]) / "status.json").read_text())
    assert status["status"] == "pruned"
    res = load_runs(tmp_path / "sweep")
    assert [r.status for r in res.incomplete] == ["pruned"]


def test_metric_not_logged_per_epoch_turns_pruning_off_with_one_note(tmp_path):
    space = [Param("learning_rate", choices=[1e-3, 2e-3, 5e-4])]
    c = cfg(tmp_path, space, pruning="median", prune_min_trials=1, metric="final.epochs", mode="max",
            fixed_args=["--num_epochs", "2"])
    messages: list[str] = []
    state = run_sweep(c, echo=messages.append)
    assert [t["status"] for t in state["trials"]] == ["completed"] * 3
    notes = [m for m in messages if "pruning is off" in m]
    assert len(notes) == 1 and "'epochs'" in notes[0] and "val_auroc" in notes[0] and "\n" not in notes[0]


def test_trial_that_ended_is_finished_not_overwritten_by_prune_or_interrupt(tmp_path):
    from finetune_kit.experiments.sweep.runner import _Sweep

    c = cfg(tmp_path, GRID[:1], fixed_args=["--num_epochs", "1"])
    sweep = _Sweep(c, echo=lambda s: None)
    sweep.open()
    try:
        for t in sweep.pending():
            sweep.launch(t)
        for live in sweep.live.values():
            live.proc.wait()  # both trials completed since the last poll
        sweep._stop(sweep.live[1], "pruned", "decided on values read before the trial ended")
        sweep.interrupt()
    finally:
        sweep.unlock()
    trials = sweep.state["trials"]
    assert [(t["status"], t["attempts"]) for t in trials] == [("completed", 1), ("completed", 1)]
    for t in trials:
        assert t["value"] == pytest.approx(quality(t["params"]["ft_strategy"], 1e-3))  # the default lr
        assert json.loads((Path(t["run_dir"]) / "status.json").read_text())["status"] == "completed"


def test_failed_trial_is_recorded_and_retried_on_request(tmp_path):
    space = [Param("fail_at", choices=[-1, 0])]
    c = cfg(tmp_path, space, fixed_args=["--num_epochs", "1"])
    state = run_sweep(c, echo=lambda s: None)
    assert [t["status"] for t in state["trials"]] == ["completed", "failed"]
    assert "scripted failure" in state["trials"][1]["error"]
    again = run_sweep(cfg(tmp_path, space, fixed_args=["--num_epochs", "1"], retry_failed=True), echo=lambda s: None)
    assert [t["attempts"] for t in again["trials"]] == [1, 2]


def test_tpe_sweep_with_optuna_storage_and_extension(tmp_path):
    optuna = pytest.importorskip("optuna")
    space = [Param("learning_rate", "float", low=1e-5, high=1e-1, log=True), Param("ft_strategy", choices=["linear", "full"])]
    c = cfg(tmp_path, space, method="tpe", trials=4, parallel=2, fixed_args=["--num_epochs", "1"])
    state = run_sweep(c, echo=lambda s: None)
    assert [t["status"] for t in state["trials"]] == ["completed"] * 4
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 4
    assert study.best_value == pytest.approx(max(t["value"] for t in state["trials"]))
    more = run_sweep(cfg(tmp_path, space, method="tpe", trials=5, fixed_args=["--num_epochs", "1"]),
                     echo=lambda s: None)
    assert [t["attempts"] for t in more["trials"]] == [1] * 5


def test_errors(tmp_path, monkeypatch):
    run_sweep(cfg(tmp_path, GRID[:1], fixed_args=["--num_epochs", "1"]), echo=lambda s: None)
    with pytest.raises(SweepError, match="different spec \\(differs in: space\\)"):
        run_sweep(cfg(tmp_path, GRID, fixed_args=["--num_epochs", "1"]), echo=lambda s: None)
    other = sleeper()
    try:
        from finetune_kit.runs.status import process_cmdline

        write_lock(tmp_path / "sweep", other.pid, cmdline=process_cmdline(other.pid))
        with pytest.raises(SweepError, match=f"another sweep \\(pid {other.pid}\\) holds .*sweep.lock"):
            run_sweep(cfg(tmp_path, GRID[:1], fixed_args=["--num_epochs", "1"]), echo=lambda s: None)
    finally:
        other.kill()
        other.wait()
    with pytest.raises(SweepError, match="grid search needs a list of values"):
        cfg(tmp_path, [Param("lr", "float", low=1e-4, high=1e-2)])
    with pytest.raises(SweepError, match="give the program that runs the task"):
        SweepConfig(profile=PROFILE, space=SearchSpace(GRID), output_dir=tmp_path)
    with pytest.raises(SweepError, match="expected a TaskProfile"):
        SweepConfig(profile="classification", space=SearchSpace(GRID), output_dir=tmp_path, program=FAKE)
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(SweepError, match=r"pip install 'finetune-kit\[tune\]'"):
        cfg(tmp_path, GRID, method="tpe", trials=2)


def test_median_rule_numbers():
    from finetune_kit.experiments.sweep.runner import median_rule

    done = [{"0": 0.5, "1": 0.7}, {"0": 0.6, "1": 0.8}, {"0": 0.7, "1": 0.9}]
    assert median_rule({0: 0.1}, done, "max") is None  # epoch 0 is before the warm-up
    assert median_rule({0: 0.9, 1: 0.75}, done, "max") is None  # best so far 0.9 >= median 0.8
    reason = median_rule({0: 0.4, 1: 0.75}, done, "max")
    assert reason.startswith("pruned at epoch 1") and "0.75" in reason and "median 0.8" in reason
    assert median_rule({0: 0.4, 1: 0.75}, done[:2], "max") is None  # too few completed trials
    assert median_rule({1: 0.85}, done, "min") is not None and median_rule({1: 0.75}, done, "min") is None


def test_tpe_pruning_through_optuna(tmp_path):
    optuna = pytest.importorskip("optuna")
    (tmp_path / "sweep").mkdir()
    study = optuna.create_study(study_name="sweep", storage=f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}",
                                direction="maximize")
    for lr in (1e-3, 2e-3, 5e-4, 1e-1):  # TPE asks these first, in order
        study.enqueue_trial({"learning_rate": lr})
    space = [Param("learning_rate", "float", low=1e-4, high=1e-1, log=True)]
    c = cfg(tmp_path, space, method="tpe", trials=4, pruning="median", prune_min_trials=3,
            fixed_args=["--num_epochs", "4", "--sleep", "0.4"])
    state = run_sweep(c, echo=lambda s: None)
    assert [t["params"]["learning_rate"] for t in state["trials"]] == pytest.approx([1e-3, 2e-3, 5e-4, 1e-1])
    assert [t["status"] for t in state["trials"]] == ["completed", "completed", "completed", "pruned"]
    assert "MedianPruner" in state["trials"][3]["error"]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(pruned) == 1 and pruned[0].params["learning_rate"] == pytest.approx(1e-1)


def test_orphan_result_kept(tmp_path):
    c = cfg(tmp_path, GRID[:1], fixed_args=["--num_epochs", "1"])
    state = run_sweep(c, echo=lambda s: None)
    # a sweep killed with SIGKILL after its trial finished: state still says running
    state["trials"][1]["status"] = "running"
    state["trials"][1]["pid"] = 999999999
    (tmp_path / "sweep" / "sweep_state.json").write_text(json.dumps(state))
    messages: list[str] = []
    again = run_sweep(c, echo=messages.append)
    assert again["trials"][1]["status"] == "completed" and again["trials"][1]["attempts"] == 1
    assert any("result kept" in m for m in messages)


def test_lock_of_another_sweep_is_left_alone(tmp_path):
    from finetune_kit.runs.status import process_cmdline

    c = cfg(tmp_path, GRID[:1], fixed_args=["--num_epochs", "1"])
    run_sweep(c, echo=lambda s: None)
    folder = tmp_path / "sweep"
    # another host: its process cannot be checked from here, so the lock is refused, never removed
    lock = write_lock(folder, os.getpid(), host="elsewhere")
    before = lock.read_text()
    with pytest.raises(SweepError, match=r"pid \d+ on host elsewhere.*remove the lock \(rm .*\.sweep\.lock\)"):
        run_sweep(c, echo=lambda s: None)
    assert lock.read_text() == before
    # this host, a live process running the recorded sweep command: refused, lock untouched
    other = sleeper("sweep")
    try:
        write_lock(folder, other.pid, cmdline=process_cmdline(other.pid))
        with pytest.raises(SweepError, match=f"another sweep \\(pid {other.pid}\\)"):
            run_sweep(c, echo=lambda s: None)
        assert json.loads(lock.read_text())["pid"] == other.pid
        # the same pid running another command than the recorded one (pid reused): stale, reclaimed
        write_lock(folder, other.pid, cmdline="python -m finetune_kit.tasks.cli sweep --output_dir x")
        run_sweep(c, echo=lambda s: None)
        assert not lock.exists()
        # an old lock without a recorded command: stale unless the process looks like a sweep
        write_lock(folder, other.pid)
        with pytest.raises(SweepError, match="another sweep"):  # its argv holds "sweep"
            run_sweep(c, echo=lambda s: None)
    finally:
        other.kill()
        other.wait()
    write_lock(folder, other.pid)  # the process is gone: stale, reclaimed
    run_sweep(c, echo=lambda s: None)
    assert not lock.exists()


def _take_lock(folder: str, barrier, results) -> None:
    from finetune_kit.experiments.sweep.state import SweepLock

    lock = SweepLock(folder)
    barrier.wait()
    try:
        lock.acquire()
    except SweepError:
        results.put(False)
        return
    results.put(True)
    time.sleep(1.0)  # hold it while the others try
    lock.release()


def test_only_one_of_sweeps_started_at_once_gets_the_lock(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_take_lock, args=(str(tmp_path), barrier, results)) for _ in range(6)]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert got == [False] * 5 + [True]
    assert not (tmp_path / ".sweep.lock").exists()  # released by its owner
