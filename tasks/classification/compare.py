"""Run several strategies on the same data and split; write a table and one figure.

Outputs in the comparison folder: ``comparison.md`` and ``comparison.csv`` (test AUROC,
accuracy, ECE before/after temperature scaling, epochs, wall time, trainable parameter
fraction, peak memory and the part training added; the forgetting columns of
:mod:`~finetune_kit.tasks.classification.forgetting_compare`), ``comparison.json``, ``frontier.png``, ``val_auroc.png`` (validation AUROC per epoch
per strategy) and one run folder per strategy.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Mapping, Sequence

from finetune_kit.runs.checkpoint import atomic_write_text
from finetune_kit.runs.run_dir import RunDir, new_run_dir
from finetune_kit.strategy import StrategyOptionError, get_strategy, strategy_options
from finetune_kit.tasks.classification.config import (
    COMPARE_DEFAULTS,
    DEMO_HEAD_LR,
    DEMO_OVERRIDES,
    STRATEGY_FIELDS,
    ClassificationConfig,
)
from finetune_kit.tasks.classification.multilabel_data import image_paths
from finetune_kit.tasks.classification.forgetting_compare import (FORGETTING_COLUMNS, forgetting_cells,
                                                                  plot_compare_frontier, wise_ft_row)
from finetune_kit.tasks.classification.plots import dataset_label, plot_val_auroc_per_strategy
from finetune_kit.tasks.classification.train import resume_config, run_training
from finetune_kit.tasks.classification.transforms import ImageCache, cache_size_for

__all__ = ["run_comparison", "resume_strategy", "strategy_configs", "strategy_row", "COMPARE_DEFAULTS", "DEMO_OVERRIDES", "DEMO_HEAD_LR", "COLUMNS"]

COLUMNS = [("strategy", "strategy"), ("test_auroc", "test AUROC"), ("test_accuracy", "test accuracy"),
           ("ece_before", "ECE before"), ("ece_after", "ECE after"), ("ece_after_ci95", "ECE after 95% CI"),
           ("calibration", "calibrator"), ("temperature", "T"),
           ("epochs", "epochs"), ("best_epoch", "best epoch"), ("wall_time_s", "wall time (s)"),
           ("trainable_fraction", "trainable fraction"), ("peak_memory_mb", "peak memory (MiB)"),
           ("training_memory_mb", "training memory (MiB)")] + FORGETTING_COLUMNS


def strategy_row(name: str, m: Mapping) -> dict:
    """One strategy's row of the comparison table (:data:`COLUMNS`) from its ``metrics.json`` ``m``. ``T``
    is the temperature only when the calibrator is temperature scaling (empty for vector, isotonic or none,
    which have no single temperature)."""
    t = m.get("test", {})
    method = (m.get("calibration") or {}).get("method")
    return {"strategy": name, "test_auroc": t.get("auroc"), "test_accuracy": t.get("accuracy"),
            "ece_before": t.get("ece"), "ece_after": t.get("ece_calibrated"),
            "ece_after_ci95": _ci(t.get("ece_calibrated_ci95")), "calibration": method,
            "temperature": m.get("temperature") if method == "temperature" else None,
            "epochs": m.get("epochs_run"), "best_epoch": m.get("best_epoch"), "wall_time_s": m.get("wall_time_s"),
            "trainable_fraction": m.get("trainable_fraction_final"), "peak_memory_mb": m.get("peak_memory_mb"),
            "training_memory_mb": m.get("peak_memory_increase_mb"), **forgetting_cells(m)}


def _ci(ci) -> str | None:
    return f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else None


def reference_row(m: Mapping) -> dict | None:
    """The logistic-regression reference row (scikit-learn defaults on the frozen features) from a
    head-only run's metrics, or None when the run has none."""
    ref = m.get("reference_logreg")
    if not ref:
        return None
    return {k: None for k, _ in COLUMNS} | {"strategy": "logreg (reference)", "test_auroc": ref["test_auroc"],
                                            "test_accuracy": ref["test_accuracy"]}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.0f}"
    return "" if v is None else str(v)


