"""Benchmark: HPCM training step time vs a CompressAI architecture, and coding time per Kodak image.

Both models are measured in the same run, on the same crops of the same images, with the same
loss (``lambda*255^2*MSE + bpp``), Adam + aux Adam and gradient clipping. Ours goes through
``finetune_kit.tasks.compression.training.train_one_epoch``; the CompressAI baseline through a plain
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
    from finetune_kit.tasks.compression.data import RandomCropDataset

    ds = RandomCropDataset(paths, patch)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch, sampler=RandomSampler(ds, True, batch * steps, generator=g))


class OursRunner:
    """Our model trained through ``train_one_epoch`` (the project's building block)."""

    def __init__(self, model, args):
        from finetune_kit.tasks.compression.training import RateDistortion, build_optimizers

        self.model, self.args = model, args
        self.opt, self.aux = build_optimizers(model)
        self.loss = RateDistortion(args.lmbda)

    def steps(self, loader) -> list[float]:
        from finetune_kit.tasks.compression.training import train_one_epoch

        stamps = [time.perf_counter()]
        train_one_epoch(self.model, loader, self.opt, self.aux, self.loss,
                        on_step=lambda i, v: stamps.append(time.perf_counter()))
        return [b - a for a, b in zip(stamps, stamps[1:])]


class PlainRunner:
    """The CompressAI example trainer's inner loop, written out."""

    def __init__(self, model, args):
        from compressai.losses import RateDistortionLoss

        self.model = model
        params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
        aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
        self.opt = torch.optim.Adam(params, lr=1e-4)
        self.aux = torch.optim.Adam(aux_params, lr=1e-3)
        self.criterion = RateDistortionLoss(lmbda=args.lmbda)

    def steps(self, loader) -> list[float]:
        self.model.train()
        stamps = [time.perf_counter()]
        for x in loader:
            self.opt.zero_grad()
            self.aux.zero_grad()
            out = self.model(x)
            loss = self.criterion(out, x)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.model.aux_loss().backward()
            self.aux.step()
            stamps.append(time.perf_counter())
        return [b - a for a, b in zip(stamps, stamps[1:])]


def bench_training(ours, base, paths, args) -> tuple[float, float]:
    """Median step time (s) of both models, measured in alternating rounds on the same batches.

    Alternating rounds make both see the same machine load (this machine is shared).
    """
    a, b = OursRunner(ours, args), PlainRunner(base, args)
    a.steps(_loader(paths, args.patch_size, args.batch_size, args.warmup, 1))
    b.steps(_loader(paths, args.patch_size, args.batch_size, args.warmup, 1))
    t_a, t_b = [], []
    per_round = max(1, args.steps // args.rounds)
    for r in range(args.rounds):
        t_a += a.steps(_loader(paths, args.patch_size, args.batch_size, per_round, 10 + r))
        t_b += b.steps(_loader(paths, args.patch_size, args.batch_size, per_round, 10 + r))
    return statistics.median(t_a), statistics.median(t_b)


@torch.no_grad()
def bench_coding(models, images) -> dict[str, dict[str, float]]:
    """Mean encode/decode time (s) and rates per model, images interleaved between models."""
    from finetune_kit.tasks.compression.evaluate import evaluate_image

    for m in models.values():
        m.eval()
        m.update(force=True)
    rows: dict[str, list] = {n: [] for n in models}
    for x in images:
        for n, m in models.items():
            rows[n].append(evaluate_image(m, x))
    return {n: {k: statistics.mean(r[k] for r in rs) for k in ("encoding_time", "decoding_time", "bpp", "estimated_bpp")}
            for n, rs in rows.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="hpcm-small", help="our model (default hpcm-small, 7.6 M parameters)")
    p.add_argument("--baseline", default="mbt2018-mean", help="CompressAI architecture (default mbt2018-mean N=128 M=192, 7.0 M)")
    p.add_argument("--checkpoint", type=Path, help="weights for our model in the coding benchmark (default: random)")
    p.add_argument("--data", type=Path, default=SHARED / "photos-train")
    p.add_argument("--kodak", type=Path, default=SHARED / "kodak")
    p.add_argument("--steps", type=int, default=12, help="timed training steps per model (median reported)")
    p.add_argument("--rounds", type=int, default=4, help="alternating measurement rounds (same load for both)")
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

    from finetune_kit.tasks.compression.checkpoints import load_weights
    from finetune_kit.tasks.compression.data import list_images, load_rgb, to_tensor
    from finetune_kit.tasks.compression.models.zoo import build_model

    torch.manual_seed(0)
    paths = list_images(args.data)[:16]
    ours, base = build_model(args.model), build_model(args.baseline)
    n_ours = sum(p.numel() for p in ours.parameters()) / 1e6
    n_base = sum(p.numel() for p in base.parameters()) / 1e6
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size} x "
          f"{args.patch_size} px crops, {args.steps} timed steps")
    t_ours, t_base = bench_training(ours, base, paths, args)
    print(f"train step  {args.model:>22} ({n_ours:.1f} M): {t_ours * 1000:8.1f} ms")
    print(f"train step  {args.baseline:>22} ({n_base:.1f} M): {t_base * 1000:8.1f} ms  (plain loop)")
    print(f"ratio ours / CompressAI: {t_ours / t_base:.2f}x")
    if args.kodak_images and args.kodak.is_dir():
        if args.checkpoint:
            load_weights(ours, args.checkpoint, model_name=args.model)
        images = [to_tensor(load_rgb(p)).unsqueeze(0) for p in list_images(args.kodak)[: args.kodak_images]]
        for name, r in bench_coding({args.model: ours, args.baseline: base}, images).items():
            print(f"coding {name:>22}: encode {r['encoding_time']:.3f} s, decode {r['decoding_time']:.3f} s per "
                  f"Kodak image ({len(images)} images; real {r['bpp']:.4f} bpp, estimated {r['estimated_bpp']:.4f})")


if __name__ == "__main__":
    main()
