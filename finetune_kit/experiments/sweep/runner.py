"""Hyperparameter sweeps on Optuna: a sweep is a study, every trial a normal run of a task's CLI.

Layout of a sweep folder::

    SWEEP/
      optuna.db            the study (SQLite; ``--storage URL`` puts it elsewhere, e.g. PostgreSQL)
      logs/trial-0007.log  stdout+stderr of each trial
      trials/trial-0007/<run folder written by the task>

A worker (:func:`run_sweep`) asks the study for a trial, runs ``<program> <task command>
<fixed args> <param flags> <output flag> SWEEP/trials/trial-0007 <name flag> trial-0007`` (the
command and flag names come from the task's
:class:`~finetune_kit.experiments.profiles.TaskProfile`) as a subprocess in its own process
group, and tells the study the result: the objective read from the finished run folder, or
``FAIL``. It keeps ``cfg.workers`` trials running at once (each gets ``OMP_NUM_THREADS = cpus
// workers`` unless the environment sets it). While a trial runs, its ``metrics.jsonl`` is read
every ``poll_s`` seconds and each new epoch's ``prune_metric`` goes to ``trial.report``; when
the study's pruner says ``should_prune``, the trial's processes are stopped (SIGTERM, SIGKILL
after 10 s), its run folder marked ``pruned`` and the trial told ``PRUNED``. The trial's user
attributes record its ``tag``, ``run_dir``, ``command``, ``host``, ``log`` and ``error``.

Several workers (this command on several machines, one ``--storage`` URL) share a study: the
budget ``cfg.trials`` counts the study's trials, whoever runs them. Each worker records a
heartbeat for its running trials; a trial whose worker died (no heartbeat for ``grace_s``)
is marked ``FAIL`` by any worker and re-queued once (Optuna's ``RetryFailedTrialCallback``),
with the same parameters; a worker ends when the budget is spent and no trial of the study is
running or waiting. A trial process dies with its worker (Linux: ``PR_SET_PDEATHSIG``).

Resuming: run the same command again. Finished trials are in the study and never re-run;
trials stopped by Ctrl-C/SIGTERM are told ``FAIL`` (run folder ``interrupted``) and re-queued
with their parameters; a trial that finished while being stopped keeps its result.
"""
from __future__ import annotations

import os
import platform
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from finetune_kit.experiments.results import run_value
from finetune_kit.experiments.run_files import flatten, read_jsonl
from finetune_kit.experiments.sweep.config import (SweepConfig, SweepError, make_pruner, make_sampler,
                                                   make_storage, safe_url)
from finetune_kit.experiments.sweep.space import to_flags
from finetune_kit.runs.run_dir import RunDir
from finetune_kit.runs.status import recorded_status

__all__ = ["SweepConfig", "SweepError", "budget", "epoch_values", "open_study", "run_sweep", "stop_group"]


def open_study(cfg: SweepConfig) -> Any:
    """Create or load the study of ``cfg`` (storage with heartbeats and one retry of a dead
    worker's trial) and check that a loaded study was made with the same settings.

    Raises:
        SweepError: the storage cannot be opened, or the study exists with another spec
            (lists what differs) or direction.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(cfg.storage, cfg.heartbeat_s, cfg.grace_s)
    direction = "maximize" if cfg.mode == "max" else "minimize"
    try:
        study = optuna.create_study(storage=storage, study_name=cfg.study, direction=direction, load_if_exists=True,
                                    sampler=make_sampler(cfg), pruner=make_pruner(cfg))
    except Exception as exc:  # noqa: BLE001 - sqlalchemy/driver errors, re-raised with the study
        raise SweepError(f"cannot open study {cfg.study!r} in {safe_url(cfg.storage)}: {type(exc).__name__}: {exc}") from exc
    spec, old = cfg.spec(), study.user_attrs.get("finetune_kit.spec")
    if old is None:
        study.set_user_attr("finetune_kit.spec", spec)
    elif old != spec or study.direction.name.lower() != direction:
        diff = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k)) or ["mode"]
        raise SweepError(f"study {cfg.study!r} in {safe_url(cfg.storage)} was made with other settings (differs in: "
                         f"{', '.join(diff)}); pass the same options to resume or join it, or choose another --study")
    return study


def budget(study: Any) -> tuple[int, int]:
    """``(counted, waiting)``: the study's trials that count against ``--trials`` (all but
    failed trials that were re-queued) and those waiting to be run."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    requeued = {n for t in trials for n in [*t.system_attrs.get("retry_history", []),
                                           t.system_attrs.get("requeued_from")] if n is not None}
    counted = sum(1 for t in trials if not (t.state == TrialState.FAIL and t.number in requeued))
    return counted, sum(1 for t in trials if t.state == TrialState.WAITING)


