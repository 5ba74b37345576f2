"""``predict`` and ``evaluate`` for a multi-label run: one calibrated probability and one decision per label.

The run's ``metrics.json`` holds the per-label ``temperatures`` and ``thresholds`` chosen on
validation (:mod:`~finetune_kit.tasks.classification.multilabel_report`). ``predict`` writes
``path, p_<label>..., <label>...`` rows with the decision ``1`` when ``p >= threshold``, else ``0``;
``evaluate`` reads an external CSV with the run's label columns (blank = not graded) and reports
the metrics of :func:`~finetune_kit.tasks.classification.multilabel_metrics.multilabel_metrics` at the
run's thresholds.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import torch

from finetune_kit.runs.run_dir import RunDir, child_path
from finetune_kit.tasks.classification.multilabel_data import label_values, read_multilabel_csv, targets_of
from finetune_kit.tasks.classification.multilabel_metrics import multilabel_metrics, multilabel_summary, sigmoid
from finetune_kit.tasks.classification.transforms import CachedImageDataset, ImageCache

__all__ = ["multilabel_prediction_csv", "evaluate_multilabel"]


def _calibration(run_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The run's per-label temperatures and thresholds (``metrics.json``).

    Raises:
        FileNotFoundError: the run has no ``metrics.json`` (not finished).
    """
    m = Path(run_path) / "metrics.json"
    if not m.is_file():
        raise FileNotFoundError(f"{m} not found: the run is not finished; finish it with --resume {Path(run_path)}")
    rep = json.loads(m.read_text())
    return np.asarray(rep["temperatures"], np.float64), np.asarray(rep["thresholds"], np.float64)


def evaluate_multilabel(run_path: str | Path, trained, data_cfg, *, logits_of, name: str = "external",
                        batch_size: int = 32, device: str = "cpu") -> dict:
    """Evaluate a finished multi-label run on every image of an external CSV (``data_cfg.data``) with
    the run's label columns, temperatures and thresholds; writes ``RUN/eval-NAME/metrics.json``.

    Args:
        trained: ``(model, cfg, class_names, tf)`` of the run
            (:func:`~finetune_kit.tasks.classification.evaluate.load_trained`).
        logits_of: :func:`~finetune_kit.tasks.classification.evaluate.run_logits` (logits, targets
            and the OOD columns of a loader).

    Returns:
        ``{"data", "n_images", "skipped_corrupt", "temperatures", "thresholds", "metrics", "summary"}``
        (plus ``"ood"`` with the run's detector).

    Raises:
        DataError: a CSV without the run's label columns or with cells other than 0/1/blank.
    """
    model, cfg, class_names, tf = trained
    images = read_multilabel_csv(data_cfg.data, class_names, group_column=None)
    cache = ImageCache(tf.cache_size)
    skipped = set(cache.load([s.path for s in images.samples], skip_corrupt=data_cfg.skip_corrupt))
    samples = [s for s in images.samples if s.path not in skipped]
    ds = CachedImageDataset(cache, [s.path for s in samples], label_values(samples), tf.eval)
    logits, _, ood = logits_of(run_path, model, torch.utils.data.DataLoader(ds, batch_size=batch_size), tf, device)
    temps, thr = _calibration(run_path)
    z = np.asarray(logits, np.float64) / temps
    m = multilabel_metrics(targets_of(samples), sigmoid(z), list(thr), class_names, logits=z, seed=cfg.runtime.seed)
    result = {"data": data_cfg.model_dump(), "n_images": len(samples), "skipped_corrupt": len(skipped),
              "temperatures": temps.tolist(), "thresholds": thr.tolist(), "metrics": m,
              "summary": f"{len(samples)} images: {multilabel_summary(m)}"}
    if ood:
        result["ood"] = {"threshold": ood["threshold"], "fraction_flagged": float(np.mean(~ood["in_distribution"]))}
    out_dir = child_path(RunDir(run_path).path, name, what="--name", prefix="eval-")  # stays inside the run
    RunDir(out_dir).write_json("metrics.json", result)
    return result


def multilabel_prediction_csv(run_path: str | Path, paths: list[str], logits: np.ndarray, label_names: list[str],
                              bad: list[str], ood: dict) -> str:
    """The CSV text of ``predict`` for a multi-label run: ``path``, ``p_<label>`` (after the label's
    temperature), ``<label>`` (0/1 at the label's validation threshold), and ``ood_score``,
    ``in_distribution`` when the run has an OOD detector; unreadable images get ``CORRUPT`` rows.

    Raises:
        FileNotFoundError: the run has no ``metrics.json`` (not finished).
    """
    temps, thr = _calibration(run_path)
    probs = sigmoid(np.asarray(logits).reshape(len(paths), len(label_names)) / temps)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path"] + [f"p_{c}" for c in label_names] + list(label_names)
               + (["ood_score", "in_distribution"] if ood else []))
    for i, (p, row) in enumerate(zip(paths, probs)):
        extra = [f"{ood['ood_score'][i]:.3f}", str(bool(ood["in_distribution"][i])).lower()] if ood else []
        w.writerow([p] + [f"{v:.6f}" for v in row] + [int(v >= t) for v, t in zip(row, thr)] + extra)
    for p in sorted(bad):
        w.writerow([p, "CORRUPT"] + [""] * (2 * len(label_names) - 1 + (2 if ood else 0)))
    return buf.getvalue()
