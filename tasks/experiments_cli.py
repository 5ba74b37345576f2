"""CLI commands of the analysis task: ``finetune-kit analyze`` and ``finetune-kit sweep``.

Thin: options are parsed here, the work is in :mod:`finetune_kit.experiments.results`,
:mod:`finetune_kit.experiments.analysis`, :mod:`finetune_kit.experiments.plots` and :mod:`finetune_kit.experiments.sweep.runner`
(imported inside the commands so ``--help`` stays fast).

Part of the composition root: the tasks' profiles (:class:`~finetune_kit.experiments.profiles.TaskProfile`,
each defined in its task) are gathered here in :data:`PROFILES` and handed to the core.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import typer

from finetune_kit.tasks.cli_options import option

from finetune_kit.experiments.profiles import (curve_candidates, metric_candidates, metric_directions, profiles_by_name,
                                               select_profile)
from finetune_kit.tasks.classification.profile import CLASSIFICATION
from finetune_kit.tasks.compression.profile import PROFILES as COMPRESSION_PROFILES

#: The tasks ``sweep --task`` can run and ``analyze`` knows, in order of preference for
#: ``analyze``'s defaults (classification's AUROC, then the compression R-D costs).
PROFILES = profiles_by_name(CLASSIFICATION, *COMPRESSION_PROFILES)
#: The program a sweep's trials run (``python -m finetune_kit.tasks.cli``), followed by a profile's command.
PROGRAM = (sys.executable, "-m", "finetune_kit.tasks.cli")
#: The task a sweep runs without ``--task`` (or ``task:`` in its space file).
DEFAULT_TASK = CLASSIFICATION.name
#: Metrics tried, in order, when ``analyze`` is given no ``--metric``: every task's own
#: metrics, then the fallbacks (PSNR for compression runs without an R-D cost, e.g. evaluations).
DEFAULT_METRIC_CANDIDATES = metric_candidates(PROFILES.values())
#: Per-epoch keys drawn as curves when the metric has none of its own (each task's objective).
CURVE_CANDIDATES = curve_candidates(PROFILES.values())
#: Metric directions stated by the tasks (over what a metric's name says).
METRIC_DIRECTIONS = metric_directions(PROFILES.values())


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-")


def _apply_where(results, where: List[str]):
    """Keep the runs matching every ``KEY=VALUE`` (numbers compared with a relative tolerance)."""
    import numpy as np

    from finetune_kit.experiments.sweep.space import parse_value

    df = results.df
    for cond in where:
        if "=" not in cond:
            raise ValueError(f"--where {cond!r}: expected PARAM=VALUE, e.g. --where lambda=0.0018")
        key, _, raw = cond.partition("=")
        col = results.resolve_param(key.strip())
        value = parse_value(raw)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            num = df[col].apply(lambda v: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan)
            mask = np.isclose(num.to_numpy(dtype=float), float(value), rtol=1e-6, atol=0)
        else:
            mask = df[col].astype(str) == str(value)
        if not mask.any():
            values = ", ".join(sorted({str(v) for v in df[col].dropna()}))
            raise ValueError(f"--where {cond}: no run has {col}={raw}; values present: {values}")
        df = df[mask]
    results.df = df
    results.incomplete = [r for r in results.incomplete if r.run in set(df["run"])]
    return results


def analyze_cmd(
    runs_dir: Path = typer.Argument(..., help="Folder of run folders (e.g. runs/ or a sweep folder)."),
    metric: Optional[str] = option(None, "metric", "-m", help="Metric to rank by: a name (test_auroc, "
                                         "val_auroc, bpp) or a column (final.test_auroc, best.val_auroc). "
                                         f"Default: first present of {', '.join(DEFAULT_METRIC_CANDIDATES)}."),
    mode: Optional[str] = option(None, "mode", help="max or min (default: from the metric name)."),
    group_by: Optional[str] = option(None, "group_by", "-g", help="Parameter to group by (e.g. ft_strategy, lambda)."),
    top_k: int = option(5, "top_k", "-k", min=1, help="Runs listed per group."),
    heatmap: Optional[Tuple[str, str]] = option(None, "heatmap", help="PARAM_X PARAM_Y: heatmap of the "
                                                      "metric over two parameters (one per group with --group-by)."),
    compare_param: Optional[str] = option(None, "compare_param", help="Plot the metric against this "
                                                "parameter, one line per group."),
    also: List[str] = option([], "also", help="Other metrics shown beside the ranked one in the top-k "
                                   "tables (e.g. test_auroc, test_ece_calibrated). Repeatable."),
    where: List[str] = option([], "where", help="Only runs with PARAM=VALUE (e.g. lambda=0.0018). Repeatable."),
    curves: Optional[str] = option(None, "curves", help="Per-epoch key to draw for every run (default: "
                                         "the metric's per-epoch key, e.g. val_auroc, when logged)."),
    output: Optional[Path] = option(None, "output", "-o", help="Folder for report.md, runs.csv and the "
                                          "figures (default RUNS_DIR/analysis)."),
    stale_after_min: float = option(30.0, "stale_after", help="Minutes without writes after which a "
                                          "'running' run whose process cannot be checked is reported crashed."),
    storage: Optional[str] = option(None, "storage", help="Optuna storage of the sweep's study (default "
                                          "RUNS_DIR/optuna.db when present)."),
    study_name: Optional[str] = option(None, "study", help="Study to read (default: the only one, or the "
                                             "one named like RUNS_DIR)."),
) -> None:
    """Rank runs, draw heatmaps and comparisons, recommend settings; write a markdown report.

    A sweep folder's Optuna study joins the report: trial states, parameter importances and
    Optuna's figures (history, importances, parallel coordinates, contour)."""
    from finetune_kit.experiments import analysis
    from finetune_kit.experiments.plots import plot_comparison, plot_curves, plot_heatmap
    from finetune_kit.experiments.results import epoch_key, load_runs
    from finetune_kit.experiments.study_report import find_study, join_trials, study_figures, study_section

    try:
        study = find_study(runs_dir, storage, study_name)
        results = load_runs(runs_dir, stale_after_s=stale_after_min * 60, metric_modes=METRIC_DIRECTIONS)
        if study is not None:
            results.df = join_trials(results.df, study)
        if where:
            results = _apply_where(results, where)
        if metric is None:
            for cand in DEFAULT_METRIC_CANDIDATES:
                try:
                    metric_col = results.resolve_metric(cand)
                    break
                except KeyError:
                    continue
            else:
                raise KeyError(f"no default metric found in {runs_dir}: pass --metric; available metric columns: "
                               f"{', '.join(results.metric_columns()) or '(none)'}")
        else:
            metric_col = results.resolve_metric(metric)
        mode = analysis.resolve_mode(metric_col, mode, METRIC_DIRECTIONS)
        group_col = results.resolve_param(group_by) if group_by else None
        maps = [(results.resolve_param(heatmap[0]), results.resolve_param(heatmap[1]))] if heatmap else []
        compare_col = results.resolve_param(compare_param) if compare_param else None
        extra = [results.resolve_metric(a) for a in also]
    except (FileNotFoundError, KeyError, ValueError) as exc:
        _fail(str(exc.args[0]) if exc.args else str(exc))

    out = output or (runs_dir / "analysis")
    out.mkdir(parents=True, exist_ok=True)
    results.df.to_csv(out / "runs.csv", index=False)
    figures: list[str] = []
    short = analysis.short_name
    for x_col, y_col in maps:
        groups = [None]
        if group_col and group_col not in (x_col, y_col):
            done = results.completed
            groups = analysis.sorted_values(done[group_col].dropna().unique())
        for g in groups:
            part = results.df if g is None else results.df[results.df[group_col] == g]
            values, counts = analysis.heatmap_data(part, metric_col, x_col, y_col)
            if values.empty:
                continue
            suffix = f"_{short(group_col)}={analysis.fmt(g)}" if g is not None else ""
            name = _slug(f"heatmap_{metric_col}_{short(y_col)}_x_{short(x_col)}{suffix}") + ".png"
            title = f"{metric_col} ({'higher' if mode == 'max' else 'lower'} is better)" + \
                (f", {short(group_col)}={analysis.fmt(g)}" if g is not None else "")
            plot_heatmap(values, out / name, counts=counts, metric=metric_col, mode=mode, title=title,
                         x_label=short(x_col), y_label=short(y_col))
            figures.append(name)
    if compare_col:
        gcol = group_col if group_col != compare_col else None
        comp = analysis.comparison_data(results.df, metric_col, compare_col, gcol)
        if not comp.empty:
            name = _slug(f"compare_{metric_col}_vs_{short(compare_col)}") + ".png"
            plot_comparison(comp, compare_col, out / name, group_col=gcol, metric=metric_col, mode=mode)
            figures.append(name)
    curve_key = curves
    if curve_key is None:
        for cand in (epoch_key(metric_col), *CURVE_CANDIDATES):
            if f"last.{cand}" in results.df.columns:
                curve_key = cand
                break
    if curve_key:
        name = _slug(f"curves_{curve_key}") + ".png"
        params = [c for c in results.param_columns() if c != group_col][:3]
        if plot_curves(results.df, curve_key, out / name, group_col=group_col, label_cols=params):
            figures.append(name)
    report = analysis.build_report(results, metric_col, mode, group_col=group_col, k=top_k, heatmaps=maps,
                                   compare_col=compare_col, figures=figures, extra=extra)
    if study is not None:
        drawn = study_figures(study, out)
        figures += drawn
        report = report.rstrip("\n") + "\n\n" + study_section(study, drawn)
    (out / "report.md").write_text(report)
    typer.echo(report)
    typer.echo(f"wrote {out / 'report.md'}, {out / 'runs.csv'} and {len(figures)} figure(s) to {out}")