def epoch_values(run_dir: str | Path, key: str) -> tuple[dict[int, float], set[str]]:
    """``({epoch: value}, keys)`` of ``key`` in a run's ``metrics.jsonl``: the numeric values
    (by the record's ``epoch``, else its position) and every (flattened) key the records hold."""
    records, _ = read_jsonl(Path(run_dir) / "metrics.jsonl")
    values: dict[int, float] = {}
    keys: set[str] = set()
    for i, r in enumerate(records):
        flat = flatten(r)
        keys.update(flat)
        v = flat.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            values[int(r.get("epoch", i))] = float(v)
    return values, keys


def stop_group(pid: int, proc: subprocess.Popen | None = None, grace_s: float = 10.0) -> None:
    """SIGTERM the process group of ``pid`` (a trial started in its own session), SIGKILL it
    after ``grace_s`` seconds (default 10). With ``proc``, waits for it (its returncode is set)."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        if proc is not None:
            proc.wait()
        return
    deadline = time.time() + grace_s
    while time.time() < deadline and (proc is None or proc.poll() is None):
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc is not None:
        proc.wait()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGTERM this trial process when its worker dies (so a killed worker leaves no orphan)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class _Live:
    trial: Any
    tag: str
    proc: subprocess.Popen
    log: Any
    out: Path
    before: set[str]
    started: float = field(default_factory=time.time)
    beat: float = field(default_factory=time.time)
    run_dir: str | None = None
    reported: set[int] = field(default_factory=set)


class _Worker:
    def __init__(self, cfg: SweepConfig, study: Any, echo: Callable[[str], None]) -> None:
        self.cfg, self.study, self.echo = cfg, study, echo
        self.live: dict[int, _Live] = {}
        self.prune = cfg.pruner != "none"

    def wanted(self) -> bool:
        counted, waiting = budget(self.study)
        return waiting > 0 or counted < self.cfg.trials

    def others_busy(self) -> bool:
        from optuna.trial import TrialState

        return any(t.state in (TrialState.RUNNING, TrialState.WAITING) and t.number not in self.live
                   for t in self.study.get_trials(deepcopy=False))

    def launch(self) -> None:
        cfg = self.cfg
        trial = self.study.ask()
        self.study._storage.record_heartbeat(trial._trial_id)
        params = cfg.space.suggest(trial)
        tag = f"trial-{trial.number:04d}"
        out = cfg.output_dir / "trials" / tag
        out.mkdir(parents=True, exist_ok=True)
        dir_flag, name_flag = cfg.run_flags
        cmd = [*cfg.command, *cfg.fixed_args, *to_flags(params, cfg.task_cli), dir_flag, str(out), name_flag, tag]
        env = dict(os.environ)
        if cfg.workers > 1 and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cfg.workers))
        log_path = cfg.output_dir / "logs" / f"{tag}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a", encoding="utf-8")
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        for k, v in {"tag": tag, "command": cmd, "host": platform.node(), "log": str(log_path.resolve())}.items():
            trial.set_user_attr(k, v)
        before = {p.name for p in out.iterdir()}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent if os.name == "posix" else None)
        self.live[trial.number] = _Live(trial, tag, proc, log, out, before)
        self.echo(f"{tag}: started ({_params_text(params)})")

    def _run_dir(self, live: _Live) -> str | None:
        if live.run_dir is None:
            out = live.out
            if (out / "status.json").is_file() or (out / "config.json").is_file():
                live.run_dir = str(out.resolve())
            else:
                new = sorted(p for p in out.iterdir() if p.is_dir() and p.name not in live.before)
                live.run_dir = str(new[-1].resolve()) if new else None
            if live.run_dir:
                live.trial.set_user_attr("run_dir", live.run_dir)
        return live.run_dir

    def _report(self, live: _Live) -> tuple[dict[int, float], set[str]]:
        run_dir = self._run_dir(live)
        values, keys = epoch_values(run_dir, self.cfg.prune_metric) if run_dir else ({}, set())
        for epoch in sorted(set(values) - live.reported):
            live.trial.report(values[epoch], epoch)
            live.reported.add(epoch)
        return values, keys

    def poll(self) -> None:
        """Check every live trial once: heartbeat, new epochs reported, exit, timeout, pruning."""
        for live in list(self.live.values()):
            if time.time() - live.beat >= self.cfg.heartbeat_s / 2:
                self.study._storage.record_heartbeat(live.trial._trial_id)
                live.beat = time.time()
            seen = len(live.reported)
            values, _ = self._report(live)
            rc = live.proc.poll()
            if rc is not None:
                self._finish(live, rc)
            elif self.cfg.trial_timeout_s and time.time() - live.started > self.cfg.trial_timeout_s:
                self._stop(live, "failed", f"timed out after {self.cfg.trial_timeout_s:.0f} s (trial_timeout_s)")
            elif self.prune and len(live.reported) > seen and live.trial.should_prune():
                better = max if self.cfg.mode == "max" else min
                self._stop(live, "pruned", f"pruned by Optuna's {type(self.study.pruner).__name__} at epoch "
                           f"{max(values)}: best {self.cfg.prune_metric} so far {better(values.values()):.4g}")

    def _halt(self, live: _Live) -> int | None:
        """Stop a live trial's processes; its exit code when it ended on its own (before the
        signal, or completing its run meanwhile), None when it was stopped."""
        rc = live.proc.poll()
        if rc is not None:
            return rc
        stop_group(live.proc.pid, live.proc)
        if live.proc.returncode == 0 and recorded_status(self._run_dir(live))[0] == "completed":
            return 0
        return None

    def _stop(self, live: _Live, status: str, reason: str) -> None:
        from optuna.trial import TrialState

        rc = self._halt(live)
        if rc is not None:
            return self._finish(live, rc)
        self._mark(live, status, reason)
        live.trial.set_user_attr("error", reason)
        self.study.tell(live.trial, state=TrialState.PRUNED if status == "pruned" else TrialState.FAIL)
        self._close(live)
        self.echo(f"{live.tag}: {status}: {reason}")

    def _finish(self, live: _Live, rc: int) -> None:
        from optuna.trial import TrialState

        values, keys = self._report(live)
        if rc == 0 and self.prune and keys and not values:
            self.prune = False
            shown = ", ".join(sorted(k for k in keys if k.startswith("val_"))[:8]) or ", ".join(sorted(keys)[:8])
            self.echo(f"note: pruning is off: {live.tag} logs no per-epoch {self.cfg.prune_metric!r} for the objective "
                      f"{self.cfg.metric!r} (it logs e.g. {shown}); pass --prune-metric KEY to prune on one of them")
        run_dir, value, error = live.run_dir, None, None
        if rc != 0:
            recorded, why = recorded_status(run_dir)
            error = (why if recorded == "failed" and why else None) or f"exit code {rc}; see {live.log.name}"
        elif not run_dir:
            error = f"the task wrote no run folder under {live.out}"
        else:
            value, error = run_value(run_dir, self.cfg.metric, self.cfg.metric_modes)
        if error:
            live.trial.set_user_attr("error", error)
            self.study.tell(live.trial, state=TrialState.FAIL)
        else:
            self.study.tell(live.trial, value)
        self._close(live)
        self.echo(f"{live.tag}: {'failed' if error else 'completed'}"
                  + (f" {self.cfg.metric}={value:.4g}" if value is not None else "") + (f" ({error})" if error else "")
                  + f" in {time.time() - live.started:.0f} s")

    def _mark(self, live: _Live, status: str, reason: str) -> None:
        if self._run_dir(live):
            RunDir(live.run_dir).set_status(status, reason)

    def _close(self, live: _Live) -> None:
        live.log.close()
        self.live.pop(live.trial.number, None)

    def interrupt(self) -> None:
        """Stop every live trial: one that ended on its own is finished as usual; the others are
        told FAIL, re-queued with their parameters and their run folders marked ``interrupted``."""
        import optuna
        from optuna.trial import TrialState

        for live in list(self.live.values()):
            rc = self._halt(live)
            if rc is not None:
                self._finish(live, rc)
                continue
            self._mark(live, "interrupted", "interrupted: the sweep was stopped; re-run the sweep command to re-run it")
            live.trial.set_user_attr("error", "interrupted")
            frozen = self.study.tell(live.trial, state=TrialState.FAIL)
            attrs = {k: v for k, v in frozen.system_attrs.items() if k not in ("failed_trial", "retry_history")}
            self.study.add_trial(optuna.trial.create_trial(
                state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
                system_attrs={**attrs, "requeued_from": frozen.number}))
            self._close(live)


def _params_text(params: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (params or {}).items())


def run_sweep(cfg: SweepConfig, echo: Callable[[str], None] = print) -> list[Any]:
    """Work on the study of ``cfg`` until its budget is spent and none of its trials is running
    or waiting; returns the study's trials (``optuna.trial.FrozenTrial``, by number).

    Runs ``cfg.workers`` trials at a time. Ctrl-C or SIGTERM stops the running trials (re-queued
    for the next run; one that completed meanwhile keeps its result) and re-raises
    ``KeyboardInterrupt``; running the same command again resumes the study.

    Raises:
        SweepError: the storage cannot be opened, or the study was made with other settings.
        KeyboardInterrupt: the sweep was interrupted.
    """
    from optuna.storages import fail_stale_trials

    study = open_study(cfg)
    worker = _Worker(cfg, study, echo)
    old_handler = None
    try:
        old_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        pass
    try:
        counted, _ = budget(study)
        if counted:
            echo(f"joining study {cfg.study!r}: {counted} of {cfg.trials} trials already there")
        while True:
            fail_stale_trials(study)
            while len(worker.live) < cfg.workers and worker.wanted():
                worker.launch()
            if not worker.live and not worker.others_busy():
                break
            time.sleep(cfg.poll_s)
            worker.poll()
        return study.get_trials()
    except KeyboardInterrupt:
        worker.interrupt()
        raise
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")
