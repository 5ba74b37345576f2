#!/usr/bin/env python
"""Classification benchmarks on real ACRIMA images (not a timed test; prints figures).

1. Training throughput (images/s) of our loop (``run_training``: strategy hooks, AdamW, warm-up +
   cosine, gradient clipping, checkpoints) against a plain PyTorch loop doing the same work:
   same model, batch size, image size, the same fundus augmentation on the same decoded-once
   images, AdamW, forward/backward/step only. Target: ours >= 0.95x plain. For context, a
   naive plain loop that decodes and resizes every JPEG every epoch is measured too.
2. Linear probing over 10 epochs with the feature cache against without it (same run
   otherwise: no random augmentation, head only). Target: >= 5x faster.

Both sides of each comparison run in this process, alternating, best of ``--repeats``, so a
machine shared with other jobs affects them alike. Usage::

    python benchmarks/bench_classification.py [--data DIR] [--model mobilenetv2_100] [--img_size 224]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import io  # noqa: E402

from rich.console import Console  # noqa: E402

QUIET = Console(file=io.StringIO())  # the runs' per-epoch lines are not the benchmark's output
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("FINETUNE_KIT_SHARED", ROOT.parent / "shared")) / "data" / "acrima" / "images"
DEFAULT_WEIGHTS = DEFAULT_DATA.parents[2] / "weights" / "mobilenetv2_100.in1k_int8dequant.pth"


def subset_folder(data: Path, n: int) -> Path:
    """A temp folder of symlinks to ``n`` ACRIMA images (half glaucoma, half normal)."""
    files = sorted(p.resolve() for p in data.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    g = [p for p in files if "_g_" in p.name][: n // 2]
    o = [p for p in files if "_g_" not in p.name][: n - len(g)]
    out = Path(tempfile.mkdtemp(prefix="bench-acrima-"))
    for p in g + o:
        os.symlink(p, out / p.name)
    return out


def config(folder: Path, out: Path, args, **kw):
    """A run config over ``folder`` (the benchmark's subset) with the benchmark's model, size,
    batch, device and precision; ``kw`` overrides fields."""
    from finetune_kit.tasks.classification.config import ClassificationConfig, DataConfig

    weights = str(args.weights) if args.weights and Path(args.weights).is_file() and args.model == "mobilenetv2_100" else None
    base = dict(model_name=args.model, img_size=args.img_size, batch_size=args.batch_size, custom_weights_path=weights,
                wandb="disabled", progress=False, output_dir=str(out), learning_rate=3e-4, num_threads=args.threads,
                device=args.device, amp=args.amp, amp_dtype=args.amp_dtype, num_workers=args.num_workers)
    base.update(kw)
    return ClassificationConfig(data=DataConfig(data=str(folder), label_preset="acrima", val_fraction=0.1,
                                                test_fraction=0.1), **base)


def plain_loop(cfg, cache, samples, epochs: int, decode_every_time: bool = False) -> float:
    """Images/s of a minimal loop: DataLoader -> augmentation -> normalise -> forward/backward/AdamW
    (with ``cfg.amp``: autocast and a GradScaler, as ``finetune_kit.amp`` resolves them)."""
    import cv2

    from finetune_kit.amp import resolve_amp

    from finetune_kit.tasks.classification.model import build_model
    from finetune_kit.tasks.classification.transforms import build_transforms, crop_to_fov, decode_image, normalize_batch

    torch.manual_seed(0)
    model, _ = build_model(cfg.model_name, 2, custom_weights_path=cfg.custom_weights_path)
    tf = build_transforms(model, cfg.img_size, augment="fundus", seed=0)
    device = torch.device(cfg.device)
    amp = resolve_amp(cfg.amp, device, cfg.amp_dtype)
    scaler = amp.grad_scaler()
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(samples)

        def __getitem__(self, i):
            s = samples[i]
            if decode_every_time:
                img = cv2.resize(crop_to_fov(decode_image(s.path)), (tf.cache_size,) * 2, interpolation=cv2.INTER_AREA)
            else:
                img = cache.get(s.path)
            return np.ascontiguousarray(tf.train(image=img)["image"]), s.label

    loader = torch.utils.data.DataLoader(DS(), batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                                         pin_memory=device.type == "cuda")
    model.train()
    from finetune_kit.tasks.classification.config import resolved_bn_stats

    if resolved_bn_stats(cfg) == "frozen":  # same work as our loop: pretrained BatchNorm statistics kept (eval mode)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    t0, n = time.perf_counter(), 0
    for _ in range(epochs):
        for x, y in loader:
            x, y = normalize_batch(x, tf.mean, tf.std).to(device, non_blocking=True), y.to(device)
            with amp.autocast():
                loss = crit(model(x).float(), y)
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            n += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - t0)


def main() -> None:
    """Parse the options, run the two comparisons and print their figures and ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--model", default="mobilenetv2_100")
    ap.add_argument("--img_size", type=int, default=224)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--images", type=int, default=160, help="ACRIMA images used (80%% train)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per throughput measurement")
    ap.add_argument("--lp_epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (both loops run there)")
    ap.add_argument("--amp", action="store_true", help="mixed precision in both loops")
    ap.add_argument("--num_workers", type=int, default=0, help="DataLoader workers in both loops")
    ap.add_argument("--amp_dtype", default="auto", choices=["auto", "bf16", "fp16"])
    ap.add_argument("--skip", choices=["throughput", "probe"], default=None)
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"ACRIMA images not found at {args.data}: pass --data DIR (or set FINETUNE_KIT_SHARED)")
    if args.threads:
        torch.set_num_threads(args.threads)

    from finetune_kit.tasks.classification.data import discover, stratified_split
    from finetune_kit.tasks.classification.train import run_training
    from finetune_kit.tasks.classification.transforms import ImageCache, cache_size_for

    folder = subset_folder(args.data, args.images)
    out = Path(tempfile.mkdtemp(prefix="bench-runs-"))
    cfg = config(folder, out, args, ft_strategy="full", num_epochs=args.epochs, augment="fundus")
    cache = ImageCache(cache_size_for(args.model, args.img_size))
    images = discover(cfg.data)
    cache.load([s.path for s in images.samples])
    stratified_split(images, val_fraction=0.1, test_fraction=0.1, seed=0)
    train = images.subset("train")
    print(f"{len(images.samples)} ACRIMA images ({len(train)} train), {args.model} at {args.img_size} px, "
          f"batch {args.batch_size}, torch threads {torch.get_num_threads()}, device {args.device}"
          + (f", amp {args.amp_dtype}" if args.amp else "") + f", {args.num_workers} loader workers")

    if args.skip != "throughput":
        ours, plain, naive = [], [], []
        for r in range(args.repeats):
            plain.append(plain_loop(cfg, cache, train, args.epochs))
            res = run_training(cfg, image_cache=cache, console=QUIET)
            ours.append(float(np.mean([h["train_images_per_s"] for h in _history(res)])))
        naive.append(plain_loop(cfg, cache, train, 1, decode_every_time=True))
        o, p = max(ours), max(plain)
        print(f"training throughput: ours {o:.2f} img/s, plain PyTorch loop {p:.2f} img/s -> ratio {o / p:.3f}x "
              f"(target >= 0.95x); naive plain loop decoding JPEGs every epoch {max(naive):.2f} img/s")
        print(f"  all runs: ours {[round(v, 2) for v in ours]}, plain {[round(v, 2) for v in plain]}")

    if args.skip != "probe":
        times = {}
        for r in range(args.repeats):
            for use in (True, False):
                c = config(folder, out, args, ft_strategy="linear", linear_probe_epochs=args.lp_epochs, augment="none",
                           feature_cache=use, learning_rate=5e-3)
                t0 = time.perf_counter()
                res = run_training(c, image_cache=cache, console=QUIET)
                total = time.perf_counter() - t0
                times.setdefault(use, []).append((total, res["train_time_s"], res["test"].get("auroc")))
        wc, wo = min(times[True]), min(times[False])
        print(f"linear probe, {args.lp_epochs} epochs: with feature cache {wc[0]:.1f} s (training {wc[1]:.1f} s), "
              f"without {wo[0]:.1f} s (training {wo[1]:.1f} s) -> {wo[0] / wc[0]:.1f}x end to end, "
              f"{wo[1] / wc[1]:.1f}x training phase (target >= 5x); test AUROC {wc[2]:.4f} vs {wo[2]:.4f}")


def _history(res):
    import json

    return [json.loads(x) for x in (Path(res["run_dir"]) / "metrics.jsonl").read_text().splitlines()]


if __name__ == "__main__":
    main()
