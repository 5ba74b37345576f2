"""Forgetting comparison on real data (issue 25): one command per table of docs/classification.md.

Runs ``compare`` (:func:`~finetune_kit.tasks.classification.compare.run_comparison`) of linear, lp_ft,
gradual, full, progressive, lora and full + L2-SP (the ``llrd`` alias of ``full`` with
``forgetting.l2_sp``), with WiSE-FT on the ``full`` run, on one backbone, and writes the table
(``comparison.md``, with the forgetting columns) and ``frontier.png`` in the comparison folder.

    python benchmarks/bench_forgetting.py --data acrima --weights ../shared/weights/mobilenetv2_100.in1k_int8dequant.pth
    python benchmarks/bench_forgetting.py --data fundus-dr-binary --weights ...  # normal vs any disease, split by patient

Reads ``../shared`` (``FINETUNE_KIT_SHARED``); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
from pathlib import Path

SHARED = Path(os.environ.get("FINETUNE_KIT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
STRATEGIES = ["linear", "lp_ft", "gradual", "full", "progressive", "lora", "llrd"]


def fundus_dr_binary(out: Path, seed: int = 0) -> Path:
    """``labels.csv`` of fundus-dr as ``normal`` vs ``disease`` (dme, npdr, pdr), split 70/15/15 by patient."""
    src = SHARED / "data" / "fundus-dr"
    rows = list(csv.DictReader(open(src / "labels.csv", newline="")))
    patients = sorted({r["patient_id"] for r in rows})
    random.Random(seed).shuffle(patients)
    n = len(patients)
    split = {p: "train" if i < 0.7 * n else "val" if i < 0.85 * n else "test" for i, p in enumerate(patients)}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "fundus_dr_binary.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        for r in rows:
            w.writerow([str(src / r["path"]), "normal" if r["label"] == "normal" else "disease", split[r["patient_id"]]])
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["acrima", "fundus-dr-binary"], default="acrima")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--img-size", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--l2-sp", default="0.01,0.01")
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-lr", type=float, default=1e-3, help="LoRA's learning rate (adapters need a larger one)")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--output-dir", default="runs/forgetting")
    ap.add_argument("--num-threads", type=int, default=1)
    args = ap.parse_args()

    from finetune_kit.tasks.classification.compare import run_comparison
    from finetune_kit.tasks.classification.config import ClassificationConfig, DataConfig

    if args.data == "acrima":
        data = DataConfig(data=str(SHARED / "data" / "acrima" / "images"), label_preset="acrima")
    else:
        data = DataConfig(data=str(fundus_dr_binary(Path(args.output_dir))), layout="csv", positive_class="disease")
    name = Path(args.weights).name.split(".")[0]
    base = ClassificationConfig(data=data, model_name=name, custom_weights_path=args.weights, img_size=args.img_size,
                                num_epochs=args.epochs, batch_size=32, num_threads=args.num_threads, wandb="disabled",
                                progress=False, output_dir=args.output_dir, experiment_tag=f"{args.data}-{name}",
                                # the settings of docs/classification.md's ACRIMA comparison
                                learning_rate=3e-4, head_lr_mult=10.0, warmup_epochs=0.5, gradual_patience=1,
                                unfreeze_schedule="1,2", unfreeze_warmup_epochs=1)
    per = {"linear": {"learning_rate": 5e-3}, "full": {"forgetting": {"wise_ft": True}},
           "llrd": {"forgetting": {"l2_sp": args.l2_sp}},
           "lora": {"strategy_kwargs": {"lora_rank": args.lora_rank}, "learning_rate": args.lora_lr}}
    strategies = args.strategies.split(",")
    res = run_comparison(base, strategies, args.output_dir, per_strategy={k: v for k, v in per.items() if k in strategies},
                         title=f"{args.data}, {name}, {args.img_size} px, {args.epochs} epochs "
                               f"(llrd = full + L2-SP {args.l2_sp})")
    print(res["markdown"])
    print("folder:", res["folder"])


if __name__ == "__main__":
    main()
