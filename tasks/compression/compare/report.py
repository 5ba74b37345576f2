"""The report of ``compress compare``: table (markdown + CSV), BD-rates and the R-D plot.

R-D cost at a target lambda, per evaluation image then averaged: ``lambda * 255^2 * MSE + bpp``
with the real bpp (bitstream bytes) and the MSE of the 8-bit output on [0, 1] images
(``10^(-PSNR/10)``). "steps to (a)" is the first epoch's step count at which a workflow's
validation R-D cost (held-out crops, estimated rates) reached the final validation R-D cost of
``finetune-all``; empty when it never did within the budget.

BD-rate (Bjontegaard, VCEG-M33; :func:`finetune_kit.tasks.compression.rd_curves.bd_metrics`, %,
negative = fewer bits at equal PSNR), with two or more target lambdas: each workflow's curve
(its points at the target lambdas) against ``finetune-all``'s and against the base model's
curve. The base is one checkpoint, one R-D point: its curve needs a second point, so BD-rate
against it is reported as undefined (with the reason) unless the curves are given as anchors.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional

from finetune_kit.runs.checkpoint import atomic_write_text
from finetune_kit.runs.run_dir import to_jsonable
from finetune_kit.tasks.compression.compare.plot import plot_compare
from finetune_kit.tasks.compression.rd_curves import bd_metrics

__all__ = ["rd_cost", "table_rows", "bd_rates", "write_report", "COLUMNS"]

COLUMNS = [("lambda", "lambda"), ("workflow", "workflow"), ("rd_cost", "R-D cost"), ("rd_vs_a", "vs (a) %"),
           ("bpp", "real bpp"), ("estimated_bpp", "est. bpp"), ("psnr", "PSNR (dB)"), ("ms_ssim", "MS-SSIM"),
           ("steps_to_a", "steps to (a)"), ("steps", "steps"), ("wall_s", "wall (s)"),
           ("peak_memory_mb", "peak mem (MiB)")]


def rd_cost(per_image: Mapping[str, Mapping[str, float]], lmbda: float) -> float:
    """Mean over images of ``lmbda * 255^2 * 10^(-PSNR/10) + bpp`` (real bpp, 8-bit PSNR in dB)."""
    vals = [lmbda * 255 ** 2 * 10 ** (-r["psnr-rgb"] / 10) + r["bpp"] for r in per_image.values()]
    return sum(vals) / len(vals) if vals else float("nan")


def _steps_to(curve: list[float], target: Optional[float], steps_per_epoch: int) -> Optional[int]:
    if target is None:
        return None
    for e, v in enumerate(curve, 1):
        if v <= target:
            return e * steps_per_epoch
    return None


def _eval_row(lmbda: float, name: str, ev: Mapping) -> dict[str, Any]:
    m = ev["mean"]
    return {"lambda": lmbda, "workflow": name, "rd_cost": rd_cost(ev["per_image"], lmbda), "bpp": m["bpp"],
            "estimated_bpp": m["estimated_bpp"], "psnr": m["psnr-rgb"], "ms_ssim": m.get("ms-ssim-rgb")}


def table_rows(cfg: Any, state: Mapping) -> list[dict[str, Any]]:
    """One row per evaluated cell (and the base, once per lambda, first), by lambda then workflow."""
    rows = []
    for lmbda in cfg.lambdas:
        if state.get("base"):
            rows.append({**_eval_row(lmbda, f"base (lambda {state.get('base_lmbda')})", state["base"]), "steps": 0})
        a = state["cells"].get(f"{lmbda:g}/finetune-all", {})
        a_final = a["train"]["val_rd"][-1] if a.get("train", {}).get("val_rd") else None
        a_cost = rd_cost(a["eval"]["per_image"], lmbda) if "eval" in a else None
        for wf in cfg.workflows:
            cell = state["cells"].get(f"{lmbda:g}/{wf}", {})
            if "eval" not in cell:
                continue
            tr = cell["train"]
            row = _eval_row(lmbda, wf, cell["eval"])
            row.update(steps=tr["epochs_run"] * tr["steps_per_epoch"], wall_s=tr.get("wall_s"),
                       peak_memory_mb=tr.get("peak_memory_mb"),
                       steps_to_a=_steps_to(tr["val_rd"], a_final, tr["steps_per_epoch"]))
            rows.append(row)
        for r in rows:
            if r["lambda"] == lmbda and a_cost:
                r["rd_vs_a"] = 100 * (r["rd_cost"] / a_cost - 1)
    return rows


def _curve(state: Mapping, cfg: Any, wf: str) -> Optional[dict[str, list[float]]]:
    pts = [state["cells"][f"{l:g}/{wf}"]["eval"]["mean"] for l in cfg.lambdas
           if "eval" in state["cells"].get(f"{l:g}/{wf}", {})]
    if len(pts) < len(cfg.lambdas):
        return None
    pts = sorted(pts, key=lambda m: m["bpp"])
    return {"bpp": [m["bpp"] for m in pts], "psnr-rgb": [m["psnr-rgb"] for m in pts]}


def _monotone(c: Mapping[str, list]) -> bool:
    """Rate and PSNR both strictly rising along the curve (sorted by rate)."""
    return all(b > a for k in ("bpp", "psnr-rgb") for a, b in zip(c[k], c[k][1:]))


def _bd(ref: Mapping, cur: Mapping, method: str) -> dict[str, Any]:
    """BD-rate of ``cur`` against ``ref``; undefined (with the reason) when a curve's PSNR does not
    rise with its rate (BD integrates rate over PSNR, which needs a monotone curve)."""

    bad = [n for n, c in (("finetune-all", ref), ("this workflow", cur)) if not _monotone(c)]
    if bad:
        return {"anchor": "finetune-all", "bd_rate": None, "bd_psnr": None,
                "reason": f"PSNR does not rise strictly with rate on the curve of {' and '.join(bad)}"}
    try:
        return bd_metrics(ref, cur, method=method, anchor_name="finetune-all")
    except (ValueError, AssertionError) as exc:  # the bjontegaard package refuses degenerate curves
        return {"anchor": "finetune-all", "bd_rate": None, "bd_psnr": None, "reason": f"BD undefined: {exc}"}


def bd_rates(cfg: Any, state: Mapping, method: str = "akima") -> dict[str, dict[str, Any]]:
    """``{workflow: {"vs_finetune_all": bd, "vs_base": bd}}`` (see :func:`bd_metrics`); {} with one lambda."""
    if len(cfg.lambdas) < 2:
        return {}
    ref = _curve(state, cfg, "finetune-all")
    out = {}
    for wf in cfg.workflows:
        cur = _curve(state, cfg, wf)
        if cur is None:
            continue
        vs_a = _bd(ref, cur, method) if ref else {"bd_rate": None, "reason": "finetune-all not finished"}
        base = state.get("base")
        vs_base = {"anchor": "base", "bd_rate": None, "bd_psnr": None,
                   "reason": "the base is one checkpoint, one R-D point: a curve needs two"}
        if base:
            vs_base["base_point"] = {"bpp": base["mean"]["bpp"], "psnr-rgb": base["mean"]["psnr-rgb"]}
        out[wf] = {"vs_finetune_all": vs_a, "vs_base": vs_base}
    return out


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def write_report(folder: str | Path, cfg: Any, state: Mapping, *, final: bool = False) -> str:
    """Write ``comparison.md``, ``comparison.csv``, ``bd.json``, ``comparison.json`` and ``rd.png``
    (atomically) from ``state`` (:func:`~.runner.load_state`); returns the markdown."""

    folder = Path(folder)
    rows = table_rows(cfg, state)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([k for k, _ in COLUMNS])
    for r in rows:
        w.writerow([r.get(k) for k, _ in COLUMNS])
    atomic_write_text(buf.getvalue(), folder / "comparison.csv")
    bd = bd_rates(cfg, state)
    n_img = len((state.get("base") or {}).get("images", []))
    lines = [f"# compress compare: {state.get('model')} from lambda {state.get('base_lmbda')}", "",
             f"{cfg.steps} steps per workflow ({cfg.epochs} epochs x {cfg.steps_per_epoch} batches of {cfg.batch_size} "
             f"x {cfg.patch_size} px), seed {cfg.seed}; evaluation: {n_img} images of {cfg.eval_data}, real bitstreams; "
             "R-D cost = lambda*255^2*MSE + real bpp." + ("" if final else " (partial: still running)"), "",
             "| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    if bd:
        lines += ["", "BD-rate (%, negative = fewer bits at equal PSNR) over the target lambdas:", "",
                  "| workflow | vs finetune-all | vs base |", "|---|---|---|"]
        for wf, d in bd.items():
            cells = []
            for key in ("vs_finetune_all", "vs_base"):
                v = d[key]
                cells.append(f"{v['bd_rate']:+.2f}" if v.get("bd_rate") is not None else f"n/a ({v.get('reason', '')})")
            lines.append(f"| {wf} | {cells[0]} | {cells[1]} |")
    md = "\n".join(lines) + "\n"
    atomic_write_text(md, folder / "comparison.md")
    atomic_write_text(json.dumps(to_jsonable(bd), indent=2), folder / "bd.json")
    atomic_write_text(json.dumps(to_jsonable({"kind": "compression-comparison", "rows": rows, "bd": bd,
                                              "finished": state.get("finished")}), indent=2), folder / "comparison.json")
    plot_compare(cfg, state, folder / "rd.png")
    return md
