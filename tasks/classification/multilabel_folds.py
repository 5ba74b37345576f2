"""K-fold cross-validation of multi-label runs, grouped by patient (``--task multilabel --folds K
--group-column patient_id``).

The folds are those of :func:`~finetune_kit.tasks.classification.folds.fold_splits`
(scikit-learn ``StratifiedGroupKFold``): the class it stratifies on is each image's label
COMBINATION (``"1,?,?"``, ``"0,1,0"`` ...; ``?`` = not graded; combinations of fewer than K
patients pooled, :func:`~finetune_kit.tasks.classification.multilabel_data.stratification_labels`),
so every fold keeps the mix of labels and missing labels as far as the patient groups allow, and no patient is in two splits of a
fold. Each fold is written as a multi-label CSV (``path,split,group,<labels>``) and run with
``compare``'s :func:`~finetune_kit.tasks.classification.compare.run_comparison`. The summary gives,
per strategy and label, the test AUROC and AP as mean +- SD over folds and the pooled value of all
folds' calibrated test predictions with its percentile bootstrap 95 % interval.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from finetune_kit.runs.checkpoint import atomic_write_text
from finetune_kit.runs.run_dir import RunDir, new_run_dir
from finetune_kit.tasks.classification.bootstrap import bootstrap_ci, mean_sd
from finetune_kit.tasks.classification.compare import run_comparison, strategy_configs
from finetune_kit.tasks.classification.folds import fold_splits
from finetune_kit.tasks.classification.multilabel_data import (check_learnable, read_multilabel_csv,
                                                               stratification_labels, write_multilabel_split)
from finetune_kit.tasks.classification.multilabel_metrics import auroc_score, average_precision, graded, sigmoid
from finetune_kit.tasks.classification.transforms import ImageCache, cache_size_for

__all__ = ["run_multilabel_cross_validation", "summarise_multilabel", "multilabel_cv_markdown"]


def _finished(fold_dir: Path) -> str | None:
    for f in sorted(fold_dir.glob("compare-*/comparison.json")):
        if json.loads(f.read_text()).get("finished"):
            return str(f.parent)
    return None


def run_multilabel_cross_validation(base, strategies: Sequence[str], output_dir: str | Path, *,
                                    per_strategy: Mapping[str, Mapping] | None = None, console=None, title: str = "",
                                    folder: str | Path | None = None, n_boot: int = 1000) -> dict:
    """Run ``strategies`` on ``base.data.folds`` patient-grouped folds of a multi-label CSV, then
    :func:`summarise_multilabel`; writes ``cv_summary.json`` and ``cv_summary.md``.

    Returns:
        ``{"folder", "summary", "markdown", "wall_time_s"}``.

    Raises:
        DataError: a bad CSV. ValueError: fewer patients than folds.
    """
    t0 = time.perf_counter()
    k = int(base.data.folds)
    strategy_configs(base, strategies, per_strategy)
    images = read_multilabel_csv(base.data.data, base.data.label_columns, group_column=base.data.group_column)
    check_learnable(images, base.data.data)
    groups = [s.group or s.path for s in images.samples]
    splits = fold_splits(stratification_labels(images, k), groups, k, val_fraction=base.data.val_fraction,
                         seed=base.data.split_seed)
    tag = base.output.experiment_tag or base.model.model_name
    run = RunDir(folder) if folder else RunDir(new_run_dir(output_dir, f"cv{k}-{tag}"))
    run.write_json("config.json", {"kind": "cross_validation", "base": base, "strategies": list(strategies),
                                   "folds": k, "per_strategy": per_strategy or {}})
    cache = ImageCache(cache_size_for(base.model.model_name, base.transforms.img_size))
    cache.load([s.path for s in images.samples], skip_corrupt=base.data.skip_corrupt)
    folds = []
    for i, names in enumerate(splits):
        fold_dir = run.path / f"fold_{i + 1}"
        done = _finished(fold_dir)
        if done is None:
            for s, name in zip(images.samples, names):
                s.split = str(name)
            csv = write_multilabel_split(images, run.path / "folds" / f"fold_{i + 1}.csv")
            data = base.data.model_copy(update={"data": str(csv), "group_column": "group", "folds": None})
            cfg = base.model_copy(update={"data": data}).replace(experiment_tag=f"{tag}-fold{i + 1}")
            done = run_comparison(cfg, strategies, fold_dir, per_strategy=per_strategy, console=console,
                                  title=f"{title} fold {i + 1}/{k}", image_cache=cache)["folder"]
        folds.append(done)
    summary = summarise_multilabel(folds, strategies, list(base.data.label_columns), n_boot=n_boot)
    summary.update(folds=k, grouped=base.data.group_column is not None, n_groups=len(set(groups)),
                   n_images=len(images.samples), wall_time_s=time.perf_counter() - t0)
    md = multilabel_cv_markdown(summary, title=title)
    run.write_json("cv_summary.json", summary)
    atomic_write_text(md, run.path / "cv_summary.md")
    return {"folder": str(run.path), "summary": summary, "markdown": md, "wall_time_s": summary["wall_time_s"]}


def summarise_multilabel(fold_folders: Sequence[str | Path], strategies: Sequence[str], labels: Sequence[str], *,
                         n_boot: int = 1000, seed: int = 0) -> dict:
    """Per strategy and label: test AUROC and AP over the folds (``mean``, ``sd``, ``folds``) and on
    all folds' calibrated test predictions pooled (``pooled``, ``ci95``); the same for the
    logistic-regression reference of head-only runs (``"logreg (reference)"``).

    Returns:
        ``{"strategies": {name: {label: {"auroc": {...}, "ap": {...}}}}, "labels", "n_boot"}``.
    """
    pooled: dict = {}
    per_fold: dict = {}
    for fd in fold_folders:
        for name in strategies:
            run = Path(fd) / name
            m = json.loads((run / "metrics.json").read_text())
            z = np.load(run / "logits.npz")
            p, t = sigmoid(z["test_logits"] / np.asarray(m["temperatures"])), z["test_labels"]
            pooled.setdefault(name, []).append((t, p))
            per_fold.setdefault(name, []).append({k: v for k, v in m["test"]["labels"].items()})
            ref = m.get("reference_logreg")
            if ref and name == strategies[0]:
                per_fold.setdefault("logreg (reference)", []).append(ref["test"]["labels"])
    out: dict = {"strategies": {}, "labels": list(labels), "n_boot": n_boot}
    for name, folds in per_fold.items():
        row = {}
        for j, label in enumerate(labels):
            row[label] = {}
            for metric, fn in (("auroc", auroc_score), ("ap", average_precision)):
                vals = [f[label][metric]["value"] for f in folds]
                mean, sd = mean_sd(vals)
                row[label][metric] = {"mean": mean, "sd": sd, "folds": vals}
                if name in pooled:
                    t = np.concatenate([a for a, _ in pooled[name]])
                    p = np.concatenate([b for _, b in pooled[name]])
                    v, lo, hi = bootstrap_ci(fn, *graded(t, p, j), n_boot=n_boot, seed=seed, stratify=False)
                    row[label][metric].update(pooled=v, ci95=[lo, hi])
        out["strategies"][name] = row
    return out


def multilabel_cv_markdown(summary: dict, title: str = "") -> str:
    """The table: per strategy and label, AUROC and AP as mean +- SD over folds [pooled 95 % CI]."""
    labels = summary["labels"]
    lines = ([f"# {title}", ""] if title else [])
    lines += ["| strategy | " + " | ".join(f"{lab} AUROC | {lab} AP" for lab in labels) + " |",
              "|---|" + "---|---|" * len(labels)]
    for name, row in summary["strategies"].items():
        cells = []
        for lab in labels:
            for metric in ("auroc", "ap"):
                r = row[lab][metric]
                ci = r.get("ci95")
                cells.append(f"{r['mean']:.3f} ± {r['sd']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
