"""Hyperparameter sweeps: every trial is a normal run of a task's CLI in its own folder.

Layout of a sweep folder::

    SWEEP/
      sweep_state.json     the sweep's spec and every trial (atomic JSON; makes it resumable)
      .sweep.lock          pid of the sweep process working on the folder (removed at the end)
      optuna.db            Optuna storage (``--method tpe`` only)
      logs/trial-0007.log  stdout+stderr of each trial
      trials/trial-0007/<run folder written by the task>

A trial runs ``python -m finetune_kit.cli.main <task command> <fixed args> <param flags>
--output_dir SWEEP/trials/trial-0007 --experiment_tag trial-0007`` (the flag names each task
uses: :data:`TASK_RUN_FLAGS`) as a subprocess (its own
process group, so pruning or Ctrl-C stops its data-loader workers too). With ``parallel``
N > 1, N trials run at once and each gets ``OMP_NUM_THREADS = cpus // N`` unless the
environment already sets it.

Methods: ``grid`` (every combination of the choices, in order; ``trials`` caps it),
``random`` (trial *n*'s values are drawn from a generator seeded by (seed, n), so a resumed
sweep draws the same values), ``tpe`` (Optuna's TPE sampler with its storage in
``SWEEP/optuna.db``; needs ``pip install finetune-kit[tune]``).

Resuming: run the same command again. Finished trials (``completed``, ``failed``,
``pruned``) are skipped (``retry_failed`` re-runs the failed ones); trials that were running
when the sweep stopped are re-run, their partial run folder marked ``failed`` with the
reason ``interrupted``. ``trials`` may be raised on resume to extend a random/TPE sweep.

Pruning (``pruning="median"``, the default): while a trial runs, its ``metrics.jsonl`` is
read every ``poll_s`` seconds; from epoch ``prune_warmup`` on, once ``prune_min_trials``
trials have completed, a trial whose best value so far of the per-epoch metric is worse than
the median of the completed trials' values at the same epoch is stopped (SIGTERM, then
SIGKILL after 10 s) and its run folder's ``status.json`` set to ``pruned`` with the numbers.
With ``tpe`` the same rule is Optuna's ``MedianPruner``, fed through ``trial.report``.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from finetune_kit.sweep_space import SearchSpace, to_flags

__all__ = ["SweepConfig", "SweepError", "run_sweep", "median_rule", "TASK_COMMANDS", "TASK_RUN_FLAGS", "DEFAULT_METRICS",
           "load_state"]

#: Task name -> sub-command of ``finetune-kit``.
TASK_COMMANDS: dict[str, list[str]] = {
    "classification": ["classify"],
    "compression-train": ["compress", "train"],
    "compression-finetune": ["compress", "finetune"],
}
#: Task name -> (flag of the parent folder of the run folder, flag of the run name), as each
#: task's CLI spells them today.
TASK_RUN_FLAGS: dict[str, tuple[str, str]] = {
    "classification": ("--output_dir", "--experiment_tag"),
    "compression-train": ("--output-dir", "--name"),
    "compression-finetune": ("--output_dir", "--name"),
}
#: Task name -> (default objective metric, mode). Per-epoch validation metrics, never test ones.
DEFAULT_METRICS: dict[str, tuple[str, str]] = {
    "classification": ("val_auroc", "max"),
    "compression-train": ("val_loss", "min"),
    "compression-finetune": ("val_loss", "min"),
}
STATE_FILE = "sweep_state.json"
LOCK_FILE = ".sweep.lock"
FINISHED = ("completed", "failed", "pruned")


class SweepError(RuntimeError):
    """A sweep cannot start or continue; the message says why and what to do."""


@dataclass
class SweepConfig:
    """Settings of one sweep.

    Attributes:
        task: ``classification``, ``compression-train`` or ``compression-finetune``.
        space: the search space. output_dir: the sweep folder (created).
        method: ``grid``, ``random`` or ``tpe``.
        trials: number of trials (random/tpe: required, default 10; grid: cap, default all).
        parallel: trials running at once (>= 1). Default 1.
        metric: objective, resolved in the finished run like ``analyze --metric`` (final
            value, else best over epochs). Default per task (:data:`DEFAULT_METRICS`).
        mode: ``max`` or ``min``; default from the metric's name.
        fixed_args: task options passed unchanged to every trial (after ``--`` on the CLI).
        seed: seed of the random/TPE sampler. Default 0.
        pruning: ``median`` or ``none``. prune_warmup: first epoch (the records' ``epoch``
            value) at which pruning may happen (default 1). prune_min_trials: completed
            trials needed before pruning (default 3). prune_metric: per-epoch key read from
            ``metrics.jsonl`` (default: the objective's name without prefix).
        poll_s: seconds between checks of running trials. Default 2.
        retry_failed: re-run trials recorded as failed. Default False.
        command: base command of a trial (default ``[python, -m, finetune_kit.cli.main, *task]``).
        trial_timeout_s: stop (and fail) a trial running longer than this. Default none.
        run_flags: (parent-folder flag, run-name flag) of the task CLI; default
            :data:`TASK_RUN_FLAGS` (``--output_dir``/``--experiment_tag`` for classification).
    """

    task: str
    space: SearchSpace
    output_dir: Path
    method: str = "grid"
    trials: int | None = None
    parallel: int = 1
    metric: str | None = None
    mode: str | None = None
    fixed_args: list[str] = field(default_factory=list)
    seed: int = 0
    pruning: str = "median"
    prune_warmup: int = 1
    prune_min_trials: int = 3
    prune_metric: str | None = None
    poll_s: float = 2.0
    retry_failed: bool = False
    command: list[str] | None = None
    trial_timeout_s: float | None = None
    run_flags: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        if self.task not in TASK_COMMANDS:
            raise SweepError(f"unknown task {self.task!r}: use one of {', '.join(TASK_COMMANDS)}")
        if self.method not in ("grid", "random", "tpe"):
            raise SweepError(f"unknown method {self.method!r}: use grid, random or tpe")
        if self.parallel < 1:
            raise SweepError(f"--parallel {self.parallel}: must be at least 1")
        if self.trials is not None and self.trials < 1:
            raise SweepError(f"--trials {self.trials}: must be at least 1")
        if self.pruning not in ("median", "none"):
            raise SweepError(f"pruning {self.pruning!r}: use median or none")
        default_metric, default_mode = DEFAULT_METRICS[self.task]
        self.metric = self.metric or default_metric
        if self.mode is None:
            from finetune_kit.results import metric_mode

            self.mode = metric_mode(self.metric) or default_mode
        if self.mode not in ("max", "min"):
            raise SweepError(f"--mode {self.mode!r}: use max or min")
        self.prune_metric = self.prune_metric or self.metric.split(".")[-1]
        self.run_flags = tuple(self.run_flags or TASK_RUN_FLAGS[self.task])
        if self.command is None:
            self.command = [sys.executable, "-m", "finetune_kit.cli.main", *TASK_COMMANDS[self.task]]
        if self.method == "tpe":
            _require_optuna()
        if self.method == "grid":
            try:
                self.space.grid()  # ranges are an error, before anything is written
            except ValueError as exc:
                raise SweepError(str(exc)) from exc

    def spec(self) -> dict[str, Any]:
        """What must not change when a sweep is resumed."""
        return {"task": self.task, "method": self.method, "space": self.space.to_dict(),
                "fixed_args": list(self.fixed_args), "metric": self.metric, "mode": self.mode,
                "seed": self.seed, "command": list(self.command)[1:]}


def _require_optuna():
    try:
        import optuna
    except ImportError as exc:
        raise SweepError("--method tpe needs Optuna: pip install 'finetune-kit[tune]' "
                         "(or use --method grid/random)") from exc
    return optuna


# -- small file helpers (no torch import in the sweep process) ---------------------------------
def _atomic_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _set_run_status(run_path: str | None, status: str, error: str) -> None:
    """Overwrite a trial's ``status.json`` (same shape as :meth:`RunDir.set_status`)."""
    if run_path and Path(run_path).is_dir():
        _atomic_json(Path(run_path) / "status.json",
                     {"status": status, "error": error, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def load_state(output_dir: str | Path) -> dict[str, Any] | None:
    """The sweep state of a folder, or None when it has none.

    Raises:
        SweepError: the state file is unreadable (names it).
    """
    path = Path(output_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise SweepError(f"{path} is not valid JSON ({exc}); move it away to start the sweep afresh") from exc


# -- the runner ---------------------------------------------------------------------------------
@dataclass
class _Live:
    trial: dict[str, Any]
    proc: subprocess.Popen
    started: float
    before: set[str]
    log: Any
    optuna_trial: Any = None
    reported: set[int] = field(default_factory=set)


class _Sweep:
    def __init__(self, cfg: SweepConfig, echo: Callable[[str], None]) -> None:
        self.cfg, self.echo = cfg, echo
        self.root = cfg.output_dir
        self.state: dict[str, Any] = {}
        self.live: dict[int, _Live] = {}
        self.study = None

    # state ------------------------------------------------------------------------------------
    def save(self) -> None:
        self.state["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        _atomic_json(self.root / STATE_FILE, self.state)

    def open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock()
        state = load_state(self.root)
        spec = self.cfg.spec()
        if state is None:
            state = {"version": 1, "spec": spec, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "trials": []}
        elif state.get("spec") != spec:
            old = state.get("spec") or {}
            diff = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
            raise SweepError(f"{self.root} holds a sweep with a different spec (differs in: {', '.join(diff)}); "
                             "pass the same options to resume it, or choose another --output_dir")
        self.state = state
        for t in state["trials"]:
            if t["status"] == "running":
                self._recover(t)
            elif t["status"] == "failed" and self.cfg.retry_failed:
                t["status"] = "pending"
        total = self._total()
        if self.cfg.method in ("grid", "random"):
            have = {t["number"] for t in state["trials"]}
            grid = self.cfg.space.grid() if self.cfg.method == "grid" else None
            for n in range(total):
                if n not in have:
                    params = grid[n] if grid is not None else self.cfg.space.sample(self.cfg.seed, n)
                    state["trials"].append(self._new_trial(n, params))
        else:
            self._open_study()
            have = {t["number"] for t in state["trials"]}
            for n in range(total):
                if n not in have:
                    state["trials"].append(self._new_trial(n, None))
        state["trials"].sort(key=lambda t: t["number"])
        self.save()

    def _total(self) -> int:
        if self.cfg.method == "grid":
            size = len(self.cfg.space.grid())
            return min(size, self.cfg.trials) if self.cfg.trials else size
        return self.cfg.trials or max(10, len(self.state.get("trials", [])))

    @staticmethod
    def _new_trial(n: int, params: dict | None) -> dict[str, Any]:
        return {"number": n, "tag": f"trial-{n:04d}", "params": params, "status": "pending", "value": None,
                "intermediate": {}, "run_dir": None, "attempts": 0, "error": None, "pid": None,
                "returncode": None, "started": None, "finished": None, "seconds": None}

    def _recover(self, t: dict[str, Any]) -> None:
        """A trial left 'running' by a sweep that was killed: keep its result when the orphaned
        process finished the run meanwhile, else stop the orphan and re-queue the trial."""
        pid = t.get("pid")
        if pid and _pid_alive(pid) and t["tag"] in _cmdline(pid):
            self.echo(f"{t['tag']}: stopping orphaned trial process {pid} left by an interrupted sweep")
            _stop_group(pid)
        elif t.get("run_dir") and self.cfg.method != "tpe":
            value, error = _objective(t["run_dir"], self.cfg.metric)
            if error is None:
                t.update(status="completed", value=value, pid=None, error=None)
                self.echo(f"{t['tag']}: finished while the sweep was down; result kept")
                return
        _set_run_status(t.get("run_dir"), "failed", "interrupted: the sweep stopped before this trial finished "
                                                    "(it is re-run as a new attempt)")
        t.update(status="pending", pid=None, intermediate={})
        if t.get("optuna_number") is not None and self.cfg.method == "tpe":
            t["stale_optuna_number"] = t.pop("optuna_number")

    def _lock(self) -> None:
        lock = self.root / LOCK_FILE
        if lock.is_file():
            try:
                info = json.loads(lock.read_text())
            except ValueError:
                info = {}
            if info.get("host") == os.uname().nodename and info.get("pid") != os.getpid() \
                    and _pid_alive(info.get("pid")):
                raise SweepError(f"another sweep (pid {info['pid']}) is working on {self.root}; wait for it, "
                                 f"or stop it (kill {info['pid']}) and re-run to resume")
        _atomic_json(lock, {"pid": os.getpid(), "host": os.uname().nodename})
        self.locked = True

    def unlock(self) -> None:
        if getattr(self, "locked", False):  # never remove another sweep's lock
            (self.root / LOCK_FILE).unlink(missing_ok=True)
            self.locked = False

    # optuna ------------------------------------------------------------------------------------
    def _open_study(self) -> None:
        optuna = _require_optuna()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = f"sqlite:///{(self.root / 'optuna.db').resolve()}"
        pruner = optuna.pruners.MedianPruner(n_startup_trials=self.cfg.prune_min_trials,
                                             n_warmup_steps=self.cfg.prune_warmup) \
            if self.cfg.pruning == "median" else optuna.pruners.NopPruner()
        self.study = optuna.create_study(study_name="sweep", storage=storage, load_if_exists=True,
                                         direction="maximize" if self.cfg.mode == "max" else "minimize",
                                         sampler=optuna.samplers.TPESampler(seed=self.cfg.seed), pruner=pruner)
        for t in self.state["trials"]:
            stale = t.pop("stale_optuna_number", None)
            if stale is not None:
                for ot in self.study.get_trials(deepcopy=False):
                    if ot.number == stale and ot.state == optuna.trial.TrialState.RUNNING:
                        self.study.tell(ot.number, state=optuna.trial.TrialState.FAIL)

    # running -----------------------------------------------------------------------------------
    def pending(self) -> list[dict[str, Any]]:
        return [t for t in self.state["trials"] if t["status"] == "pending"]

    def launch(self, t: dict[str, Any]) -> None:
        otrial = None
        if self.cfg.method == "tpe":
            if t.get("params"):  # a re-run of an interrupted trial keeps its values
                self.study.enqueue_trial(t["params"], skip_if_exists=False)
            otrial = self.study.ask()
            t["params"] = self.cfg.space.suggest(otrial)
            t["optuna_number"] = otrial.number
        out = self.root / "trials" / t["tag"]
        out.mkdir(parents=True, exist_ok=True)
        dir_flag, name_flag = self.cfg.run_flags
        cmd = [*self.cfg.command, *self.cfg.fixed_args, *to_flags(t["params"]), dir_flag, str(out), name_flag, t["tag"]]
        env = dict(os.environ)
        if self.cfg.parallel > 1 and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.cfg.parallel))
        log_path = self.root / "logs" / f"{t['tag']}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a", encoding="utf-8")
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=os.getcwd())
        t.update(status="running", pid=proc.pid, attempts=t["attempts"] + 1, command=cmd, run_dir=None,
                 started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), error=None, intermediate={})
        self.live[t["number"]] = _Live(t, proc, time.time(), {p.name for p in out.iterdir()}, log, otrial)
        self.echo(f"{t['tag']}: started ({_params_text(t['params'])})")
        self.save()

    def _find_run_dir(self, live: _Live) -> str | None:
        t = live.trial
        if t.get("run_dir"):
            return t["run_dir"]
        out = self.root / "trials" / t["tag"]
        if (out / "status.json").is_file() or (out / "config.json").is_file():
            t["run_dir"] = str(out)
            return t["run_dir"]
        new = sorted(p for p in out.iterdir() if p.is_dir() and p.name not in live.before)
        if new:
            t["run_dir"] = str(new[-1])
        return t["run_dir"]

    def _intermediate(self, live: _Live) -> dict[int, float]:
        run_dir = self._find_run_dir(live)
        if not run_dir:
            return {}
        from finetune_kit.results import _read_jsonl, flatten

        records, _ = _read_jsonl(Path(run_dir) / "metrics.jsonl")
        values: dict[int, float] = {}
        for i, r in enumerate(records):
            v = flatten(r).get(self.cfg.prune_metric)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                values[int(r.get("epoch", i))] = float(v)
        live.trial["intermediate"] = {str(k): v for k, v in values.items()}
        return values

    def poll(self) -> bool:
        """Check every live trial once (exit, timeout, pruning; run folder and per-epoch values
        recorded); returns True when the state changed."""
        changed = False
        for n, live in list(self.live.items()):
            rc = live.proc.poll()
            seen = (live.trial.get("run_dir"), dict(live.trial.get("intermediate") or {}))
            values = self._intermediate(live)
            changed |= seen != (live.trial.get("run_dir"), live.trial.get("intermediate"))
            if rc is not None:
                self._finish(live, rc)
                changed = True
                continue
            if self.cfg.trial_timeout_s and time.time() - live.started > self.cfg.trial_timeout_s:
                self._stop(live, "failed", f"timed out after {self.cfg.trial_timeout_s:.0f} s (trial_timeout_s)")
                changed = True
                continue
            reason = self._should_prune(live, values)
            if reason:
                self._stop(live, "pruned", reason)
                changed = True
        return changed

    def _should_prune(self, live: _Live, values: dict[int, float]) -> str | None:
        if self.cfg.pruning == "none" or not values:
            return None
        better = max if self.cfg.mode == "max" else min
        if live.optuna_trial is not None:
            for epoch in sorted(values):
                if epoch not in live.reported:
                    live.optuna_trial.report(values[epoch], epoch)
                    live.reported.add(epoch)
            if live.optuna_trial.should_prune():
                epoch = max(values)
                return (f"pruned by Optuna's MedianPruner at epoch {epoch}: {self.cfg.prune_metric} "
                        f"{better(values.values()):.4g} is worse than the median of earlier trials")
            return None
        done = [t["intermediate"] for t in self.state["trials"] if t["status"] == "completed" and t["intermediate"]]
        return median_rule(values, done, self.cfg.mode, metric=self.cfg.prune_metric,
                           warmup=self.cfg.prune_warmup, min_trials=self.cfg.prune_min_trials)

    def _stop(self, live: _Live, status: str, reason: str) -> None:
        _stop_group(live.proc.pid, live.proc)
        self._find_run_dir(live)
        t = live.trial
        _set_run_status(t.get("run_dir"), status, reason)
        t.update(status=status, error=reason, returncode=live.proc.returncode, pid=None,
                 finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), seconds=round(time.time() - live.started, 1))
        if live.optuna_trial is not None:
            import optuna

            self.study.tell(live.optuna_trial,
                            state=optuna.trial.TrialState.PRUNED if status == "pruned" else optuna.trial.TrialState.FAIL)
        self._close(live)
        self.echo(f"{t['tag']}: {status}: {reason}")

    def _finish(self, live: _Live, rc: int) -> None:
        t = live.trial
        run_dir = self._find_run_dir(live)
        t.update(returncode=rc, pid=None, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 seconds=round(time.time() - live.started, 1))
        value, error = None, None
        if rc != 0:
            error = _run_error(run_dir) or f"exit code {rc}; see {self.root / 'logs' / (t['tag'] + '.log')}"
        elif not run_dir:
            error = f"the task wrote no run folder under {self.root / 'trials' / t['tag']}"
        else:
            value, error = _objective(run_dir, self.cfg.metric)
        t.update(status="failed" if error else "completed", value=value, error=error)
        if live.optuna_trial is not None:
            import optuna

            if error:
                self.study.tell(live.optuna_trial, state=optuna.trial.TrialState.FAIL)
            else:
                self.study.tell(live.optuna_trial, value)
        self._close(live)
        self.echo(f"{t['tag']}: {t['status']}" + (f" {self.cfg.metric}={value:.4g}" if value is not None else "")
                  + (f" ({error})" if error else "") + f" in {t['seconds']:.0f} s")

    def _close(self, live: _Live) -> None:
        live.log.close()
        self.live.pop(live.trial["number"], None)

    def interrupt(self) -> None:
        for live in list(self.live.values()):
            _stop_group(live.proc.pid, live.proc)
            self._find_run_dir(live)
            _set_run_status(live.trial.get("run_dir"), "failed",
                            "interrupted: the sweep was stopped; re-run the sweep command to re-run this trial")
            if live.optuna_trial is not None:
                import optuna

                self.study.tell(live.optuna_trial, state=optuna.trial.TrialState.FAIL)
                live.trial.pop("optuna_number", None)
            live.trial.update(status="pending", pid=None, error="interrupted", intermediate={})
            self._close(live)


