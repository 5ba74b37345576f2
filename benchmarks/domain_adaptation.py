"""Domain adaptation table: from one base codec, fine-tune workflows to a target domain and measure
both domains with real bitstreams (target held-out images and the source set, before and after).

Workflows (each a ``compress finetune`` run with ``--source-data``; same steps, seed, crops):

- ``finetune-all``: every parameter at one LR;
- ``wf1-basic``: the guides' layer-wise LRs (context x0.1, h_a/h_s x0.5, entropy models frozen);
- ``decoder-only``: only ``g_s`` and ``h_s`` train (what an encoder-agnostic deployment can change);
- ``lora``: PEFT LoRA (rank ``--rank``) on the Conv2d layers of ``g_s``, all else frozen;
- ``conv``: residual 1x1 conv adapters (rank ``--rank``) after the convolutions of ``g_s``.

Per workflow and lambda: target and source R-D cost change vs the checkpoint the run started from
(%, real bpp and 8-bit PSNR), bpp and PSNR after, trainable parameters, adapter bits (float32) and
wall time; with two or more lambdas also BD-rate (%) of each workflow's curve vs the base's curve
on each domain. Writes ``domain_adaptation.csv``, ``domain_adaptation.md`` and ``domain_rd.png``
(both domains) to ``--output``.

Usage (from the repository root; a real base comes from the recipe in docs/compression_finetuning.md)::

    .venv/bin/python benchmarks/domain_adaptation.py --base runs/base/checkpoints/last.pt \\
        --target ../shared/data/acrima/images --source ../shared/data/kodak --lambdas 0.0067,0.013 \\
        --steps 300 --batch-size 8 --patch-size 256 --output runs/domain-adaptation
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

WORKFLOWS = {
    "finetune-all": {"lr_mults": "g_a:1.0,g_s:1.0,h_a:1.0,h_s:1.0,context:1.0"},
    "wf1-basic": {"freeze_entropy": True, "context_lr_ratio": 0.1},
    "decoder-only": {"lr_mults": "g_a:1.0,g_s:1.0,h_a:1.0,h_s:1.0,context:1.0", "freeze_entropy": True,
                     "freeze_patterns": [r"^(?!(?:g_s|h_s)\.)"]},
    "lora": {"adapter": "lora"},
    "conv": {"adapter": "conv"},
}


def run_workflow(name: str, lmbda: float, args) -> dict:
    """One ``compress finetune`` run of workflow ``name`` at ``lmbda``; returns its table row."""
    from finetune_kit.tasks.compression.run.config import FinetuneConfig
    from finetune_kit.tasks.compression.run.loop import run

    opts = dict(WORKFLOWS[name])
    if "adapter" in opts:
        opts["adapter_rank"] = args.rank
    cfg = FinetuneConfig(checkpoint=args.base, data=args.target, val_fraction=args.val_fraction, lmbda=lmbda,
                         epochs=1, steps_per_epoch=args.steps, batch_size=args.batch_size,
                         patch_size=args.patch_size, learning_rate=args.lr, source_data=args.source,
                         source_limit=args.source_limit, wandb="disabled", progress=False, threads=args.threads,
                         device=args.device, output_dir=args.output / "runs", name=f"{name}-lambda{lmbda:g}",
                         keep_best=0, **opts)
    t0 = time.perf_counter()
    final = run(cfg)
    dom = final["domain"]
    row = {"workflow": name, "lmbda": lmbda, "trainable_params": final.get("trainable_params"),
           "adapter_bits": dom["adapter_bits"], "wall_s": round(time.perf_counter() - t0, 1)}
    for d in ("target", "source"):
        a, b = dom[d]["after"], dom[d]["before"]
        row.update({f"{d}_bpp": a["bpp"], f"{d}_psnr": a["psnr-rgb"], f"{d}_rd_change_pct": dom[d]["change"]["rd_cost_pct"],
                    f"{d}_base_bpp": b["bpp"], f"{d}_base_psnr": b["psnr-rgb"]})
    return row


def bd_rates(rows: list[dict]) -> dict[tuple[str, str], float | None]:
    """BD-rate (%) of each workflow's curve vs the base's on each domain (None with < 2 points)."""
    from finetune_kit.tasks.compression.rd_curves import bd_metrics

    out = {}
    for wf in dict.fromkeys(r["workflow"] for r in rows):
        mine = sorted((r for r in rows if r["workflow"] == wf), key=lambda r: r["lmbda"])
        for d in ("target", "source"):
            base = {"bpp": [r[f"{d}_base_bpp"] for r in mine], "psnr-rgb": [r[f"{d}_base_psnr"] for r in mine]}
            curve = {"bpp": [r[f"{d}_bpp"] for r in mine], "psnr-rgb": [r[f"{d}_psnr"] for r in mine]}
            out[(wf, d)] = bd_metrics(base, curve, anchor_name="base").get("bd_rate") if len(mine) > 1 else None
    return out


def write_outputs(rows: list[dict], out: Path) -> None:
    """``domain_adaptation.csv``, ``domain_adaptation.md`` and ``domain_rd.png`` in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bd = bd_rates(rows)
    for r in rows:
        r["target_bd_rate"], r["source_bd_rate"] = bd[(r["workflow"], "target")], bd[(r["workflow"], "source")]
    with open(out / "domain_adaptation.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: "n/a" if v is None else f"{v:+.2f}"  # noqa: E731
    lines = ["| workflow | lambda | target R-D change % | source R-D change % | target BD-rate % | source BD-rate % "
             "| target bpp / dB | source bpp / dB | trainable params | adapter bits | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workflow']} | {r['lmbda']:g} | {fmt(r['target_rd_change_pct'])} | "
                     f"{fmt(r['source_rd_change_pct'])} | {fmt(r['target_bd_rate'])} | {fmt(r['source_bd_rate'])} | "
                     f"{r['target_bpp']:.4f} / {r['target_psnr']:.2f} | {r['source_bpp']:.4f} / {r['source_psnr']:.2f} "
                     f"| {r['trainable_params']} | {r['adapter_bits']} | {r['wall_s']} |")
    (out / "domain_adaptation.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, d in zip(axes, ("target", "source")):
        base = sorted({(r[f"{d}_base_bpp"], r[f"{d}_base_psnr"]) for r in rows})
        ax.plot(*zip(*base), "k--o", label="base (before)")
        for wf in dict.fromkeys(r["workflow"] for r in rows):
            pts = sorted((r[f"{d}_bpp"], r[f"{d}_psnr"]) for r in rows if r["workflow"] == wf)
            ax.plot(*zip(*pts), "-o", label=wf)
        ax.set(title=f"{d} domain", xlabel="bpp (real bitstreams)", ylabel="PSNR-RGB (dB)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "domain_rd.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", type=Path, required=True, help="base checkpoint (.pt or run folder)")
    p.add_argument("--target", type=Path, required=True, help="target-domain images (a held-out part is kept)")
    p.add_argument("--source", type=Path, required=True, help="source-domain images, e.g. ../shared/data/kodak")
    p.add_argument("--source-limit", type=int, default=None, help="code at most this many source images")
    p.add_argument("--val-fraction", type=float, default=0.2, help="held-out fraction of --target")
    p.add_argument("--lambdas", default="0.0067", help="comma-separated target lambdas")
    p.add_argument("--workflows", default=",".join(WORKFLOWS), help="comma-separated, of: " + ", ".join(WORKFLOWS))
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per workflow")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4, help="base LR (adapters and weights alike)")
    p.add_argument("--rank", type=int, default=8, help="adapter rank")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", type=Path, default=Path("runs/domain-adaptation"))
    args = p.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [run_workflow(wf, float(lm), args) for lm in args.lambdas.split(",") for wf in args.workflows.split(",")]
    write_outputs(rows, args.output)
    print((args.output / "domain_adaptation.md").read_text())
    return rows


if __name__ == "__main__":
    main()
