"""Benchmark: HPCM training step time vs a CompressAI architecture, and coding time per Kodak image.

Both models are measured in the same run, on the same crops of the same images, with the same
loss (``lambda*255^2*MSE + bpp``), Adam + aux Adam and gradient clipping. Ours goes through
``tasks.compression.training.train_one_epoch``; the CompressAI baseline through a plain
hand-written loop (the CompressAI example trainer's inner loop). Then each model (random
weights unless ``--checkpoint``) compresses and decompresses Kodak images with rANS.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_compression.py --model hpcm-small --baseline mbt2018-mean \
        --steps 10 --batch-size 4 --patch-size 128 --kodak-images 3 --threads 2

Prints results; nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import DataLoader, RandomSampler  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _loader(paths, patch, batch, steps, seed):
    from tasks.compression.data import RandomCropDataset

    ds = RandomCropDataset(paths, patch)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch, sampler=RandomSampler(ds, True, batch * steps, generator=g))


def bench_ours(model, paths, args) -> float:
    from tasks.compression.training import RateDistortion, build_optimizers, train_one_epoch

    opt, aux = build_optimizers(model)
    loss = RateDistortion(args.lmbda)
    train_one_epoch(model, _loader(paths, args.patch_size, args.batch_size, args.warmup, 1), opt, aux, loss)
    times = []
    train_one_epoch(model, _loader(paths, args.patch_size, args.batch_size, args.steps, 2), opt, aux, loss,
                    on_step=lambda i, v: times.append(time.perf_counter()))
    return statistics.median(b - a for a, b in zip(times, times[1:]))


def bench_plain(model, paths, args) -> float:
    """The CompressAI example trainer's inner loop, written out."""
    from compressai.losses import RateDistortionLoss

    params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    opt, aux = torch.optim.Adam(params, lr=1e-4), torch.optim.Adam(aux_params, lr=1e-3)
    criterion = RateDistortionLoss(lmbda=args.lmbda)
    model.train()

    def run(loader):
        stamps = []
        for x in loader:
            opt.zero_grad()
            aux.zero_grad()
            out = model(x)
            loss = criterion(out, x)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            model.aux_loss().backward()
            aux.step()
            stamps.append(time.perf_counter())
        return stamps

    run(_loader(paths, args.patch_size, args.batch_size, args.warmup, 1))
    t = run(_loader(paths, args.patch_size, args.batch_size, args.steps, 2))
    return statistics.median(b - a for a, b in zip(t, t[1:]))


@torch.no_grad()
def bench_coding(model, images) -> dict[str, float]:
    from tasks.compression.evaluate import evaluate_image

    model.eval()
    model.update(force=True)
    rows = [evaluate_image(model, x) for x in images]
    return {k: statistics.mean(r[k] for r in rows) for k in ("encoding_time", "decoding_time", "bpp", "estimated_bpp")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="hpcm-small", help="our model (default hpcm-small, 7.6 M parameters)")
    p.add_argument("--baseline", default="mbt2018-mean", help="CompressAI architecture (default mbt2018-mean N=128 M=192, 7.0 M)")
    p.add_argument("--checkpoint", type=Path, help="weights for our model in the coding benchmark (default: random)")
    p.add_argument("--data", type=Path, default=SHARED / "photos-train")
    p.add_argument("--kodak", type=Path, default=SHARED / "kodak")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per model (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--patch-size", type=int, default=128)
    p.add_argument("--lmbda", type=float, default=0.013)
    p.add_argument("--kodak-images", type=int, default=3, help="Kodak images coded per model (0 skips)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        sys.exit(f"{args.data} is absent: pass --data with a folder of training images")

    from tasks.compression.checkpoints import load_weights
    from tasks.compression.data import list_images, load_rgb, to_tensor
    from tasks.compression.zoo import build_model

    torch.manual_seed(0)
    paths = list_images(args.data)[:16]
    ours, base = build_model(args.model), build_model(args.baseline)
    n_ours = sum(p.numel() for p in ours.parameters()) / 1e6
    n_base = sum(p.numel() for p in base.parameters()) / 1e6
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size} x "
          f"{args.patch_size} px crops, {args.steps} timed steps")
    t_ours = bench_ours(ours, paths, args)
    t_base = bench_plain(base, paths, args)
    print(f"train step  {args.model:>22} ({n_ours:.1f} M): {t_ours * 1000:8.1f} ms")
    print(f"train step  {args.baseline:>22} ({n_base:.1f} M): {t_base * 1000:8.1f} ms  (plain loop)")
    print(f"ratio ours / CompressAI: {t_ours / t_base:.2f}x")
    if args.kodak_images and args.kodak.is_dir():
        if args.checkpoint:
            load_weights(ours, args.checkpoint, model_name=args.model)
        images = [to_tensor(load_rgb(p)).unsqueeze(0) for p in list_images(args.kodak)[: args.kodak_images]]
        for name, m in ((args.model, ours), (args.baseline, base)):
            r = bench_coding(m, images)
            print(f"coding {name:>22}: encode {r['encoding_time']:.3f} s, decode {r['decoding_time']:.3f} s per "
                  f"Kodak image ({len(images)} images; real {r['bpp']:.4f} bpp, estimated {r['estimated_bpp']:.4f})")


if __name__ == "__main__":
    main()
