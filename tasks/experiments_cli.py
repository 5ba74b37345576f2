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
    metric: Optional[str] = typer.Option(None, "--metric", "-m", help="Metric to rank by: a name (test_auroc, "
                                         "val_auroc, bpp) or a column (final.test_auroc, best.val_auroc). "
                                         f"Default: first present of {', '.join(DEFAULT_METRIC_CANDIDATES)}."),
    mode: Optional[str] = typer.Option(None, "--mode", help="max or min (default: from the metric name)."),
    group_by: Optional[str] = typer.Option(None, "--group-by", "-g", help="Parameter to group by (e.g. ft_strategy, lambda)."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Runs listed per group."),
    heatmap: Optional[Tuple[str, str]] = typer.Option(None, "--heatmap", help="PARAM_X PARAM_Y: heatmap of the "
                                                      "metric over two parameters (one per group with --group-by)."),
    compare_param: Optional[str] = typer.Option(None, "--compare-param", help="Plot the metric against this "
                                                "parameter, one line per group."),
    also: List[str] = typer.Option([], "--also", help="Other metrics shown beside the ranked one in the top-k "
                                   "tables (e.g. test_auroc, test_ece_calibrated). Repeatable."),
    where: List[str] = typer.Option([], "--where", help="Only runs with PARAM=VALUE (e.g. lambda=0.0018). Repeatable."),
    curves: Optional[str] = typer.Option(None, "--curves", help="Per-epoch key to draw for every run (default: "
                                         "the metric's per-epoch key, e.g. val_auroc, when logged)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for report.md, runs.csv and the "
                                          "figures (default RUNS_DIR/analysis)."),
    stale_after_min: float = typer.Option(30.0, "--stale-after", help="Minutes without writes after which a "
                                          "'running' run whose process cannot be checked is reported crashed."),
) -> None:
    """Rank runs, draw heatmaps and comparisons, recommend settings; write a markdown report."""
    from finetune_kit.experiments import analysis
    from finetune_kit.experiments.plots import plot_comparison, plot_curves, plot_heatmap
    from finetune_kit.experiments.results import epoch_key, load_runs

    try:
        results = load_runs(runs_dir, stale_after_s=stale_after_min * 60, metric_modes=METRIC_DIRECTIONS)
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
    (out / "report.md").write_text(report)
    typer.echo(report)
    typer.echo(f"wrote {out / 'report.md'}, {out / 'runs.csv'} and {len(figures)} figure(s) to {out}")


