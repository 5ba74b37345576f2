"""The compact forgetting table of a ``compare`` folder (docs/classification.md, issue 25).

    python benchmarks/forgetting_table.py COMPARE_FOLDER [FIGURE.png]

Columns: test AUROC [95 % CI], source retention (top-1 agreement, KL under the pretrained head),
CKA (reference set, validation), the largest per-group weight drift, trainable fraction, wall time;
``llrd`` (the alias of ``full`` that bench_forgetting.py runs with L2-SP) is labelled ``full + L2-SP``.
With ``FIGURE.png``, also the folder's forgetting frontier drawn there with those labels.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(v, fmt="{:.3f}") -> str:
    return "" if v is None else fmt.format(v)


def main(folder: str) -> str:
    rows = json.loads((Path(folder) / "comparison.json").read_text())["rows"]
    lines = ["| strategy | test AUROC [95% CI] | top-1 agreement | KL (nats) | CKA reference | CKA val | "
             "max drift | trainable fraction | wall time (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = "full + L2-SP" if r["strategy"] == "llrd" else r["strategy"]
        ci = f" [{r['test_auroc_ci95'].replace('-', ', ')}]" if r.get("test_auroc_ci95") else ""
        lines.append(f"| {name} | {_f(r['test_auroc'], '{:.4f}')}{ci} | {_f(r.get('top1_agreement'))} | "
                     f"{_f(r.get('source_kl'))} | {_f(r.get('reference_cka'))} | {_f(r.get('val_cka'))} | "
                     f"{_f(r.get('max_drift'), '{:.4f}')} | {_f(r.get('trainable_fraction'), '{:.4f}')} | "
                     f"{_f(r.get('wall_time_s'), '{:.0f}')} |")
    return "\n".join(lines)


def frontier(folder: str, out: str) -> None:
    """Draw the comparison's frontier (validation AUROC vs retention; WiSE-FT curves) into ``out``."""
    from finetune_kit.tasks.classification.forgetting_compare import plot_compare_frontier

    cfg = json.loads((Path(folder) / "config.json").read_text())
    results = {("full + L2-SP" if s == "llrd" else s): json.loads((Path(folder) / s / "metrics.json").read_text())
               for s in cfg["strategies"]}
    plot_compare_frontier(results, out, title=cfg["base"].get("experiment_tag") or "")


if __name__ == "__main__":
    print(main(sys.argv[1]))
    if len(sys.argv) > 2:
        frontier(sys.argv[1], sys.argv[2])
