"""Settings of a sweep (:class:`SweepConfig`), validated when built, and the per-task tables.

The tables say how to run each task's CLI as a trial and what to optimise by default; the
runner is :mod:`finetune_kit.experiments.sweep.runner`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_kit.experiments.results import epoch_key, metric_mode
from finetune_kit.experiments.sweep.space import SearchSpace, to_flags

__all__ = ["DEFAULT_METRICS", "SweepConfig", "SweepError", "TASK_COMMANDS", "TASK_RUN_FLAGS", "require_optuna"]

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
#: Task name -> (default objective metric, mode). Each is a validation key the task writes to
#: every ``metrics.jsonl`` record (so pruning can use it) and, as the last epoch's value, to
#: ``metrics.json``: ``val_auroc`` (classification), ``val_loss`` (compression-train: the R-D
#: loss of ``training.evaluate``), ``val_rd`` (compression-finetune: the R-D cost of
#: ``finetune_objective.validate``, beside ``val_mse``, ``val_bpp``, ``val_psnr``, ``val_aux_loss``).
DEFAULT_METRICS: dict[str, tuple[str, str]] = {
    "classification": ("val_auroc", "max"),
    "compression-train": ("val_loss", "min"),
    "compression-finetune": ("val_rd", "min"),
}


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
        mode: ``max`` or ``min``; default from the metric's name, else the task's.
        fixed_args: task options passed unchanged to every trial (after ``--`` on the CLI).
        seed: seed of the random/TPE sampler. Default 0.
        pruning: ``median`` or ``none``. prune_warmup: first epoch (the records' ``epoch``
            value) at which pruning may happen (default 1). prune_min_trials: completed
            trials needed before pruning (default 3). prune_metric: per-epoch key read from
            ``metrics.jsonl`` (default :func:`~finetune_kit.experiments.results.epoch_key` of the
            objective: ``final.test.auroc`` -> ``val_auroc``); when the trials do not log it,
            the sweep says so once and does not prune.
        poll_s: seconds between checks of running trials. Default 2.
        retry_failed: re-run trials recorded as failed. Default False.
        command: base command of a trial (default ``[python, -m, finetune_kit.tasks.cli, *task]``).
        trial_timeout_s: stop (and fail) a trial running longer than this. Default none.
        run_flags: (parent-folder flag, run-name flag) of the task CLI; default
            :data:`TASK_RUN_FLAGS` (``--output_dir``/``--experiment_tag`` for classification).
        task_cli: the task's click command (the CLI passes it), or None. With it, parameter
            names are checked against its options and ``False`` is spelled with the option's
            off form when it has one (see :func:`~finetune_kit.experiments.sweep.space.to_flags`).

    Raises:
        SweepError: an unknown task/method/pruning/mode, a count below 1, ranges in a grid,
            a parameter the task command lacks, or Optuna missing for ``tpe``.
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
    task_cli: Any = None

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
            self.mode = metric_mode(self.metric) or default_mode
        if self.mode not in ("max", "min"):
            raise SweepError(f"--mode {self.mode!r}: use max or min")
        self.prune_metric = self.prune_metric or epoch_key(self.metric)
        self.run_flags = tuple(self.run_flags or TASK_RUN_FLAGS[self.task])
        if self.command is None:
            self.command = [sys.executable, "-m", "finetune_kit.tasks.cli", *TASK_COMMANDS[self.task]]
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
