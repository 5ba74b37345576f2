"""What the sweep and the analysis need to know about a task, handed in by the task.

The core knows no task: each task describes itself with a :class:`TaskProfile` (its command,
the flags that place its run folder, the metric to optimise and its direction, the metrics a
report ranks by) and the composition root hands the profiles in: one to
:class:`~finetune_kit.experiments.sweep.config.SweepConfig`, all of them (in order of
preference) to the helpers below, whose results go to ``analyze``'s defaults,
:func:`~finetune_kit.experiments.results.load_runs` and
:func:`~finetune_kit.experiments.analysis.resolve_mode`.

Example (what a task module holds; the names are made up)::

    DENOISE = TaskProfile(name="denoise", command=("denoise", "train"), output_flag="--output_dir",
                          name_flag="--name", metric="val_psnr", mode="max")
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping

from finetune_kit.experiments.metric_names import epoch_key

__all__ = ["TaskProfile", "curve_candidates", "metric_candidates", "metric_directions", "metric_renames", "profiles_by_name",
           "select_profile"]

_MODES = ("max", "min")


@dataclass(frozen=True)
class TaskProfile:
    """A task as the sweep and the analysis see it. Pure data: building one imports nothing.

    Attributes:
        name: what ``--task`` names (unique among the profiles handed in).
        command: the task's sub-command, the arguments after the program (e.g.
            ``("train",)``); may be empty when the program is the task itself.
        output_flag: the option naming the parent folder of the run folder (e.g. ``--output_dir``).
        name_flag: the option naming the run (the run folder's name or prefix).
        metric: the default objective of a sweep, a key the task writes to every
            ``metrics.jsonl`` record (pruning watches it) and to ``metrics.json``.
        mode: ``"max"`` or ``"min"``: the direction of ``metric``.
        rank_metrics: metrics ``analyze`` tries first, in order, when given no ``--metric``
            (default: ``(metric,)``).
        fallback_metrics: metrics ``analyze`` tries after every task's ``rank_metrics``
            (e.g. a quality score for runs without the usual cost). Default none.
        metric_modes: the direction of every other metric the task writes, ``{name or fnmatch
            pattern: "max" | "min"}`` (``{"val_psnr": "max", "*rd_s[0-9]*": "min"}``; see
            :func:`~finetune_kit.experiments.metric_names.metric_mode`). The core guesses no
            direction from a name: an undeclared metric gets no ``best.*`` column, and
            ``analyze``/``sweep`` ask for ``--mode``. Default none.
        metric_renames: older names of this task's metrics -> today's (``{"val_loss": "val_rd"}``), so
            ``analyze`` reads run folders written by earlier versions in the same columns
            (:func:`metric_renames`); applied only to runs whose ``config.json`` holds every key of
            ``config_keys``. Default none.
        config_keys: ``config.json`` keys that mark this task's runs (``("lmbda",)``), for
            ``metric_renames``. Default none.
        description: one line for help texts. Default empty.

    Raises:
        ValueError: an empty name or metric, a mode other than max/min (also in
            ``metric_modes``), or a flag that does not start with ``-``.
    """

    name: str
    command: tuple[str, ...]
    output_flag: str
    name_flag: str
    metric: str
    mode: str
    rank_metrics: tuple[str, ...] = ()
    fallback_metrics: tuple[str, ...] = ()
    metric_modes: Mapping[str, str] = field(default_factory=dict)
    metric_renames: Mapping[str, str] = field(default_factory=dict)
    config_keys: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.metric:
            raise ValueError(f"task profile {self.name!r}: name and metric must not be empty")
        for flag in (self.output_flag, self.name_flag):
            if not flag.startswith("-"):
                raise ValueError(f"task profile {self.name!r}: flag {flag!r} must start with '-'")
        bad = {k: v for k, v in {self.metric: self.mode, **self.metric_modes}.items() if v not in _MODES}
        if bad:
            raise ValueError(f"task profile {self.name!r}: modes {bad}: use 'max' or 'min'")
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "rank_metrics", tuple(self.rank_metrics) or (self.metric,))
        object.__setattr__(self, "fallback_metrics", tuple(self.fallback_metrics))
        object.__setattr__(self, "metric_modes", MappingProxyType(dict(self.metric_modes)))

    @property
    def run_flags(self) -> tuple[str, str]:
        """``(output_flag, name_flag)``."""
        return self.output_flag, self.name_flag

    def directions(self) -> dict[str, str]:
        """``{metric: mode, **metric_modes}``: every direction this profile states."""
        return {self.metric: self.mode, **self.metric_modes}


def profiles_by_name(*profiles: TaskProfile) -> dict[str, TaskProfile]:
    """The profiles keyed by name, in the order given (the order of preference of the helpers below).

    Raises:
        ValueError: two profiles share a name.
    """
    out: dict[str, TaskProfile] = {}
    for p in profiles:
        if p.name in out:
            raise ValueError(f"two task profiles are named {p.name!r}")
        out[p.name] = p
    return out


def select_profile(profiles: Mapping[str, TaskProfile], name: str) -> TaskProfile:
    """The profile called ``name``.

    Raises:
        ValueError: no such profile; the message lists the names there are.
    """
    try:
        return profiles[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}: use one of {', '.join(profiles) or '(none registered)'}") from None


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def metric_candidates(profiles: Iterable[TaskProfile]) -> tuple[str, ...]:
    """Metrics to try, in order, when a report is given none: every profile's
    ``rank_metrics`` (profiles in the order given), then every profile's ``fallback_metrics``;
    each name once."""
    profiles = list(profiles)
    return _unique([m for p in profiles for m in p.rank_metrics] + [m for p in profiles for m in p.fallback_metrics])


def curve_candidates(profiles: Iterable[TaskProfile]) -> tuple[str, ...]:
    """Per-epoch keys worth drawing as curves: each profile's objective (``metric``) as its
    ``metrics.jsonl`` key (:func:`~finetune_kit.experiments.metric_names.epoch_key`), in order, each once."""
    return _unique(epoch_key(p.metric) for p in profiles)


def metric_renames(profiles: Iterable[TaskProfile]) -> list[tuple[tuple[str, ...], dict[str, str]]]:
    """``[(config keys, {old: new}), ...]``: the metric renames each profile declares
    (:attr:`TaskProfile.metric_renames`) with the ``config.json`` keys that mark its runs, for
    :func:`~finetune_kit.experiments.results.load_runs`.

    Raises:
        ValueError: a profile renames metrics but names no ``config_keys`` (the renames would reach
            every task's runs).
    """
    out = []
    for p in profiles:
        if p.metric_renames:
            if not p.config_keys:
                raise ValueError(f"task profile {p.name!r} renames metrics but names no config_keys marking its runs")
            out.append((tuple(p.config_keys), dict(p.metric_renames)))
    return out


def metric_directions(profiles: Iterable[TaskProfile]) -> dict[str, str]:
    """Every direction the profiles state (:meth:`TaskProfile.directions`), merged.

    Raises:
        ValueError: two profiles give one metric opposite directions.
    """
    out: dict[str, str] = {}
    for p in profiles:
        for name, mode in p.directions().items():
            if out.setdefault(name, mode) != mode:
                raise ValueError(f"task profiles disagree on the direction of {name!r} ({out[name]} and {mode})")
    return out
