"""What ``finetune-kit evaluate RUN --data DIR`` evaluates on: the data options completed from the
run's own label rule, and the per-image table it writes (``RUN/eval-NAME/predictions.csv``)."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from finetune_kit.runs.atomic import atomic_write_text
from finetune_kit.tasks.classification.config_files import classification_file_values

__all__ = ["LABEL_RULE", "with_run_label_rule", "write_per_image_csv"]

#: The options that say how a flat folder's file names give the labels; ``evaluate`` takes them from the
#: run when the user gives none of them (nor ``layout``).
LABEL_RULE = ("label_preset", "label_regex", "positive_class", "negative_class")


def with_run_label_rule(run_path: str | Path, data: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``data`` (the ``data`` section of ``evaluate``'s options, flat leaf names) completed with the run's
    label rule (:data:`LABEL_RULE`, from ``RUN/config.json``), and a one-line note saying so (None when
    nothing was taken).

    The rule is taken only for a flat folder (no sub-folders: its labels must come from the file
    names) when the user gave none of :data:`LABEL_RULE` nor ``layout``; a folder of class sub-folders
    or a CSV keeps its own labels. A run without a label rule (trained on class sub-folders) gives nothing.
    """
    out = dict(data)
    root = Path(str(out.get("data") or ""))
    if any(out.get(k) is not None for k in (*LABEL_RULE, "layout")) or not root.is_dir() \
            or any(p.is_dir() for p in root.iterdir()):
        return out, None
    config_file = Path(run_path) / "config.json"
    if not config_file.is_file():
        return out, None
    recorded = classification_file_values(config_file)
    rule = {k: recorded[k] for k in LABEL_RULE if recorded.get(k) is not None}
    if not rule.get("label_preset") and not rule.get("label_regex"):
        return out, None
    out.update(rule)
    shown = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in rule.items() if k in ("label_preset", "label_regex"))
    return out, f"labels of {root} by the run's rule: {shown} (give --label-preset/--label-regex to change it)"


def write_per_image_csv(path: Path, paths: Sequence[str], labels: np.ndarray, probs: np.ndarray,
                        class_names: Sequence[str], ood: Mapping[str, Any] | None = None) -> Path:
    """Write one row per image: ``path, label, p_<class>... (calibrated), predicted, correct`` and, with
    ``ood``, ``ood_score, in_distribution``. ``labels``: ``(N,)`` class indices, ``probs``: ``(N, C)``.
    The decision is the class of highest calibrated probability (argmax). Returns ``path``."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", *[f"p_{c}" for c in class_names], "predicted", "correct"]
               + (["ood_score", "in_distribution"] if ood else []))
    for i, (p, y, row) in enumerate(zip(paths, labels, probs)):
        pred = int(np.argmax(row))
        extra = [f"{ood['ood_score'][i]:.3f}", str(bool(ood["in_distribution"][i])).lower()] if ood else []
        w.writerow([p, class_names[int(y)], *[f"{v:.6f}" for v in row], class_names[pred],
                    str(pred == int(y)).lower(), *extra])
    return atomic_write_text(buf.getvalue(), path)
