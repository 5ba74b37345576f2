"""``compare --folds K`` / ``classify --folds K``: stratified (patient-grouped) K-fold cross-validation.

Each fold (:func:`~finetune_kit.tasks.classification.folds.fold_splits`: the test fold rotates,
validation is carved from the rest) is written as ``folds/fold_I.csv`` and run as one
:func:`~finetune_kit.tasks.classification.compare.run_comparison` under ``fold_I/``; a fold whose
comparison finished is not run again when the same folder is passed back (``folder=``), so an
interrupted cross-validation loses no finished fold. The summary (:func:`summarise`) gives per
strategy the mean and standard deviation over folds and a 95 % bootstrap interval on the pooled
out-of-fold test predictions (every image is a test image exactly once) of AUROC, accuracy,
sensitivity, specificity and ECE (after calibration), plus a paired bootstrap comparison of every
strategy with the first on the same images. Written to ``cv_summary.json`` and ``cv_summary.md``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import typer

from finetune_kit.calibration import Calibrator
from finetune_kit.runs.checkpoint import atomic_write_text
from finetune_kit.runs.run_dir import RunDir, new_run_dir
from finetune_kit.tasks.classification.bootstrap import (
    METRICS,
    bootstrap_metrics,
    mean_sd,
    metric_value,
    paired_difference,
)
from finetune_kit.tasks.classification.compare import run_comparison, strategy_configs
from finetune_kit.tasks.classification.cv_classes import class_summary, class_summary_markdown
from finetune_kit.tasks.classification.data import discover
from finetune_kit.tasks.classification.folds import fold_splits, group_ids, write_fold_csv
from finetune_kit.tasks.classification.multilabel_folds import run_multilabel_cross_validation
from finetune_kit.tasks.classification.transforms import ImageCache, cache_size_for

__all__ = ["run_cross_validation", "summarise", "summary_markdown", "print_cross_validation"]


def _finished_comparison(fold_dir: Path) -> dict | None:
    for f in sorted(fold_dir.glob("compare-*/comparison.json")):
        d = json.loads(f.read_text())
        if d.get("finished"):
            return {"folder": str(f.parent), "rows": d["rows"]}
    return None


def run_cross_validation(base, strategies: Sequence[str], output_dir: str | Path, *,
                         per_strategy: Mapping[str, Mapping] | None = None, console=None, title: str = "",
                         folder: str | Path | None = None, n_boot: int = 1000) -> dict:
    """Run ``strategies`` on ``base.data.folds`` folds of ``base.data`` (grouped by ``base.data.group_regex`` or a
    CSV ``group`` column), then :func:`summarise`.

    Args:
        base: a :class:`~finetune_kit.tasks.classification.config.ClassificationConfig` with ``folds``.
        folder: an earlier cross-validation folder to complete (its finished folds are kept).

    Returns:
        ``{"folder", "summary", "markdown", "wall_time_s"}``.

    Raises:
        GroupError, ValueError: bad groups or too few patients per class for ``folds``; what
            ``run_comparison`` raises.
    """

    if base.data.task == "multilabel":  # folds stratified on label combinations, per-label summary
        return run_multilabel_cross_validation(base, strategies, output_dir, per_strategy=per_strategy,
                                               console=console, title=title, folder=folder, n_boot=n_boot)
    t0 = time.perf_counter()
    k = int(base.data.folds)
    strategy_configs(base, strategies, per_strategy)  # bad names/options fail before anything runs
    images = discover(base.data)
    paths = [s.path for s in images.samples]
    labels = [s.label for s in images.samples]
    groups = group_ids(paths, regex=base.data.group_regex, csv_path=base.data.data, column=base.data.group_column,
                       path_column=base.data.path_column)
    splits = fold_splits(labels, groups, k, val_fraction=base.data.val_fraction, seed=base.data.split_seed)
    tag = base.output.experiment_tag or base.model.model_name
    run = RunDir(folder) if folder else RunDir(new_run_dir(output_dir, f"cv{k}-{tag}"))
    run.write_json("config.json", {"kind": "cross_validation", "base": base, "strategies": list(strategies),
                                   "folds": k, "per_strategy": per_strategy or {}})
    cache = ImageCache(cache_size_for(base.model.model_name, base.transforms.img_size))
    cache.load(paths, skip_corrupt=base.data.skip_corrupt)
    folds = []
    for i, names in enumerate(splits):
        fold_dir = run.path / f"fold_{i + 1}"
        done = _finished_comparison(fold_dir)
        if done is None:
            csv = write_fold_csv(paths, images.class_names, labels, names, groups, run.path / "folds" / f"fold_{i + 1}.csv")
            data = base.data.model_copy(update={"data": str(csv), "layout": "csv", "label_preset": None,
                                                "label_regex": None, "folds": None, "path_column": "path",
                                                "label_column": "label", "group_column": "group"})
            cfg = base.model_copy(update={"data": data}).replace(experiment_tag=f"{tag}-fold{i + 1}")
            done = run_comparison(cfg, strategies, fold_dir, per_strategy=per_strategy, console=console,
                                  title=f"{title} fold {i + 1}/{k}", image_cache=cache)
        folds.append(done["folder"])
    summary = summarise(folds, strategies, n_boot=n_boot)
    summary["classes"] = class_summary(folds, strategies, ordinal=base.classes.ordinal_classes,
                                       operating_point=base.classes.operating_point, n_boot=n_boot)
    summary.update(folds=k, grouped=len(set(groups)) < len(paths),
                   n_groups=len(set(groups)), n_images=len(paths), wall_time_s=time.perf_counter() - t0)
    md = summary_markdown(summary, title=title)
    run.write_json("cv_summary.json", summary)

    atomic_write_text(md, run.path / "cv_summary.md")
    return {"folder": str(run.path), "summary": summary, "markdown": md, "wall_time_s": summary["wall_time_s"]}


def _fold_predictions(run_dir: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Calibrated test probabilities ``(N, C)``, labels ``(N,)`` and metrics of one strategy's run."""


    m = json.loads((run_dir / "metrics.json").read_text())
    z = np.load(run_dir / "logits.npz")
    cal = Calibrator.from_dict(m.get("calibration"), float(m.get("temperature") or 1.0))
    return cal.probs(z["test_logits"]), z["test_labels"], m


