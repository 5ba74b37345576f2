"""CLI commands of the analysis task: ``finetune-kit analyze`` and ``finetune-kit sweep``.

Thin: the options are generated from the config models of
:mod:`finetune_kit.tasks.experiments_config` (:class:`AnalyzeConfig`, :class:`SweepCommandConfig`)
by the adapter (:func:`~finetune_kit.tasks.cli_options.config_command`); ``analyze`` calls
:func:`finetune_kit.experiments.analyze.analyze_runs`, ``sweep`` builds a
:class:`~finetune_kit.experiments.sweep.config.SweepConfig` and calls
:func:`~finetune_kit.experiments.sweep.runner.run_sweep` (both imported inside the commands so
``--help`` stays fast).

Part of the composition root: the tasks' profiles (:class:`~finetune_kit.experiments.profiles.TaskProfile`,
each defined in its task) are gathered in :data:`PROFILES` and handed to the core.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Tuple

import typer
from pydantic import ValidationError

from finetune_kit.experiments.profiles import (curve_candidates, metric_candidates, metric_directions, metric_renames,
                                               select_profile)
from finetune_kit.tasks.classification.profile import CLASSIFICATION
from finetune_kit.tasks.classification.sweep_notes import ignored_lr_note
from finetune_kit.tasks.cli_errors import fail
from finetune_kit.tasks.cli_options import config_command, deep_merge, nest
from finetune_kit.tasks.experiments_config import DEFAULT_TASK, PROFILES, AnalyzeConfig, SweepCommandConfig

__all__ = ["PROFILES", "PROGRAM", "DEFAULT_TASK", "DEFAULT_METRIC_CANDIDATES", "CURVE_CANDIDATES",
           "METRIC_DIRECTIONS", "analyze_cmd", "sweep_cmd", "register"]

#: The program a sweep's trials run (``python -m finetune_kit.tasks.cli``), followed by a profile's command.
PROGRAM = (sys.executable, "-m", "finetune_kit.tasks.cli")
#: Metrics tried, in order, when ``analyze`` is given no ``--metric``: every task's own
#: metrics, then the fallbacks (PSNR for compression runs without an R-D cost, e.g. evaluations).
DEFAULT_METRIC_CANDIDATES = metric_candidates(PROFILES.values())
#: Per-epoch keys drawn as curves when the metric has none of its own (each task's objective).
CURVE_CANDIDATES = curve_candidates(PROFILES.values())
#: Metric directions declared by the tasks (the only source of a metric's direction).
METRIC_DIRECTIONS = metric_directions(PROFILES.values())
METRIC_RENAMES = metric_renames(PROFILES.values())
#: keys of a sweep's space file that are not command options
_SPACE_KEYS = ("params", "fixed", "args")


def _validated(model, values: dict):
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        fail(exc)


def analyze(values: dict, runs_dir: Path = typer.Argument(..., metavar="RUNS_DIR", help="Folder of run folders "
                                                                      "(e.g. runs/ or a sweep folder).")) -> None:
    """Rank runs, draw heatmaps and comparisons, recommend settings; write a markdown report.

    A sweep folder's Optuna study joins the report: trial states, parameter importances and
    Optuna's figures (history, importances, parallel coordinates, contour)."""
    # start-up time: pandas, matplotlib and optuna load only when the command runs
    from finetune_kit.experiments.analyze import AnalysisError, analyze_runs

    cfg = _validated(AnalyzeConfig, values)
    try:
        result = analyze_runs(runs_dir, metric=cfg.metric, mode=cfg.mode, group_by=cfg.group_by, top_k=cfg.top_k,
                              heatmap=cfg.heatmap, compare_param=cfg.compare_param, also=cfg.also, where=cfg.where,
                              curves=cfg.curves, output=cfg.output, stale_after_min=cfg.stale_after,
                              storage=cfg.storage, study_name=cfg.study, metric_candidates=DEFAULT_METRIC_CANDIDATES,
                              curve_candidates=CURVE_CANDIDATES, metric_modes=METRIC_DIRECTIONS, metric_renames=METRIC_RENAMES)
    except AnalysisError as exc:
        fail(exc)
    out = result.output
    typer.echo(result.report)
    typer.echo(f"wrote {out / 'report.md'}, {out / 'runs.csv'} and {len(result.figures)} figure(s) to {out}")


