"""Hyperparameter sweeps: every trial is a normal run of a task's CLI in its own folder.

Layout of a sweep folder::

    SWEEP/
      sweep_state.json     the sweep's spec and every trial (atomic JSON; makes it resumable)
      .sweep.lock          pid of the sweep process working on the folder (removed at the end)
      optuna.db            Optuna storage (``--method tpe`` only)
      logs/trial-0007.log  stdout+stderr of each trial
      trials/trial-0007/<run folder written by the task>

A trial runs ``<program> <task command> <fixed args> <param flags> <output flag>
SWEEP/trials/trial-0007 <name flag> trial-0007`` (the command and flag names come from the
task's :class:`~finetune_kit.experiments.profiles.TaskProfile`) as a subprocess (its own
process group, so pruning or Ctrl-C stops its data-loader workers too). With ``parallel``
N > 1, N trials run at once and each gets ``OMP_NUM_THREADS = cpus // N`` unless the
environment already sets it.

Methods: ``grid`` (every combination of the choices, in order; ``trials`` caps it),
``random`` (trial *n*'s values are drawn from a generator seeded by (seed, n), so a resumed
sweep draws the same values), ``tpe`` (Optuna's TPE sampler with its storage in
``SWEEP/optuna.db``; needs ``pip install finetune-kit[tune]``).

Resuming: run the same command again. Finished trials (``completed``, ``failed``,
``pruned``) are skipped (``retry_failed`` re-runs the failed ones); trials that were running
when the sweep stopped are re-run, their partial run folder marked ``interrupted``. A trial
that finished while the sweep was stopping keeps its result. ``trials`` may be raised on
resume to extend a random/TPE sweep. The lock and state file: :mod:`finetune_kit.experiments.sweep.state`.

Pruning (``pruning="median"``, the default; :mod:`finetune_kit.experiments.sweep.prune`): while a trial
runs, its ``metrics.jsonl`` is read every ``poll_s`` seconds; from epoch ``prune_warmup`` on,
once ``prune_min_trials`` trials have completed, a trial whose best value so far of the
per-epoch metric (the objective's validation key: ``test_x`` -> ``val_x``) is worse
than the median of the completed trials' values at the same epoch is stopped (SIGTERM, then
SIGKILL after 10 s) and its run folder's ``status.json`` set to ``pruned`` with the numbers.
With ``tpe`` the same rule is Optuna's ``MedianPruner``, fed through ``trial.report``. When
the trials do not log that key per epoch, the sweep says so once and does not prune.

Settings: :mod:`finetune_kit.experiments.sweep.config`. This module is the runner; the
names other code imports from it (``SweepConfig``, ``SweepError``, ``load_state``,
``median_rule``) are re-exported from the modules that define them.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from finetune_kit.experiments.results import run_value
from finetune_kit.runs.run_dir import RunDir
from finetune_kit.runs.status import pid_alive, process_cmdline, recorded_status
from finetune_kit.experiments.sweep.config import SweepConfig, SweepError, require_optuna
from finetune_kit.experiments.sweep.prune import Pruner, epoch_values, median_rule
from finetune_kit.experiments.sweep.space import to_flags
from finetune_kit.experiments.sweep.state import (FINISHED, LOCK_FILE, STATE_FILE, SweepLock, load_state, save_state,
                                                  stop_group)

__all__ = ["SweepConfig", "SweepError", "run_sweep", "median_rule", "FINISHED", "LOCK_FILE", "STATE_FILE",
           "load_state"]

_INTERRUPTED = "interrupted: the sweep was stopped before this trial finished; re-run the sweep command to re-run it"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _mark_run(run_path: str | None, status: str, reason: str) -> None:
    """Record ``status`` (``pruned``, ``failed``, ``interrupted``) with ``reason`` in a trial's run folder."""
    if run_path and Path(run_path).is_dir():
        RunDir(run_path).set_status(status, reason)


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
        self.lock = SweepLock(self.root)
        self.pruner = Pruner(cfg.prune_metric, cfg.metric, cfg.mode, enabled=cfg.pruning == "median",
                             warmup=cfg.prune_warmup, min_trials=cfg.prune_min_trials, echo=echo)

    # state ------------------------------------------------------------------------------------
    def save(self) -> None:
        save_state(self.root, self.state)

    def open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        state = load_state(self.root)
        spec = self.cfg.spec()
        if state is None:
            state = {"version": 1, "spec": spec, "created": _now(), "trials": []}
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
        if pid and pid_alive(pid) and t["tag"] in process_cmdline(pid):
            self.echo(f"{t['tag']}: stopping orphaned trial process {pid} left by an interrupted sweep")
            stop_group(pid)
        elif t.get("run_dir") and self.cfg.method != "tpe":
            value, error = run_value(t["run_dir"], self.cfg.metric, self.cfg.metric_modes)
            if error is None:
                t.update(status="completed", value=value, pid=None, error=None)
                self.echo(f"{t['tag']}: finished while the sweep was down; result kept")
                return
        _mark_run(t.get("run_dir"), "interrupted", _INTERRUPTED)
        t.update(status="pending", pid=None, error="interrupted", intermediate={})
        if t.get("optuna_number") is not None and self.cfg.method == "tpe":
            t["stale_optuna_number"] = t.pop("optuna_number")

    def unlock(self) -> None:
        self.lock.release()

    # optuna ------------------------------------------------------------------------------------
    def _open_study(self) -> None:
        optuna = require_optuna()
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

    def _tell(self, live: _Live, state: str, value: float | None = None) -> None:
        """Report a trial's end to Optuna (``state``: ``complete``, ``pruned`` or ``fail``)."""
        if live.optuna_trial is None:
            return
        import optuna

        if state == "complete":
            self.study.tell(live.optuna_trial, value)
        else:
            self.study.tell(live.optuna_trial, state=optuna.trial.TrialState.PRUNED if state == "pruned"
                            else optuna.trial.TrialState.FAIL)

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
        cmd = [*self.cfg.command, *self.cfg.fixed_args, *to_flags(t["params"], self.cfg.task_cli),
               dir_flag, str(out), name_flag, t["tag"]]
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
                 started=_now(), error=None, intermediate={})
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

    def _intermediate(self, live: _Live) -> tuple[dict[int, float], set[str]]:
        """The trial's per-epoch values of the pruning key (recorded in the trial) and every key it logs."""
        run_dir = self._find_run_dir(live)
        if not run_dir:
            return {}, set()
        values, keys = epoch_values(run_dir, self.cfg.prune_metric)
        live.trial["intermediate"] = {str(k): v for k, v in values.items()}
        return values, keys

    def poll(self) -> bool:
        """Check every live trial once (exit, timeout, pruning; run folder and per-epoch values
        recorded); returns True when the state changed."""
        changed = False
        for n, live in list(self.live.items()):
            rc = live.proc.poll()
            seen = (live.trial.get("run_dir"), dict(live.trial.get("intermediate") or {}))
            values, _ = self._intermediate(live)
            changed |= seen != (live.trial.get("run_dir"), live.trial.get("intermediate"))
            if rc is not None:
                self._finish(live, rc)
                changed = True
                continue
            if self.cfg.trial_timeout_s and time.time() - live.started > self.cfg.trial_timeout_s:
                self._stop(live, "failed", f"timed out after {self.cfg.trial_timeout_s:.0f} s (trial_timeout_s)")
                changed = True
                continue
            done = [t["intermediate"] for t in self.state["trials"] if t["status"] == "completed" and t["intermediate"]]
            reason = self.pruner.reason(values, done, live.optuna_trial, live.reported)
            if reason:
                self._stop(live, "pruned", reason)
                changed = True
        return changed

    def _halt(self, live: _Live) -> int | None:
        """Stop a live trial's processes. Returns its exit code when it ended on its own (before
        the signal, or completing its run while being stopped), None when the sweep stopped it."""
        rc = live.proc.poll()
        if rc is not None:
            return rc
        stop_group(live.proc.pid, live.proc)
        run_dir = self._find_run_dir(live)
        if live.proc.returncode == 0 and recorded_status(run_dir)[0] == "completed":
            return 0
        return None

    def _stop(self, live: _Live, status: str, reason: str) -> None:
        """Stop a trial as ``pruned`` or ``failed`` (timeout); one that ended meanwhile is finished instead."""
        rc = self._halt(live)
        if rc is not None:
            self._finish(live, rc)
            return
        t = live.trial
        _mark_run(t.get("run_dir"), status, reason)
        t.update(status=status, error=reason, returncode=live.proc.returncode, pid=None,
                 finished=_now(), seconds=round(time.time() - live.started, 1))
        self._tell(live, "pruned" if status == "pruned" else "fail")
        self._close(live)
        self.echo(f"{t['tag']}: {status}: {reason}")

    def _finish(self, live: _Live, rc: int) -> None:
        t = live.trial
        values, keys = self._intermediate(live)
        if rc == 0:  # a whole run's records show whether the pruning key is logged
            self.pruner.check_logged(t["tag"], values, keys)
        run_dir = t.get("run_dir")
        t.update(returncode=rc, pid=None, finished=_now(), seconds=round(time.time() - live.started, 1))
        value, error = None, None
        if rc != 0:
            recorded, why = recorded_status(run_dir)
            log = self.root / "logs" / f"{t['tag']}.log"
            error = (why if recorded == "failed" and why else None) or f"exit code {rc}; see {log}"
        elif not run_dir:
            error = f"the task wrote no run folder under {self.root / 'trials' / t['tag']}"
        else:
            value, error = run_value(run_dir, self.cfg.metric, self.cfg.metric_modes)
        t.update(status="failed" if error else "completed", value=value, error=error)
        self._tell(live, "fail" if error else "complete", value)
        self._close(live)
        self.echo(f"{t['tag']}: {t['status']}" + (f" {self.cfg.metric}={value:.4g}" if value is not None else "")
                  + (f" ({error})" if error else "") + f" in {t['seconds']:.0f} s")

    def _close(self, live: _Live) -> None:
        live.log.close()
        self.live.pop(live.trial["number"], None)

    def interrupt(self) -> None:
        """Stop every live trial: one that ended on its own is finished as usual; the others are
        re-queued (``pending``) and their run folders marked ``interrupted``."""
        for live in list(self.live.values()):
            rc = self._halt(live)
            if rc is not None:
                self._finish(live, rc)
                continue
            _mark_run(live.trial.get("run_dir"), "interrupted", _INTERRUPTED)
            self._tell(live, "fail")
            live.trial.pop("optuna_number", None)
            live.trial.update(status="pending", pid=None, error="interrupted", intermediate={})
            self._close(live)


def _params_text(params: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (params or {}).items())


def run_sweep(cfg: SweepConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) a sweep until every trial is finished; returns the final state.

    Trials run ``cfg.parallel`` at a time. Ctrl-C or SIGTERM stops the running trials, marks
    them pending (their partial run folders ``interrupted``; a trial that completed meanwhile
    keeps its result), saves the state and re-raises ``KeyboardInterrupt``; running the same
    sweep again resumes it.

    Raises:
        SweepError: bad settings, a changed spec in an existing sweep folder, another sweep
            working on the folder (its lock names it), or Optuna missing for ``tpe``.
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
