"""The class-level part of a K-class cross-validation summary, on the pooled out-of-fold test
predictions (every image is a test image exactly once):

- macro one-vs-rest AUROC with its 95 % bootstrap interval, each class's AUROC and each class's
  sensitivity of the argmax decision (:func:`~finetune_kit.tasks.classification.per_class.per_class_metrics`);
- the quadratic weighted kappa over the ordinal classes (``--ordinal-classes``;
  :func:`~finetune_kit.tasks.classification.per_class.ordinal_kappa`);
- at the operating point (``--operating-point``): in each fold the threshold of every class is
  chosen on that fold's validation probabilities (:func:`~finetune_kit.tasks.classification.operating_point.choose_threshold`)
  and applied to its test fold; the pooled decisions give sensitivity and specificity with
  bootstrap intervals (stratified by the class, :func:`~finetune_kit.tasks.classification.bootstrap.bootstrap_ci`).

The logistic-regression reference (``reference_logreg.npz`` of the ``linear`` runs) gets the
same columns except the operating point (it has no validation predictions).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from finetune_kit.calibration import Calibrator
from finetune_kit.tasks.classification.bootstrap import bootstrap_ci
from finetune_kit.tasks.classification.classes_config import parse_operating_point
from finetune_kit.tasks.classification.operating_point import choose_threshold, decision_metrics
from finetune_kit.tasks.classification.per_class import ordinal_kappa, per_class_metrics

__all__ = ["class_summary", "class_summary_markdown", "REFERENCE"]

#: the name of the logistic-regression reference's row
REFERENCE = "logreg (reference)"


def _fold_probs(run_dir: Path) -> dict:
    """Calibrated validation and test probabilities and labels of one run."""
    m = json.loads((run_dir / "metrics.json").read_text())
    z = np.load(run_dir / "logits.npz")
    cal = Calibrator.from_dict(m.get("calibration"), float(m.get("temperature") or 1.0))
    return {"val": cal.probs(z["val_logits"]), "val_y": z["val_labels"], "test": cal.probs(z["test_logits"]),
            "test_y": z["test_labels"], "class_names": m["class_names"]}


def _row(y, p, class_names, ordinal, n_boot, seed) -> dict:
    pc = per_class_metrics(y, p, class_names, n_boot=n_boot, seed=seed)
    row = {"macro_auroc": pc["macro"]["auroc"], "auroc": {c: pc["classes"][c]["auroc"] for c in class_names},
           "sensitivity": {c: pc["classes"][c]["sensitivity"] for c in class_names}}
    if ordinal:
        row["ordinal_kappa"] = ordinal_kappa(y, p, class_names, ordinal, n_boot=n_boot, seed=seed)
    return row


def class_summary(fold_folders: Sequence[str | Path], strategies: Sequence[str], *, ordinal: str | None = None,
                  operating_point: str | None = None, n_boot: int = 1000, seed: int = 0) -> dict | None:
    """Per strategy (and the reference when the ``linear`` runs wrote one): the pooled class-level
    metrics of the module docstring.

    Returns:
        ``{"class_names", "ordinal", "operating_point", "n_boot", "rows": {name: {"macro_auroc":
        {"value", "ci95"}, "auroc": {class: {...}}, "ordinal_kappa"?: {...}, "operating_point"?:
        {class: {"sensitivity", "specificity": {"value", "ci95"}, "thresholds": [per fold]}}}}}``,
        or None for a binary problem.
    """
    folds = [{name: _fold_probs(Path(fd) / name) for name in strategies} for fd in fold_folders]
    class_names = folds[0][strategies[0]]["class_names"]
    if len(class_names) <= 2:
        return None
    out = {"class_names": class_names, "ordinal": ordinal, "operating_point": operating_point, "n_boot": n_boot,
           "rows": {}}
    for name in strategies:
        y = np.concatenate([f[name]["test_y"] for f in folds])
        p = np.concatenate([f[name]["test"] for f in folds])
        row = _row(y, p, class_names, ordinal, n_boot, seed)
        if operating_point:
            kind, target = parse_operating_point(operating_point)
            row["operating_point"] = {}
            for c, cname in enumerate(class_names):
                thr = [choose_threshold(f[name]["val_y"] == c, f[name]["val"][:, c], kind, target) for f in folds]
                d = np.concatenate([f[name]["test"][:, c] >= t for f, t in zip(folds, thr)])
                entry = {"thresholds": thr}
                for m in ("sensitivity", "specificity"):
                    v, lo, hi = bootstrap_ci(lambda yy, dd, m=m: decision_metrics(yy, dd)[m], y == c, d,
                                             n_boot=n_boot, seed=seed)
                    entry[m] = {"value": v, "ci95": [lo, hi]}
                row["operating_point"][cname] = entry
        out["rows"][name] = row
    refs = [Path(fd) / "linear" / "reference_logreg.npz" for fd in fold_folders]
    if "linear" in strategies and all(r.is_file() for r in refs):
        z = [np.load(r) for r in refs]
        out["rows"][REFERENCE] = _row(np.concatenate([a["test_labels"] for a in z]),
                                      np.concatenate([a["test_probs"] for a in z]), class_names, ordinal, n_boot, seed)
    return out


def _fmt(d: dict | None, ci: bool = True) -> str:
    if not d or d.get("value") is None or not np.isfinite(d["value"]):
        return "–"
    c = d.get("ci95")
    return f"{d['value']:.3f}" + (f" [{c[0]:.3f}, {c[1]:.3f}]" if ci and c and np.isfinite(c[0]) else "")


def class_summary_markdown(summary: dict | None, *, focus_class: str | None = None) -> str:
    """The class-level table: macro AUROC [CI], AUROC per class, the argmax sensitivity of
    ``focus_class`` (default: the last class), ordinal kappa [CI] and the operating point of
    ``focus_class``, one row per strategy."""
    if not summary:
        return ""
    names = summary["class_names"]
    focus = focus_class or names[-1]
    op = summary.get("operating_point")
    head = ["strategy", "macro AUROC [95 % CI]", *[f"AUROC {c}" for c in names], f"{focus} sensitivity (argmax) [CI]"]
    if summary.get("ordinal"):
        head.append(f"kappa ({summary['ordinal']}) [CI]")
    if op:
        head += [f"{focus} sensitivity at {op} [CI]", f"{focus} specificity [CI]"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, row in summary["rows"].items():
        cells = [name, _fmt(row["macro_auroc"]), *[_fmt(row["auroc"][c], ci=False) for c in names],
                 _fmt((row.get("sensitivity") or {}).get(focus))]
        if summary.get("ordinal"):
            cells.append(_fmt(row.get("ordinal_kappa")))
        if op:
            o = (row.get("operating_point") or {}).get(focus) or {}
            cells += [_fmt(o.get("sensitivity")), _fmt(o.get("specificity"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