def summarise(fold_folders: Sequence[str | Path], strategies: Sequence[str], *, n_boot: int = 1000,
              seed: int = 0) -> dict:
    """Per-strategy fold means/SDs, pooled bootstrap intervals and paired comparisons (module
    docstring) from the comparison folders of the folds, in order.

    Returns:
        ``{"strategies": {name: {metric: {"mean", "sd", "pooled", "ci95"}}}, "paired": [...],
        "reference_logreg": {"mean", "sd"} | None}``.
    """

    pooled, per_fold, refs = {}, {}, []
    for fd in fold_folders:
        for name in strategies:
            p, y, m = _fold_predictions(Path(fd) / name)
            pooled.setdefault(name, ([], []))
            pooled[name][0].append(p)
            pooled[name][1].append(y)
            # per-fold values from the same calibrated probabilities the pooled intervals use, so
            # the mean and its interval describe the same predictions
            per_fold.setdefault(name, []).append({**{k: metric_value(k, y, p) for k in METRICS},
                                                  "ece_uncalibrated": m["test"]["ece"]})
            if m.get("reference_logreg") and len(refs) < len(per_fold[name]):
                refs.append(m["reference_logreg"]["test_auroc"])
    out: dict = {"strategies": {}, "paired": [], "metrics": list(METRICS), "n_boot": n_boot}
    for name in strategies:
        p, y = np.concatenate(pooled[name][0]), np.concatenate(pooled[name][1])
        boots = bootstrap_metrics(y, p, n_boot=n_boot, seed=seed)
        row = {}
        for metric in (*METRICS, "ece_uncalibrated"):
            mean, sd = mean_sd([f[metric] for f in per_fold[name]])
            row[metric] = {"mean": mean, "sd": sd, "folds": [f[metric] for f in per_fold[name]]}
            if metric in boots:
                row[metric].update(pooled=boots[metric]["value"], ci95=boots[metric]["ci95"])
        out["strategies"][name] = row
    first = strategies[0]
    pa, ya = np.concatenate(pooled[first][0]), np.concatenate(pooled[first][1])
    for name in strategies[1:]:
        pb = np.concatenate(pooled[name][0])
        d = paired_difference(ya, pb, pa, metric="auroc", n_boot=n_boot, seed=seed)
        diffs = [b["auroc"] - a["auroc"] for a, b in zip(per_fold[first], per_fold[name])]
        mean, sd = mean_sd(diffs)
        out["paired"].append({"strategy": name, "versus": first, **d, "fold_mean_difference": mean,
                              "fold_sd_difference": sd, "folds_better": int(sum(x > 0 for x in diffs)),
                              "folds_worse": int(sum(x < 0 for x in diffs))})
    out["reference_logreg"] = dict(zip(("mean", "sd"), mean_sd(refs))) | {"folds": refs} if refs else None
    return out


def summary_markdown(summary: dict, title: str = "") -> str:
    """The cross-validation tables: mean +- SD over folds [pooled 95 % bootstrap CI] per strategy
    and metric, then the paired AUROC differences."""
    metrics = summary["metrics"]
    lines = ([f"# {title}", ""] if title else [])
    lines += ["| strategy | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, row in summary["strategies"].items():
        cells = []
        for m in metrics:
            r = row[m]
            ci = r.get("ci95")
            cells.append(f"{r['mean']:.4f} ± {r['sd']:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ref = summary.get("reference_logreg")
    if ref:
        lines.append(f"| logreg (reference) | {ref['mean']:.4f} ± {ref['sd']:.4f} |" + " |" * (len(metrics) - 1))
    if summary["paired"]:
        lines += ["", "| strategy vs | AUROC difference (pooled) | paired bootstrap 95% CI | p | per-fold mean ± SD | "
                      "folds better / worse |", "|---|---|---|---|---|---|"]
        for p in summary["paired"]:
            lines.append(f"| {p['strategy']} vs {p['versus']} | {p['difference']:+.4f} | [{p['ci95'][0]:+.4f}, "
                         f"{p['ci95'][1]:+.4f}] | {p['p_value']:.3f} | {p['fold_mean_difference']:+.4f} ± "
                         f"{p['fold_sd_difference']:.4f} | {p['folds_better']} / {p['folds_worse']} |")
    if summary.get("classes"):
        lines += ["", class_summary_markdown(summary["classes"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def print_cross_validation(cfg, names, per_strategy, console, title: str) -> dict:
    """The CLI's ``--folds K``: :func:`run_cross_validation`, then the tables and folder printed."""

    out = run_cross_validation(cfg, names, cfg.output.output_dir, per_strategy=per_strategy, console=console,
                               title=f"{title}, {cfg.data.folds}-fold")
    typer.echo(out["markdown"] + f"cross-validation written to {out['folder']} ({out['wall_time_s']:.0f} s)")
    return out