def sweep_cmd(
    ctx: typer.Context,
    task: Optional[str] = typer.Option(None, "--task", help=f"{' | '.join(PROFILES)} (default {DEFAULT_TASK})."),
    method: Optional[str] = typer.Option(None, "--method", help="grid | random | tpe (tpe needs the optional extra: pip install 'finetune-kit\\[tune]'). "
                                         "Default grid."),
    param: List[str] = typer.Option([], "--param", "-p", help="NAME=v1,v2 or NAME=loguniform:LOW:HIGH "
                                    "(uniform:, int:). Repeatable; NAME is the task option without dashes."),
    space: Optional[Path] = typer.Option(None, "--space", help="YAML/JSON search space (and sweep settings)."),
    trials: Optional[int] = typer.Option(None, "--trials", "-n", min=1, help="Number of trials (grid: cap)."),
    parallel: Optional[int] = typer.Option(None, "--parallel", "-j", min=1, help="Trials running at once (default 1)."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Objective (default " + ", ".join(
                                         f"{p.metric} for {p.name}" for p in PROFILES.values()) + ")."),
    mode: Optional[str] = typer.Option(None, "--mode", help="max or min (default: from the metric name)."),
    output_dir: Path = typer.Option(Path("sweeps/sweep"), "--output_dir", "--output-dir",
                                    help="Sweep folder; re-run the same command on it to resume."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the random/TPE sampler (default 0)."),
    pruning: Optional[str] = typer.Option(None, "--pruning", help="median | none (default median)."),
    prune_warmup: int = typer.Option(1, "--prune-warmup", min=0, help="First epoch at which pruning may stop a trial."),
    prune_min_trials: int = typer.Option(3, "--prune-min-trials", min=1, help="Completed trials needed before pruning."),
    prune_metric: Optional[str] = typer.Option(None, "--prune-metric", help="Per-epoch metrics.jsonl key pruning "
                                               "watches (default: the objective's validation key, test_auroc -> "
                                               "val_auroc)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Re-run trials that failed."),
    trial_timeout_min: Optional[float] = typer.Option(None, "--trial-timeout", help="Fail a trial running longer "
                                                      "than this many minutes."),
) -> None:
    """Hyperparameter search over a task; each trial is a normal run. Fixed task options go after `--`.

    Example: finetune-kit sweep --task classification --param ft_strategy=linear,full
    --param learning_rate=1e-4,1e-3 --output_dir sweeps/s1 -- --data images/ --num_epochs 2
    """
    from finetune_kit.experiments.sweep.runner import SweepConfig, SweepError, run_sweep
    from finetune_kit.experiments.sweep.space import SearchSpace, load_space_file, parse_param, to_flags

    try:
        spec = load_space_file(space) if space else {}
        params = list(spec["params"].params) if spec else []
        given = {p.name for p in params}
        for text in param:
            p = parse_param(text)
            params = [q for q in params if q.name != p.name] + [p] if p.name in given else params + [p]
        profile = select_profile(PROFILES, task or spec.get("task", DEFAULT_TASK))
        task_cli = _task_command(ctx, profile.command)
        fixed = to_flags(spec.get("fixed") or {}, task_cli) + [str(a) for a in spec.get("args") or []]
        cfg = SweepConfig(
            profile=profile, space=SearchSpace(params), output_dir=output_dir, task_cli=task_cli, program=list(PROGRAM),
            method=method or spec.get("method", "grid"), trials=trials or spec.get("trials"),
            parallel=parallel or spec.get("parallel", 1), metric=metric or spec.get("metric"),
            mode=mode or spec.get("mode"), fixed_args=fixed + list(ctx.args), seed=seed if seed is not None else
            spec.get("seed", 0), pruning=pruning or spec.get("pruning", "median"), prune_warmup=prune_warmup,
            prune_min_trials=prune_min_trials, prune_metric=prune_metric, retry_failed=retry_failed,
            trial_timeout_s=trial_timeout_min * 60 if trial_timeout_min else None)
    except (SweepError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    try:
        state = run_sweep(cfg, echo=typer.echo)
    except SweepError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        typer.echo(f"sweep interrupted; state saved in {output_dir}. Re-run the same command to resume.", err=True)
        raise typer.Exit(130)
    _print_trials(state, cfg)


def _task_command(ctx: typer.Context, command: Tuple[str, ...]):
    """The click command a trial runs (``command``: a profile's, e.g. ``("compress", "finetune")``),
    found in this CLI; None when this CLI has no such command (options are then not checked)."""
    cmd = ctx.find_root().command
    for name in command:
        cmd = cmd.get_command(ctx, name) if hasattr(cmd, "get_command") else None
        if cmd is None:
            return None
    return cmd if command else None


def _print_trials(state: dict, cfg) -> None:
    from rich.console import Console
    from rich.table import Table

    trials = state["trials"]
    names = cfg.space.names
    table = Table("trial", "status", *names, cfg.metric, "s", title=f"sweep {cfg.output_dir}")
    for t in trials:
        vals = [f"{t['params'].get(n):.4g}" if isinstance((t.get("params") or {}).get(n), float)
                else str((t.get("params") or {}).get(n)) for n in names]
        table.add_row(t["tag"], t["status"], *vals, f"{t['value']:.4g}" if t["value"] is not None else "-",
                      f"{t['seconds']:.0f}" if t.get("seconds") else "-")
    Console().print(table)
    done = [t for t in trials if t["value"] is not None]
    if done:
        best = (max if cfg.mode == "max" else min)(done, key=lambda t: t["value"])
        typer.echo(f"best: {best['tag']} {cfg.metric}={best['value']:.4g} ({best['params']}) in {best['run_dir']}")
    typer.echo(f"analyse with: finetune-kit analyze {cfg.output_dir} --metric {cfg.metric}"
               + (f" --heatmap {names[0]} {names[1]}" if len(names) >= 2 else ""))


def register(app: typer.Typer) -> None:
    """Add ``analyze`` and ``sweep`` to the top-level app."""
    app.command("analyze")(analyze_cmd)
    app.command("sweep", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(sweep_cmd)