def sweep_cmd(
    ctx: typer.Context,
    task: Optional[str] = option(None, "task", help=f"{' | '.join(PROFILES)} (default {DEFAULT_TASK})."),
    method: Optional[str] = option(None, "method", help="Optuna sampler: grid | random | tpe | cmaes | "
                                         "nsga2 (default grid)."),
    param: List[str] = option([], "param", "-p", help="NAME=v1,v2 or NAME=loguniform(LOW,HIGH) "
                                    "(uniform(), int(), logint(); or KIND:LOW:HIGH). Repeatable; NAME is the task "
                                    "option without dashes."),
    space: Optional[Path] = option(None, "space", "--config", help="YAML/JSON search space and sweep settings "
                                   "(the sweep's config file); options typed on the command line override it."),
    trials: Optional[int] = option(None, "trials", "-n", min=1, help="Trials of the study, all workers "
                                         "together (grid: cap; default all combinations, else 10)."),
    workers: Optional[int] = option(None, "workers", "--parallel", "-j", min=1,
                                          help="Trial processes this command runs at once (default 1)."),
    storage: Optional[str] = option(None, "storage", help="Optuna storage URL, e.g. postgresql+psycopg://"
                                          "user@host/db for several machines (default sqlite in OUTPUT_DIR)."),
    study: Optional[str] = option(None, "study", help="Study name: join or resume this study (default "
                                        "the sweep folder's name)."),
    metric: Optional[str] = option(None, "metric", help="Objective (default " + ", ".join(
                                         f"{p.metric} for {p.name}" for p in PROFILES.values()) + ")."),
    mode: Optional[str] = option(None, "mode", help="max or min (default: from the metric name)."),
    output_dir: Path = option(Path("sweeps/sweep"), "output_dir",
                                    help="Sweep folder; re-run the same command on it to resume."),
    seed: Optional[int] = option(None, "seed", help="Seed of the sampler (default 0)."),
    pruner: Optional[str] = option(None, "pruner", "--pruning", help="median | sha | hyperband | none "
                                         "(default median)."),
    prune_warmup: int = option(1, "prune_warmup", min=0, help="Epochs every trial runs before pruning may stop it (records' epochs count from 1; median: n_warmup_steps, sha/hyperband: min_resource)."),
    prune_min_trials: int = option(3, "prune_min_trials", min=1, help="Finished trials the median rule "
                                         "needs before pruning."),
    prune_metric: Optional[str] = option(None, "prune_metric", help="Per-epoch metrics.jsonl key reported "
                                               "to the pruner (default: the objective's validation key, test_auroc "
                                               "-> val_auroc)."),
    heartbeat: int = option(10, "heartbeat", min=1, help="Seconds between heartbeats of a running trial."),
    grace: Optional[int] = option(None, "grace", min=1, help="Seconds without a heartbeat after which a "
                                        "trial is failed and re-queued once (default 3 heartbeats)."),
    trial_timeout_min: Optional[float] = option(None, "trial_timeout", help="Fail a trial running longer "
                                                      "than this many minutes."),
) -> None:
    """Hyperparameter search over a task on Optuna; each trial is a normal run. Fixed task options go after `--`.

    Example: finetune-kit sweep --task classification --method tpe --trials 12 --workers 2
    --param ft_strategy=linear,full --param learning_rate=loguniform(1e-4,3e-3) --output_dir sweeps/s1
    -- --data images/ --num_epochs 2
    """
    from finetune_kit.experiments.sweep.runner import SweepConfig, SweepError, run_sweep
    from finetune_kit.experiments.sweep.space import SearchSpace, load_space_file, parse_param, to_flags

    try:
        spec = load_space_file(space) if space else {}
        params = list(spec["params"].params) if spec else []
        for text in param:
            p = parse_param(text)
            params = [q for q in params if q.name != p.name] + [p]
        profile = select_profile(PROFILES, task or spec.get("task", DEFAULT_TASK))
        task_cli = _task_command(ctx, profile.command)
        fixed = to_flags(spec.get("fixed") or {}, task_cli) + [str(a) for a in spec.get("args") or []]
        cfg = SweepConfig(
            profile=profile, space=SearchSpace(params), output_dir=output_dir, task_cli=task_cli, program=list(PROGRAM),
            method=method or spec.get("method", "grid"), trials=trials or spec.get("trials"),
            workers=workers or spec.get("workers", spec.get("parallel", 1)), storage=storage or spec.get("storage"),
            study=study or spec.get("study"), metric=metric or spec.get("metric"), mode=mode or spec.get("mode"),
            fixed_args=fixed + list(ctx.args), seed=seed if seed is not None else spec.get("seed", 0),
            pruner=pruner or spec.get("pruner", spec.get("pruning", "median")), prune_warmup=prune_warmup,
            prune_min_trials=prune_min_trials, prune_metric=prune_metric, heartbeat_s=heartbeat, grace_s=grace,
            trial_timeout_s=trial_timeout_min * 60 if trial_timeout_min else None)
    except (SweepError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    try:
        trials_done = run_sweep(cfg, echo=typer.echo)
    except SweepError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        typer.echo(f"sweep interrupted; the study keeps every finished trial. Re-run the same command to resume.",
                   err=True)
        raise typer.Exit(130)
    _print_trials(trials_done, cfg)


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