def sweep(ctx: typer.Context, values: dict) -> None:
    """Hyperparameter search over a task on Optuna; each trial is a normal run. Fixed task options go after `--`.

    Example: finetune-kit sweep --task classification --method tpe --trials 12 --workers 2
    --param ft_strategy=linear,full --param learning_rate=loguniform(1e-4,3e-3) --output_dir sweeps/s1
    -- --data images/ --num_epochs 2
    """
    # start-up time: optuna loads only when the command runs
    from finetune_kit.experiments.sweep.runner import SweepConfig, SweepError, run_sweep
    from finetune_kit.experiments.sweep.space import SearchSpace, load_space_file, parse_param, to_flags

    try:
        space_file = (values.get("search") or {}).get("space")
        spec = load_space_file(space_file) if space_file else {}
        settings = {k: v for k, v in spec.items() if k not in _SPACE_KEYS}  # typed options win over the file
        cfg = SweepCommandConfig.model_validate(deep_merge(nest(SweepCommandConfig, settings), values))
        search, pruning, execution = cfg.search, cfg.pruning, cfg.execution
        params = list(spec["params"].params) if spec else []
        for text in search.param:
            p = parse_param(text)
            params = [q for q in params if q.name != p.name] + [p]
        profile = select_profile(PROFILES, search.task)
        task_cli = _task_command(ctx, profile.command)
        fixed = to_flags(spec.get("fixed") or {}, task_cli) + [str(a) for a in spec.get("args") or []]
        sweep_cfg = SweepConfig(
            profile=profile, space=SearchSpace(params), output_dir=search.output_dir, task_cli=task_cli,
            program=list(PROGRAM), method=search.method, trials=search.trials, workers=execution.workers,
            storage=search.storage, study=search.study, metric=search.metric, mode=search.mode,
            fixed_args=fixed + list(ctx.args), seed=search.seed, pruner=pruning.pruner,
            prune_warmup=pruning.prune_warmup, prune_min_trials=pruning.prune_min_trials,
            prune_metric=pruning.prune_metric, heartbeat_s=execution.heartbeat, grace_s=execution.grace,
            trial_timeout_s=execution.trial_timeout * 60 if execution.trial_timeout else None)
    except (SweepError, ValidationError, ValueError, FileNotFoundError) as exc:
        fail(exc)
    if profile.name == CLASSIFICATION.name and (note := ignored_lr_note(
            {p.name: (p.choices if p.kind == "choice" else None) for p in params}, sweep_cfg.fixed_args)):
        typer.echo(note, err=True)
    try:
        trials_done = run_sweep(sweep_cfg, echo=typer.echo)
    except SweepError as exc:
        fail(exc)
    except KeyboardInterrupt:
        typer.echo("sweep interrupted; the study keeps every finished trial. Re-run the same command to resume.",
                   err=True)
        raise typer.Exit(130)
    _print_trials(trials_done, sweep_cfg)


#: the generated commands (options from the config fields); :func:`register` adds them to an app
analyze_cmd = config_command(None, "analyze", AnalyzeConfig)(analyze)
sweep_cmd = config_command(None, "sweep", SweepCommandConfig)(sweep)


def _task_command(ctx: typer.Context, command: Tuple[str, ...]):
    """The click command a trial runs (``command``: a profile's, e.g. ``("compress", "finetune")``),
    found in this CLI; None when this CLI has no such command (options are then not checked)."""
    cmd = ctx.find_root().command
    for name in command:
        cmd = cmd.get_command(ctx, name) if hasattr(cmd, "get_command") else None
        if cmd is None:
            return None
    return cmd if command else None


def _print_trials(trials: list, cfg) -> None:
    from rich.console import Console
    from rich.table import Table

    names = cfg.space.names
    table = Table("trial", "state", *names, cfg.metric, "s", title=f"study {cfg.study} ({cfg.output_dir})")
    for t in trials:
        vals = [f"{v:.4g}" if isinstance(v := t.params.get(n), float) else str(v) for n in names]
        secs = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start \
            else None
        table.add_row(t.user_attrs.get("tag", str(t.number)), t.state.name.lower(), *vals,
                      f"{t.value:.4g}" if t.value is not None and t.state.name == "COMPLETE" else "-",
                      f"{secs:.0f}" if secs is not None else "-")
    Console().print(table)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    if done:
        best = (max if cfg.mode == "max" else min)(done, key=lambda t: t.value)
        typer.echo(f"best: {best.user_attrs.get('tag')} {cfg.metric}={best.value:.4g} ({best.params}) "
                   f"in {best.user_attrs.get('run_dir')}")
    typer.echo(f"analyse with: finetune-kit analyze {cfg.output_dir} --metric {cfg.metric}"
               + (f" --heatmap {names[0]} {names[1]}" if len(names) >= 2 else ""))


def register(app: typer.Typer) -> None:
    """Add ``analyze`` and ``sweep`` to the top-level app."""
    app.command("analyze")(analyze_cmd)
    app.command("sweep", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(sweep_cmd)
