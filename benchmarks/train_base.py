"""The base-model recipe as one command: ``compress train`` with the recipe's options, then Kodak
coded with real bitstreams; prints steps/s and the R-D reached against CompressAI's published
bmshj2018-hyperprior (PSNR gap at the same bpp) and BD-rate vs VTM.

The recipe (docs/compression_finetuning.md, "Base model recipe"): ``bmshj2018-hyperprior``
(CompressAI, N=128, M=192), lambda 0.0067, 128 px crops, batch 8, Adam LR 1e-4 then x0.1 for the
last sixth, gradient clip 1.0, on ``photos-train``. On CUDA the script turns on TF32 for
convolutions and matmuls (10-bit mantissa products, fp32 accumulation: the transforms and the
entropy parameters keep fp32 range); Kodak is then coded with TF32 off. bf16 autocast is left
out: the run's forward computes the transforms and the likelihoods in one call, and the entropy
model is kept in fp32.

Usage (from the repository root)::

    .venv/bin/python benchmarks/train_base.py --device cuda --steps 20000 --batch-size 16 --output runs/base-gpu
    # the CPU recipe (2 cores, about 2 h):
    .venv/bin/python benchmarks/train_base.py --device cpu --threads 1 --steps 6000 --output runs/base-cpu

Writes the run folder under ``--output`` and ``base_result.json`` there; prints one line of
training speed and one of R-D.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SHARED = Path(os.environ.get("FINETUNE_KIT_SHARED") or Path(__file__).resolve().parents[2] / "shared") / "data"
REFERENCE = "bmshj2018-hyperprior (CompressAI, mse, cpu)"


def psnr_gap(bpp: float, psnr: float, anchor: dict) -> float:
    """``anchor``'s PSNR at ``bpp`` (interpolated in log-bpp) minus ``psnr``, dB (positive: below it)."""
    order = np.argsort(anchor["bpp"])
    xs, ys = np.log(np.asarray(anchor["bpp"])[order]), np.asarray(anchor["psnr-rgb"])[order]
    return float(np.interp(math.log(bpp), xs, ys) - psnr)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--model", default="bmshj2018-hyperprior")
    p.add_argument("--lmbda", type=float, default=0.0067)
    p.add_argument("--steps", type=int, default=6000, help="optimizer steps")
    p.add_argument("--epochs", type=int, default=12, help="the steps are split into this many epochs")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--data", type=Path, default=SHARED / "photos-train")
    p.add_argument("--kodak", type=Path, default=SHARED / "kodak")
    p.add_argument("--kodak-images", type=int, default=24, help="Kodak images coded at the end (0 skips)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-tf32", action="store_true", help="keep full fp32 matmuls/convolutions on CUDA")
    p.add_argument("--output", type=Path, default=Path("runs/base"))
    args = p.parse_args(argv)

    from finetune_kit.tasks.compression.config import DEFAULT_ANCHORS, EvalConfig
    from finetune_kit.tasks.compression.evaluate import run_eval
    from finetune_kit.tasks.compression.rd_curves import load_anchors
    from finetune_kit.tasks.compression.run.config import TrainConfig
    from finetune_kit.tasks.compression.run.loop import run

    cuda = args.device.startswith("cuda")
    if cuda and not args.no_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    per_epoch = max(1, args.steps // args.epochs)
    milestone = max(1, round(args.epochs * 5 / 6))
    cfg = TrainConfig(data=args.data, model=args.model, lmbda=args.lmbda, epochs=args.epochs,
                      steps_per_epoch=per_epoch, batch_size=args.batch_size, patch_size=args.patch_size,
                      learning_rate=args.lr, lr_schedule="multistep", lr_milestones=[milestone] if milestone < args.epochs else [],
                      lr_gamma=0.1, val_fraction=0.1, val_max_batches=4, device=args.device, threads=args.threads,
                      wandb="disabled", progress=False, output_dir=args.output, name=f"{args.model}-lambda{args.lmbda:g}")
    t0 = time.perf_counter()
    final = run(cfg)
    train_s = time.perf_counter() - t0
    steps = per_epoch * args.epochs
    result = {"model": args.model, "lmbda": args.lmbda, "device": args.device, "tf32": cuda and not args.no_tf32,
              "steps": steps, "train_seconds": train_s, "steps_per_s": steps / train_s,
              "checkpoint": final["checkpoint"], "val_bpp": final.get("val_bpp"), "val_psnr": final.get("val_psnr")}
    print(f"trained {steps} steps in {train_s:.0f} s: {result['steps_per_s']:.2f} steps/s on {args.device}")
    if args.kodak_images:
        if cuda:  # code in full fp32 (the decoder need not know how the weights were trained)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        ev = run_eval(EvalConfig(checkpoints=[final["checkpoint"]], data=args.kodak, limit=args.kodak_images,
                                 output=Path(final["run_dir"]) / "kodak", device=args.device, progress=False))
        bpp, db = ev["results"]["bpp"][0], ev["results"]["psnr-rgb"][0]
        gap = psnr_gap(bpp, db, load_anchors(DEFAULT_ANCHORS)[REFERENCE])
        result.update(kodak_bpp=bpp, kodak_psnr=db, gap_db_vs_bmshj2018=gap, kodak_images=len(ev["images"]),
                      y_hat_exact=ev["y_hat_exact"][0])
        print(f"Kodak ({len(ev['images'])} images, real bitstreams): {bpp:.4f} bpp, {db:.2f} dB; "
              f"{gap:+.2f} dB below CompressAI's published bmshj2018-hyperprior at that rate")
    (Path(final["run_dir"]) / "base_result.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
