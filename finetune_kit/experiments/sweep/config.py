"""Settings of a sweep (:class:`SweepConfig`), validated when built.

What the sweep knows of the task it runs comes from the task's
:class:`~finetune_kit.experiments.profiles.TaskProfile` (its command, run-folder flags, default
objective and direction), handed in by the caller; the runner is
:mod:`finetune_kit.experiments.sweep.runner`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_kit.experiments.metric_names import epoch_key, metric_mode, strip_prefix
from finetune_kit.experiments.profiles import TaskProfile
from finetune_kit.experiments.sweep.space import SearchSpace, to_flags

__all__ = ["SweepConfig", "SweepError", "require_optuna"]


class SweepError(RuntimeError):
    """A sweep cannot start or continue; the message says why and what to do."""


@dataclass
class SweepConfig:
    """Settings of one sweep.

    Attributes:
        profile: the task to sweep (:class:`~finetune_kit.experiments.profiles.TaskProfile`).
        space: the search space. output_dir: the sweep folder (created).
        method: ``grid``, ``random`` or ``tpe``.
        trials: number of trials (random/tpe: required, default 10; grid: cap, default all).
        parallel: trials running at once (>= 1). Default 1.
        metric: objective, resolved in the finished run like ``analyze --metric`` (final
            value, else best over epochs). Default: the profile's ``metric``.
        mode: ``max`` or ``min``; default the direction the profile states for the metric
            (``mode``, ``metric_modes``), else the one its name gives, else the profile's ``mode``.
        fixed_args: task options passed unchanged to every trial (after ``--`` on the CLI).
        seed: seed of the random/TPE sampler. Default 0.
        pruning: ``median`` or ``none``. prune_warmup: first epoch (the records' ``epoch``
            value) at which pruning may happen (default 1). prune_min_trials: completed
            trials needed before pruning (default 3). prune_metric: per-epoch key read from
            ``metrics.jsonl`` (default :func:`~finetune_kit.experiments.metric_names.epoch_key` of the
            objective: ``final.test.x`` -> ``val_x``); when the trials do not log it,
            the sweep says so once and does not prune.
        poll_s: seconds between checks of running trials. Default 2.
        retry_failed: re-run trials recorded as failed. Default False.
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
        SweepError: an unknown method/pruning/mode, a count below 1, ranges in a grid, neither
            ``program`` nor ``command``, a parameter the task command lacks, or Optuna
            missing for ``tpe``.
    """

    profile: TaskProfile
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
    program: list[str] | None = None
    command: list[str] | None = None
    trial_timeout_s: float | None = None
    run_flags: tuple[str, str] | None = None
    task_cli: Any = None

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        if not isinstance(self.profile, TaskProfile):
            raise SweepError(f"profile {self.profile!r}: expected a TaskProfile (the task's description)")
        if self.method not in ("grid", "random", "tpe"):
            raise SweepError(f"unknown method {self.method!r}: use grid, random or tpe")
        if self.parallel < 1:
            raise SweepError(f"--parallel {self.parallel}: must be at least 1")
        if self.trials is not None and self.trials < 1:
            raise SweepError(f"--trials {self.trials}: must be at least 1")
        if self.pruning not in ("median", "none"):
            raise SweepError(f"pruning {self.pruning!r}: use median or none")
        self.metric = self.metric or self.profile.metric
        if self.mode is None:
            self.mode = metric_mode(self.metric, self.profile.directions()) or self.profile.mode
        if self.mode not in ("max", "min"):
            raise SweepError(f"--mode {self.mode!r}: use max or min")
        self.prune_metric = self.prune_metric or epoch_key(self.metric)
        self.run_flags = tuple(self.run_flags or self.profile.run_flags)
        if self.command is None:
            if not self.program:
                raise SweepError(f"sweep of {self.profile.name!r}: give the program that runs the task "
                                 "(program=[...]) or a trial's whole base command (command=[...])")
            self.command = [*self.program, *self.profile.command]
        self.command = list(self.command)
        if self.task_cli is not None:
            self._check_flags()
        if self.method == "tpe":
            require_optuna()
        if self.method == "grid":
            try:
                self.space.grid()  # ranges are an error, before anything is written
            except ValueError as exc:
                raise SweepError(str(exc)) from exc

    def _check_flags(self) -> None:
        """Every parameter value can be passed to the task command (before any trial runs)."""
        for p in self.space.params:
            values = p.choices if p.kind == "choice" else [p.low]
            try:
                for v in values:
                    to_flags({p.name: v}, self.task_cli)
            except ValueError as exc:
                raise SweepError(str(exc)) from exc

    @property
    def task(self) -> str:
        """The task's name (``profile.name``)."""
        return self.profile.name

    @property
    def metric_modes(self) -> dict[str, str]:
        """Directions used to read a trial's result (its ``best.*`` values): the profile's, and
        the objective's ``mode`` for the objective (its name without a column prefix)."""
        return {**self.profile.directions(), strip_prefix(self.metric): self.mode}

    def spec(self) -> dict[str, Any]:
        """What must not change when a sweep is resumed."""
        return {"task": self.task, "method": self.method, "space": self.space.to_dict(),
                "fixed_args": list(self.fixed_args), "metric": self.metric, "mode": self.mode,
                "seed": self.seed, "command": list(self.command)[1:]}


def require_optuna():
    """The ``optuna`` module. Raises SweepError (how to install it) when it is missing."""
    try:
        import optuna
    except ImportError as exc:
        raise SweepError("--method tpe needs Optuna: pip install 'finetune-kit[tune]' "
                         "(or use --method grid/random)") from exc
    return optuna