def median_rule(values: dict[int, float], completed: list[dict[str, float]], mode: str, *, metric: str = "metric",
                warmup: int = 1, min_trials: int = 3) -> str | None:
    """Optuna's median stopping rule on per-epoch values; the reason to prune, or None.

    Args:
        values: the running trial's ``{epoch: value}``.
        completed: completed trials' ``{"epoch": value}`` maps (keys are strings, as in the state file).
        mode: ``"max"`` or ``"min"``.
        warmup: first epoch that may prune. min_trials: completed trials with a value at
            that epoch needed before comparing.

    A trial is pruned at the first epoch ``e >= warmup`` where its best value up to ``e`` is
    worse than the median of the completed trials' values at ``e``.
    """
    if len(completed) < min_trials:
        return None
    better = max if mode == "max" else min
    for epoch in sorted(values):
        if epoch < warmup:
            continue
        others = [c[str(epoch)] for c in completed if str(epoch) in c]
        if len(others) < min_trials:
            continue
        median = statistics.median(others)
        best_so_far = better(v for e, v in values.items() if e <= epoch)
        if (best_so_far < median) if mode == "max" else (best_so_far > median):
            return (f"pruned at epoch {epoch}: best {metric} so far {best_so_far:.4g} is worse than the median "
                    f"{median:.4g} of {len(others)} completed trials at that epoch")
    return None


