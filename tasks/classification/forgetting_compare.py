"""The forgetting columns, WiSE-FT rows and frontier figure of ``compare`` (issue 25).

Columns (from each run's ``metrics.json``): test AUROC 95 % interval, source retention (top-1 agreement
and KL under the pretrained head), CKA on the reference set and on validation, and the largest
relative weight drift of a backbone group. A run with ``forgetting.wise_ft`` adds a row for its
WiSE-FT model; ``frontier.png`` plots validation AUROC against retention for every strategy (points)
and every WiSE-FT grid (curves).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from finetune_kit.tasks.classification.wise_ft import plot_frontier

__all__ = ["FORGETTING_COLUMNS", "forgetting_cells", "wise_ft_row", "plot_compare_frontier"]

FORGETTING_COLUMNS = [("test_auroc_ci95", "test AUROC 95% CI"), ("top1_agreement", "source top-1 agreement"),
                      ("source_kl", "source KL (nats)"), ("reference_cka", "CKA reference"), ("val_cka", "CKA val"),
                      ("max_drift", "max backbone drift")]


def _ci(ci) -> str | None:
    return f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else None


def forgetting_cells(m: Mapping) -> dict:
    """The :data:`FORGETTING_COLUMNS` cells of one run's metrics (None where not measured)."""
    f = m.get("forgetting") or {}
    r = f.get("retention") or {}
    drift = [v for k, v in (f.get("drift") or {}).items() if k != "head"]
    return {"test_auroc_ci95": _ci((m.get("test") or {}).get("auroc_ci95")), "top1_agreement": r.get("top1_agreement"),
            "source_kl": r.get("kl"), "reference_cka": r.get("reference_cka"), "val_cka": f.get("val_cka"),
            "max_drift": max(drift) if drift else None}


def wise_ft_row(name: str, m: Mapping, columns) -> dict | None:
    """The row of the WiSE-FT model of run ``name`` (its ``metrics.json`` in ``m["wise_ft"]["run_dir"]``),
    or None when the run has none."""
    w = m.get("wise_ft")
    if not w:
        return None
    wm = json.loads((Path(w["run_dir"]) / "metrics.json").read_text())
    t = wm.get("test", {})
    row = {k: None for k, _ in columns} | forgetting_cells(wm)
    row.update(strategy=f"{name} + WiSE-FT (alpha {w['alpha']:g})", test_auroc=t.get("auroc"),
               test_accuracy=t.get("accuracy"), ece_before=t.get("ece"), ece_after=t.get("ece_calibrated"),
               calibration=(wm.get("calibration") or {}).get("method"), temperature=wm.get("temperature"),
               trainable_fraction=m.get("trainable_fraction_final"))
    return row


def plot_compare_frontier(results: Mapping[str, Mapping], path: str | Path, *, title: str = "") -> Path | None:
    """``frontier.png`` of a comparison: each run as a point (retention, validation AUROC), each WiSE-FT
    grid as a curve; None when no run measured retention."""
    points, curves = {}, {}
    for name, m in results.items():
        r = (m.get("forgetting") or {}).get("retention") or {}
        x = r.get("top1_agreement", r.get("reference_cka"))
        if x is not None and (m.get("val") or {}).get("auroc") is not None:
            points[name] = (x, m["val"]["auroc"])
        if m.get("wise_ft"):
            curves[f"{name} + WiSE-FT"] = m["wise_ft"]["grid"]
    if not points and not curves:
        return None
    return plot_frontier(curves, points, path, title=title)
