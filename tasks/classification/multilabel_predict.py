"""``predict`` for a multi-label run: one calibrated probability and one decision per label.

The run's ``metrics.json`` holds the per-label ``temperatures`` and ``thresholds`` chosen on
validation (:mod:`~finetune_kit.tasks.classification.multilabel_report`); each image's row is
``path, p_<label>..., <label>...`` with the decision ``1`` when ``p >= threshold``, else ``0``.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from finetune_kit.tasks.classification.multilabel_metrics import sigmoid

__all__ = ["multilabel_prediction_csv"]


def multilabel_prediction_csv(run_path: str | Path, paths: list[str], logits: np.ndarray, label_names: list[str],
                              bad: list[str], ood: dict) -> str:
    """The CSV text of ``predict`` for a multi-label run: ``path``, ``p_<label>`` (after the label's
    temperature), ``<label>`` (0/1 at the label's validation threshold), and ``ood_score``,
    ``in_distribution`` when the run has an OOD detector; unreadable images get ``CORRUPT`` rows.

    Raises:
        FileNotFoundError: the run has no ``metrics.json`` (not finished).
    """
    m = Path(run_path) / "metrics.json"
    if not m.is_file():
        raise FileNotFoundError(f"{m} not found: the run is not finished; finish it with --resume {Path(run_path)}")
    rep = json.loads(m.read_text())
    temps, thr = np.asarray(rep["temperatures"]), np.asarray(rep["thresholds"])
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