def _stop_group(pid: int, proc: subprocess.Popen | None = None, grace_s: float = 10.0) -> None:
    """SIGTERM the process group of ``pid`` (a trial started in its own session), SIGKILL after ``grace_s``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.time() + grace_s
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        if proc is None and not _pid_alive(pid):
            break
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc is not None:
        proc.wait()


def _run_error(run_dir: str | None) -> str | None:
    if not run_dir:
        return None
    try:
        data = json.loads((Path(run_dir) / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return data.get("error") if data.get("status") == "failed" else None


def _objective(run_dir: str, metric: str) -> tuple[float | None, str | None]:
    """(value, error) of ``metric`` in a finished run, resolved as ``analyze --metric`` does."""
    import pandas as pd

    from finetune_kit.results import Results, load_run

    row = load_run(run_dir)
    if row["status"] != "completed":
        return None, f"run ended with status {row['status']}: {row['reason']}"
    res = Results(Path(run_dir), pd.DataFrame([row]))
    try:
        col = res.resolve_metric(metric)
    except KeyError as exc:
        return None, str(exc.args[0])
    value = row.get(col)
    if not isinstance(value, (int, float)) or value != value:
        return None, f"metric {col} has no numeric value in {run_dir}"
    return float(value), None


def _params_text(params: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (params or {}).items())


def run_sweep(cfg: SweepConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) a sweep until every trial is finished; returns the final state.

    Trials run ``cfg.parallel`` at a time. Ctrl-C or SIGTERM stops the running trials, marks
    them pending (their partial run folders ``failed: interrupted``), saves the state and
    re-raises ``KeyboardInterrupt``; running the same sweep again resumes it.

    Raises:
        SweepError: bad settings, a changed spec in an existing sweep folder, another sweep
            working on the folder, or Optuna missing for ``tpe``.
        KeyboardInterrupt: the sweep was interrupted (state saved).
    """
    sweep = _Sweep(cfg, echo)
    old_handler = None
    try:
        old_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        pass
    try:
        sweep.open()
        done = sum(t["status"] in FINISHED for t in sweep.state["trials"])
        if done:
            echo(f"resuming {cfg.output_dir}: {done} of {len(sweep.state['trials'])} trials already finished")
        queue = sweep.pending()
        while queue or sweep.live:
            while queue and len(sweep.live) < cfg.parallel:
                sweep.launch(queue.pop(0))
            time.sleep(cfg.poll_s)
            if sweep.poll():
                sweep.save()
            queue = [t for t in sweep.pending() if t["number"] not in sweep.live]
        sweep.save()
        return sweep.state
    except KeyboardInterrupt:
        sweep.interrupt()
        if sweep.state:
            sweep.save()
        raise
    finally:
        sweep.unlock()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")