def run_comparison(base: ClassificationConfig, strategies: Sequence[str], output_dir: str | Path, *,
                   per_strategy: Mapping[str, Mapping] | None = None, console=None, title: str = "",
                   image_cache=None, resume: str | Path | None = None) -> dict:
    """Train each of ``strategies`` with ``base`` (plus ``per_strategy[name]`` overrides) on the same
    data and split (same ``split_seed``; decoded images shared in memory).

    Each strategy gets only the options it accepts (:func:`strategy_configs`). The first head-only
    run with a logistic-regression reference adds a ``logreg (reference)`` row. ``image_cache``: an
    ``ImageCache`` of decoded images to reuse (cross-validation folds), else one is made.

    ``resume``: an existing comparison folder to finish instead of a new one (``compare --resume``;
    ``base``, ``strategies`` and ``per_strategy`` as its ``config.json`` records them): a strategy whose
    run completed is kept as it is, an unfinished one continues from its last checkpoint
    (:func:`~finetune_kit.tasks.classification.train.resume_config`), one never started runs now.

    Returns:
        ``{"folder", "rows", "markdown"}``.

    Raises:
        UnknownStrategyError, StrategyOptionError: before anything runs (see :func:`strategy_configs`).
        whatever :func:`finetune_kit.tasks.classification.train.run_training` raises for bad input (before any
        strategy has run, the first one fails fast).
    """

    tag = base.output.experiment_tag or base.model.model_name
    configs = strategy_configs(base, strategies, per_strategy)  # bad names or options fail before anything runs
    folder = RunDir(resume if resume is not None else new_run_dir(output_dir, f"compare-{tag}"))
    if resume is None:
        # "kind" and comparison.json mark the folder as a container of runs for `analyze` (run_files.discover_runs)
        folder.write_json("config.json", {"kind": "comparison", "base": base, "strategies": list(strategies),
                                          "per_strategy": per_strategy or {}})
        folder.write_json("comparison.json", {"kind": "comparison", "strategies": list(strategies), "rows": [],
                                              "finished": None})
    # decode once, before any strategy's clock starts, and share the images between strategies
    cache = image_cache or ImageCache(cache_size_for(base.model.model_name, base.transforms.img_size))
    cache.load(image_paths(base), skip_corrupt=base.data.skip_corrupt)
    rows, histories, results = [], {}, {}
    for name in strategies:
        cfg = configs[name].replace(run_dir=str(folder.path / name))
        result = (resume_strategy(folder.path / name, cache, console) if resume is not None else None) or \
            run_training(cfg, image_cache=cache, console=console)
        results[name] = result
        histories[name] = RunDir(folder.path / name).history()
        rows.append(strategy_row(name, result))
        rows += [r for r in [wise_ft_row(name, result, COLUMNS)] if r is not None]
        ref = reference_row(result)
        if ref is not None and not any(r["strategy"] == ref["strategy"] for r in rows):
            rows.append(ref)
        _write_tables(folder, rows, title)
    plot_val_auroc_per_strategy(histories, folder.path / "val_auroc.png",
                                dataset=dataset_label(base.data.data, base.data.label_preset),
                                title=f"validation AUROC per epoch ({tag})")
    plot_compare_frontier(results, folder.path / "frontier.png", title=tag)
    md = _write_tables(folder, rows, title)
    folder.write_json("comparison.json", {"kind": "comparison", "strategies": list(strategies), "rows": rows,
                                          "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return {"folder": str(folder.path), "rows": rows, "markdown": md}


def resume_strategy(run_path: Path, image_cache=None, console=None) -> dict | None:
    """Finish one strategy's run of a resumed comparison: its ``metrics.json`` when the run completed,
    the result of continuing it (:func:`run_training` with ``resume=True``) when it started, None when
    it never started (the caller runs it)."""
    run = RunDir(run_path)
    if not (run.path / "config.json").is_file():
        return None
    status = (run.read_json("status.json") or {}).get("status") if (run.path / "status.json").is_file() else None
    if status == "completed" and (run.path / "metrics.json").is_file():
        if console is not None:
            console.print(f"{run.path.name}: completed, kept")
        return run.read_json("metrics.json")
    if console is not None:
        console.print(f"{run.path.name}: {status or 'unfinished'}, continued from its last checkpoint")
    return run_training(resume_config(run.path), resume=True, image_cache=image_cache, console=console)


def strategy_configs(base: ClassificationConfig, strategies: Sequence[str],
                     per_strategy: Mapping[str, Mapping] | None = None) -> dict[str, ClassificationConfig]:
    """``{name: config}`` of each strategy of a comparison: ``base`` with ``per_strategy[name]``
    overrides, each strategy given only its own options (:meth:`ClassificationConfig.for_strategy`).
    Each strategy is built once here, so bad options fail before any run.

    Raises:
        UnknownStrategyError: an unknown name.
        StrategyOptionError: an option set explicitly in ``base`` (a named strategy option or a
            ``strategy_kwargs`` key) that none of ``strategies`` accepts; or a bad per-strategy option.
        ValueError / pydantic.ValidationError: a bad option value.
    """

    tag = base.output.experiment_tag or base.model.model_name
    accepted = {name: strategy_options(name) for name in strategies}
    st = base.strategy
    given = [f for f in STRATEGY_FIELDS if f in st.model_fields_set and getattr(st, f) is not None]
    unused = [k for k in (*given, *base.strategy.strategy_kwargs) if not any(k in a for a in accepted.values())]
    if unused:
        raise StrategyOptionError(f"no strategy of {', '.join(strategies)} has option "
                                  f"{', '.join(repr(k) for k in unused)}; their options: "
                                  f"{', '.join(sorted(set().union(*accepted.values())))}")
    configs = {}
    for name in strategies:
        overrides = dict((per_strategy or {}).get(name, {}))
        cfg = base.for_strategy(name, experiment_tag=f"{tag}-{name}", **overrides)
        get_strategy(name, **cfg.strategy_options())
        configs[name] = cfg
    return configs


def _write_tables(folder, rows: list[dict], title: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([k for k, _ in COLUMNS])
    for r in rows:
        w.writerow([r[k] for k, _ in COLUMNS])
    atomic_write_text(buf.getvalue(), folder.path / "comparison.csv")
    lines = ([f"# {title}", ""] if title else []) + ["| " + " | ".join(h for _, h in COLUMNS) + " |",
                                                      "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k, _ in COLUMNS) + " |" for r in rows]
    md = "\n".join(lines) + "\n"
    atomic_write_text(md, folder.path / "comparison.md")
    return md
