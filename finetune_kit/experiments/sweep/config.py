"""Settings of a sweep (:class:`SweepConfig`), validated when built, and the Optuna objects
they name: sampler (:func:`make_sampler`), pruner (:func:`make_pruner`), storage (:func:`make_storage`).

What the sweep knows of the task it runs comes from the task's
:class:`~finetune_kit.experiments.profiles.TaskProfile` (its command, run-folder flags, default
objective and direction), handed in by the caller; the runner is
:mod:`finetune_kit.experiments.sweep.runner`.
"""
from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_kit.experiments.metric_names import epoch_key, metric_mode, strip_prefix, undeclared_message
from finetune_kit.experiments.profiles import TaskProfile
from finetune_kit.experiments.sweep.space import SearchSpace, to_flags

__all__ = ["METHODS", "PRUNERS", "STUDY_DB", "SweepConfig", "SweepError", "make_pruner", "make_sampler",
           "make_storage", "safe_url"]

#: ``--method`` values, each an Optuna sampler.
METHODS = ("grid", "random", "tpe", "cmaes", "nsga2")
#: ``--pruner`` values, each an Optuna pruner.
PRUNERS = ("median", "sha", "hyperband", "none")
#: The default storage: this SQLite file in the sweep folder.
STUDY_DB = "optuna.db"


class SweepError(RuntimeError):
    """A sweep cannot start or continue; the message says why and what to do."""


