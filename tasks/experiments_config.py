"""The options of ``finetune-kit analyze`` and ``finetune-kit sweep``, declared once as config fields.

:class:`AnalyzeConfig` and :class:`SweepCommandConfig` are the only declaration of these options:
:mod:`finetune_kit.tasks.experiments_cli` generates the typer options from their fields
(:func:`~finetune_kit.tasks.cli_options.config_command`). The tasks' profiles (what ``--task``
names, the default metrics) come from the composition root's :data:`PROFILES`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from finetune_kit.experiments.profiles import metric_candidates, profiles_by_name
from finetune_kit.experiments.sweep.config import METHODS, PRUNERS
from finetune_kit.tasks.classification.profile import CLASSIFICATION
from finetune_kit.tasks.compression.profile import PROFILES as COMPRESSION_PROFILES
from finetune_kit.tasks.config_base import ConfigSection, option_field

__all__ = ["PROFILES", "DEFAULT_TASK", "AnalyzeConfig", "SweepSearch", "SweepPruning", "SweepExecution",
           "SweepCommandConfig"]

#: The tasks ``sweep --task`` can run and ``analyze`` knows, in order of preference for
#: ``analyze``'s defaults (classification's AUROC, then the compression R-D costs).
PROFILES = profiles_by_name(CLASSIFICATION, *COMPRESSION_PROFILES)
#: The task a sweep runs without ``--task`` (or ``task:`` in its space file).
DEFAULT_TASK = CLASSIFICATION.name

Mode = Optional[Literal["max", "min"]]


class AnalyzeConfig(ConfigSection):
    """``finetune-kit analyze RUNS_DIR``: what to rank, group, draw and where to write it."""

    metric: Optional[str] = option_field(
        None, "Metric to rank by: a name (test_auroc, val_auroc, bpp) or a column (final.test_auroc, "
        f"best.val_auroc). None: the first present of {', '.join(metric_candidates(PROFILES.values()))}.",
        aliases=("-m",))
    mode: Mode = option_field(None, "max or min. None: the direction the metric's task declares.")
    group_by: Optional[str] = option_field(None, "Parameter to group by (e.g. ft_strategy, lambda).",
                                           aliases=("-g",))
    top_k: int = option_field(5, "Runs listed per group.", aliases=("-k",), ge=1)
    heatmap: Optional[tuple[str, str]] = option_field(
        None, "PARAM_X PARAM_Y: heatmap of the metric over two parameters (one per group with --group-by).",
        metavar="PARAM_X PARAM_Y")
    compare_param: Optional[str] = option_field(None, "Plot the metric against this parameter, one line per group.")
    also: list[str] = option_field(default_factory=list, description="Other metrics shown beside the ranked one "
                                   "in the top-k tables (e.g. test_auroc, test_ece_calibrated). Repeatable.")
    where: list[str] = option_field(default_factory=list, description="Only runs with PARAM=VALUE (e.g. "
                                    "lambda=0.0018). Repeatable.", metavar="PARAM=VALUE")
    curves: Optional[str] = option_field(None, "Per-epoch key to draw for every run. None: the metric's "
                                         "per-epoch key (e.g. val_auroc) when logged.")
    output: Optional[Path] = option_field(None, "Folder for report.md, runs.csv and the figures. None: "
                                          "RUNS_DIR/analysis.", aliases=("-o",))
    stale_after: float = option_field(30.0, "Minutes without writes after which a 'running' run whose process "
                                      "cannot be checked is reported crashed.", ge=0)
    storage: Optional[str] = option_field(None, "Optuna storage of the sweep's study. None: RUNS_DIR/optuna.db "
                                          "when present.")
    study: Optional[str] = option_field(None, "Study to read. None: the only one, or the one named like RUNS_DIR.")


class SweepSearch(ConfigSection):
    """What is searched, how, and where the sweep folder is."""

    task: str = option_field(DEFAULT_TASK, f"The task the trials run: {' | '.join(PROFILES)}.")
    method: Literal[METHODS] = option_field("grid", "Optuna sampler.")  # type: ignore[valid-type]
    param: list[str] = option_field(
        default_factory=list, description="NAME=v1,v2 or NAME=loguniform(LOW,HIGH) (uniform(), int(), logint(); "
        "or KIND:LOW:HIGH). Repeatable; NAME is the task option without dashes.", aliases=("-p",),
        metavar="NAME=VALUES")
    space: Optional[Path] = option_field(None, "YAML/JSON search space and sweep settings (the sweep's config "
                                         "file); options typed on the command line override it.",
                                         aliases=("--config",))
    trials: Optional[int] = option_field(None, "Trials of the study, all workers together. None: grid, all "
                                         "combinations (also its cap); other methods 10.", aliases=("-n",), ge=1)
    metric: Optional[str] = option_field(None, "Objective. None: the task's (" + ", ".join(
        f"{p.metric} for {p.name}" for p in PROFILES.values()) + ").")
    mode: Mode = option_field(None, "max or min. None: the direction the task declares for the metric.")
    seed: int = option_field(0, "Seed of the sampler.")
    output_dir: Path = option_field(Path("sweeps/sweep"), "Sweep folder; re-run the same command on it to resume.")
    storage: Optional[str] = option_field(None, "Optuna storage URL, e.g. postgresql+psycopg://user@host/db for "
                                          "several machines. None: sqlite in OUTPUT_DIR.")
    study: Optional[str] = option_field(None, "Study name: join or resume this study. None: the sweep folder's "
                                        "name.")


class SweepPruning(ConfigSection):
    """When a trial is stopped early."""

    pruner: Literal[PRUNERS] = option_field("median", "Pruner.", aliases=("--pruning",))  # type: ignore[valid-type]
    prune_warmup: int = option_field(1, "Epochs every trial runs before pruning may stop it (records' epochs "
                                     "count from 1; median: n_warmup_steps, sha/hyperband: min_resource).", ge=0)
    prune_min_trials: int = option_field(3, "Finished trials the median rule needs before pruning.", ge=1)
    prune_metric: Optional[str] = option_field(None, "Per-epoch metrics.jsonl key reported to the pruner. None: "
                                               "the objective's validation key (test_auroc -> val_auroc).")


class SweepExecution(ConfigSection):
    """The trial processes of this command."""

    workers: int = option_field(1, "Trial processes this command runs at once.", aliases=("--parallel", "-j"),
                                ge=1)
    heartbeat: int = option_field(10, "Seconds between heartbeats of a running trial.", ge=1)
    grace: Optional[int] = option_field(None, "Seconds without a heartbeat after which a trial is failed and "
                                        "re-queued once. None: 3 heartbeats.", ge=1)
    trial_timeout: Optional[float] = option_field(None, "Fail a trial running longer than this many minutes.",
                                                  gt=0)


class SweepCommandConfig(ConfigSection):
    """``finetune-kit sweep``: the search, pruning and workers (the trials' own options go after ``--``)."""

    search: SweepSearch = Field(default_factory=SweepSearch, title="search")
    pruning: SweepPruning = Field(default_factory=SweepPruning, title="pruning")
    execution: SweepExecution = Field(default_factory=SweepExecution, title="execution")