@dataclass
class SweepConfig:
    """Settings of one sweep (one Optuna study; each trial one run of the task).

    Attributes:
        profile: the task to sweep (:class:`~finetune_kit.experiments.profiles.TaskProfile`).
        space: the search space. output_dir: the sweep folder (created; trial run folders,
            logs and, by default, the study's SQLite database live there).
        method: a sampler of :data:`METHODS` (``grid`` takes choices only). Default ``grid``.
        trials: trials of the study, all workers together (grid: default and cap the number
            of combinations; others: default 10). Trials failed by a dead worker and retried
            count once; pruned and failed trials count.
        workers: trial processes this command runs at once (>= 1). Default 1.
        storage: an Optuna storage URL (``postgresql+psycopg://user@host:port/db``, ``sqlite:///...``);
            default ``sqlite:///OUTPUT_DIR/optuna.db``.
        study: the study's name; default the sweep folder's name (the same command on
            several machines joins one study).
        metric: objective, resolved in the finished run like ``analyze --metric`` (final
            value, else best over epochs). Default: the profile's ``metric``.
        mode: ``max`` or ``min``; default the direction the profile declares for the metric
            (``mode``, ``metric_modes``); a SweepError when it declares none.
        fixed_args: task options passed unchanged to every trial (after ``--`` on the CLI).
        seed: seed of the sampler. Default 0.
        pruner: one of :data:`PRUNERS`. Default ``median``. prune_warmup: epochs before
            pruning may happen (median: ``n_warmup_steps``; sha/hyperband: ``min_resource``;
            default 1). prune_min_trials: finished trials needed before the median rule
            prunes (default 3). prune_metric: per-epoch key read from ``metrics.jsonl`` and
            reported to Optuna (default :func:`~finetune_kit.experiments.metric_names.epoch_key`
            of the objective: ``final.test.x`` -> ``val_x``).
        heartbeat_s: seconds between a running trial's heartbeats (default 10); grace_s:
            seconds without one after which any worker marks the trial failed and re-queues
            it once (default 3 heartbeats).
        poll_s: seconds between checks of running trials. Default 2.
        program: the program that runs the task, e.g. ``[python, -m, some.cli]``; a trial's
            base command is ``[*program, *profile.command]``. Needed unless ``command`` is given.
        command: base command of a trial (default from ``program``, above); given, it wins.
        trial_timeout_s: stop (and fail) a trial running longer than this. Default none.
        run_flags: (parent-folder flag, run-name flag) of the task CLI; default the
            profile's (``output_flag``, ``name_flag``).
        task_cli: the task's click command (the CLI passes it), or None. With it, parameter
            names are checked against its options and ``False`` is spelled with the option's
            off form when it has one (see :func:`~finetune_kit.experiments.sweep.space.to_flags`).

    Raises:
        SweepError: an unknown method/pruner/mode, an objective whose direction the profile does
            not declare (and no ``mode``), a count below 1, ranges in a grid, neither
            ``program`` nor ``command``, or a parameter the task command lacks.
    """

    profile: TaskProfile
    space: SearchSpace
    output_dir: Path
    method: str = "grid"
    trials: int | None = None
    workers: int = 1
    storage: str | None = None
    study: str | None = None
    metric: str | None = None
    mode: str | None = None
    fixed_args: list[str] = field(default_factory=list)
    seed: int = 0
    pruner: str = "median"
    prune_warmup: int = 1
    prune_min_trials: int = 3
    prune_metric: str | None = None
    heartbeat_s: int = 10
    grace_s: int | None = None
    poll_s: float = 2.0
    program: list[str] | None = None
    command: list[str] | None = None
    trial_timeout_s: float | None = None
    run_flags: tuple[str, str] | None = None
    task_cli: Any = None

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        if not isinstance(self.profile, TaskProfile):
            raise SweepError(f"profile {self.profile!r}: expected a TaskProfile (the task's description)")
        if self.method not in METHODS:
            raise SweepError(f"unknown method {self.method!r}: use {', '.join(METHODS)}")
        if self.pruner not in PRUNERS:
            raise SweepError(f"unknown pruner {self.pruner!r}: use {', '.join(PRUNERS)}")
        for name in ("workers", "trials", "heartbeat_s", "grace_s"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SweepError(f"{name} {getattr(self, name)}: must be at least 1")
        self.metric = self.metric or self.profile.metric
        if self.mode is None:
            self.mode = metric_mode(self.metric, self.profile.directions())
            if self.mode is None:
                raise SweepError(undeclared_message(self.metric))
        if self.mode not in ("max", "min"):
            raise SweepError(f"--mode {self.mode!r}: use max or min")
        self.prune_metric = self.prune_metric or epoch_key(self.metric)
        self.run_flags = tuple(self.run_flags or self.profile.run_flags)
        self.grace_s = self.grace_s or 3 * self.heartbeat_s
        if self.command is None:
            if not self.program:
                raise SweepError(f"sweep of {self.profile.name!r}: give the program that runs the task "
                                 "(program=[...]) or a trial's whole base command (command=[...])")
            self.command = [*self.program, *self.profile.command]
        self.command = list(self.command)
        if self.task_cli is not None:
            self._check_flags()
        if self.method == "grid":
            try:
                self.space.grid()  # ranges are an error, before anything is written
            except ValueError as exc:
                raise SweepError(str(exc)) from exc
            self.trials = min(self.trials or self.space.grid_size(), self.space.grid_size())
        self.trials = self.trials or 10
        self.study = self.study or self.output_dir.resolve().name
        self.storage = self.storage or f"sqlite:///{(self.output_dir / STUDY_DB).resolve()}"

    def _check_flags(self) -> None:
        """Every parameter value can be passed to the task command (before any trial runs)."""
        for p in self.space.params:
            try:
                for v in p.choices if p.kind == "choice" else [p.low]:
                    to_flags({p.name: v}, self.task_cli)
            except ValueError as exc:
                raise SweepError(str(exc)) from exc

    @property
    def task(self) -> str:
        """The task's name (``profile.name``)."""
        return self.profile.name

    @property
    def parallel(self) -> int:
        """``workers`` under its former name."""
        return self.workers

    @property
    def metric_modes(self) -> dict[str, str]:
        """Directions used to read a trial's result (its ``best.*`` values): the profile's, and
        the objective's ``mode`` for the objective (its name without a column prefix)."""
        return {**self.profile.directions(), strip_prefix(self.metric): self.mode}

    def spec(self) -> dict[str, Any]:
        """What must not change when a study is resumed or joined (stored as a study user attribute)."""
        return {"task": self.task, "method": self.method, "space": self.space.to_dict(),
                "fixed_args": list(self.fixed_args), "metric": self.metric, "mode": self.mode,
                "command": list(self.command)[1:]}


class _Grid:
    """Optuna's GridSampler without its ``study.stop()`` at the end of the grid (the runner
    asks and tells outside ``study.optimize``, where stop is refused; the trial budget stops it)."""

    def __new__(cls, *args: Any, **kwargs: Any):
        import optuna

        class GridSampler(optuna.samplers.GridSampler):
            def after_trial(self, study, trial, state, values) -> None:  # noqa: ARG002
                return None

        return GridSampler(*args, **kwargs)


def make_sampler(cfg: SweepConfig) -> Any:
    """The Optuna sampler of ``cfg.method`` seeded with ``cfg.seed``: GridSampler, RandomSampler,
    TPESampler, CmaEsSampler (ranges; choices fall back to random) or NSGAIISampler."""
    import optuna

    s = optuna.samplers
    if cfg.method == "grid":
        return _Grid(cfg.space.grid(), seed=cfg.seed)
    return {"random": s.RandomSampler, "tpe": s.TPESampler, "nsga2": s.NSGAIISampler,
            "cmaes": lambda seed: s.CmaEsSampler(seed=seed, warn_independent_sampling=False)}[cfg.method](seed=cfg.seed)


def make_pruner(cfg: SweepConfig) -> Any:
    """The Optuna pruner of ``cfg.pruner``: MedianPruner(n_startup_trials=prune_min_trials,
    n_warmup_steps=prune_warmup), SuccessiveHalvingPruner / HyperbandPruner(min_resource=
    max(1, prune_warmup)), or NopPruner."""
    import optuna

    p = optuna.pruners
    if cfg.pruner == "median":
        return p.MedianPruner(n_startup_trials=cfg.prune_min_trials, n_warmup_steps=cfg.prune_warmup)
    if cfg.pruner == "sha":
        return p.SuccessiveHalvingPruner(min_resource=max(1, cfg.prune_warmup))
    if cfg.pruner == "hyperband":
        return p.HyperbandPruner(min_resource=max(1, cfg.prune_warmup))
    return p.NopPruner()


class _StaleTrial:
    """Called by Optuna for a trial whose heartbeat stopped: marks its run folder ``failed``
    (when it is on this machine and still says ``running``), then re-queues the trial (``retry``)."""

    def __init__(self, retry: Any) -> None:
        self.retry = retry

    def __call__(self, study: Any, trial: Any) -> None:
        from finetune_kit.runs.run_dir import RunDir
        from finetune_kit.runs.status import recorded_status

        run_dir = trial.user_attrs.get("run_dir")
        if run_dir and Path(run_dir).is_dir() and recorded_status(run_dir)[0] == "running":
            RunDir(run_dir).set_status("failed", f"the sweep worker running trial {trial.number} died (no heartbeat "
                                       "within the grace period); the trial was re-queued")
        self.retry(study, trial)


def make_storage(url: str, heartbeat_s: int | None = None, grace_s: int | None = None) -> Any:
    """An Optuna ``RDBStorage`` for ``url``; with ``heartbeat_s``, trials whose heartbeat stops
    for ``grace_s`` seconds are failed and re-queued once (``RetryFailedTrialCallback(max_retry=1)``).

    Raises:
        SweepError: the URL cannot be opened (names it; e.g. a missing database driver).
    """
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    kwargs: dict[str, Any] = {}
    if heartbeat_s:
        kwargs = {"heartbeat_interval": heartbeat_s, "grace_period": grace_s or 3 * heartbeat_s,
                  "heartbeat_stale_trial_callback" if retry.__name__.startswith("RetryHeartbeat")
                  else "failed_trial_callback": _StaleTrial(retry(max_retry=1))}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        return _rdb_storage(optuna, url, kwargs)
    except (ImportError, ModuleNotFoundError) as exc:
        raise SweepError(f"storage {safe_url(url)}: {exc}; for PostgreSQL: pip install 'finetune-kit[postgres]'") from exc
    except Exception as exc:  # noqa: BLE001 - sqlalchemy's many errors, re-raised with the URL
        first = (str(exc).strip().splitlines() or [""])[0]
        if _HALF_MADE in str(exc):
            raise SweepError(f"the study storage {safe_url(url)} is half-created and could not be completed ({first}): "
                             "stop other sweeps on it and run the sweep again, or, if it holds no finished "
                             "trials, delete it") from exc
        raise SweepError(f"cannot open the study storage {safe_url(url)}: {type(exc).__name__}: {first}") from exc


#: what SQLite/PostgreSQL say when a table of the schema exists already: the schema is half-created
#: (another process is creating it, or one was killed doing so)
_HALF_MADE = "already exists"


def _rdb_storage(optuna: Any, url: str, kwargs: dict[str, Any], attempts: int = 5) -> Any:
    """``RDBStorage(url)``, completing a half-created schema.

    Optuna creates the tables one by one after checking which exist; when another process (a
    second worker, ``analyze`` reading the study) creates one in between, or a sweep was killed
    half-way, creation fails with "table ... already exists". Creating again skips the tables
    that exist and adds the missing ones, so it is retried (``attempts`` times, 0.2 s apart).

    Raises:
        whatever the last attempt raises.
    """
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as exc:  # noqa: BLE001 - sqlalchemy's OperationalError/ProgrammingError
            if _HALF_MADE not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")  # pragma: no cover


def safe_url(url: str) -> str:
    """``url`` with its password (``user:secret@``) shown as ``***``, for messages."""
    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", url)
