"""Benchmark: HPCM training step time vs a CompressAI architecture, and coding time per Kodak image.

Both models are measured in the same run, on the same crops of the same images, with the same
loss (``lambda*255^2*MSE + bpp``), Adam + aux Adam and gradient clipping. Ours goes through
``finetune_kit.tasks.compression.engine.train_one_epoch``; the CompressAI baseline through a plain
hand-written loop (the CompressAI example trainer's inner loop). Then each model (random
weights unless ``--checkpoint``) compresses and decompresses Kodak images with rANS.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_compression.py --model hpcm-small --baseline mbt2018-mean \
        --steps 10 --batch-size 4 --patch-size 128 --kodak-images 3 --threads 2
    # against a model with a context module of a similar size: CompressAI's ELIC at N=48, M=136
    # (8.3 M parameters; its channel context alone is 4.6 M at any N, M) vs hpcm-small (7.6 M)
    .venv/bin/python benchmarks/bench_compression.py --model hpcm-small --baseline elic2022-chandelier \
        --batch-size 8 --patch-size 128 --threads 1 --rounds 5 --steps 10 --kodak-images 0 --profile

The two models alternate in ``--rounds`` rounds (>= 5) of ``steps / rounds`` steps each, so both
see the same machine load; printed: the median step time over all timed steps, and the spread
(min-max of the per-round medians). ``--profile`` adds the top operators of one step of each
(torch.profiler, CPU self time); ``--flops`` the GFLOP of a training step of each (torch's flop
counter) and the GFLOP/s each reached, which tells a gap of work from a gap of efficiency.
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

SHARED = Path(os.environ.get("FINETUNE_KIT_SHARED") or Path(__file__).resolve().parents[2] / "shared") / "data"


def _loader(paths, patch, batch, steps, seed):
    from finetune_kit.tasks.compression.data import RandomCropDataset

    ds = RandomCropDataset(paths, patch)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch, sampler=RandomSampler(ds, True, batch * steps, generator=g))


class OursRunner:
    """Our model trained through ``train_one_epoch`` (the project's building block)."""

    def __init__(self, model, args):
        from finetune_kit.tasks.compression.objectives.rate_distortion import RateDistortionLoss
        from finetune_kit.tasks.compression.engine import build_optimizers

        self.model, self.args = model, args
        self.opt, self.aux = build_optimizers(model)
        self.loss = RateDistortionLoss(args.lmbda)

    def steps(self, loader) -> list[float]:
        from finetune_kit.tasks.compression.engine import train_one_epoch

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


def bench_training(ours, base, paths, args) -> tuple[list[float], list[float], list[float], list[float]]:
    """Step times (s) of both models, measured in alternating rounds on the same batches:
    ``(ours all steps, baseline all steps, ours per-round medians, baseline per-round medians)``.

    Alternating rounds make both see the same machine load (this machine is shared).
    """
    a, b = OursRunner(ours, args), PlainRunner(base, args)
    a.steps(_loader(paths, args.patch_size, args.batch_size, args.warmup, 1))
    b.steps(_loader(paths, args.patch_size, args.batch_size, args.warmup, 1))
    t_a, t_b, r_a, r_b = [], [], [], []
    per_round = max(1, args.steps // args.rounds)
    for r in range(args.rounds):
        sa = a.steps(_loader(paths, args.patch_size, args.batch_size, per_round, 10 + r))
        sb = b.steps(_loader(paths, args.patch_size, args.batch_size, per_round, 10 + r))
        t_a, t_b = t_a + sa, t_b + sb
        r_a.append(statistics.median(sa))
        r_b.append(statistics.median(sb))
    return t_a, t_b, r_a, r_b


def profile_step(runner, paths, args, top: int = 12) -> str:
    """The ``top`` operators by CPU self time of two training steps of ``runner`` (torch.profiler),
    then the ``top`` (operator, input shapes) pairs."""
    from torch.profiler import ProfilerActivity, profile

    loader = _loader(paths, args.patch_size, args.batch_size, 2, 99)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        runner.steps(loader)
    by_op = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=top)
    return f"{by_op}\n(by input shapes)\n{by_shape}"


def step_gflop(model, args) -> float:
    """GFLOP of one training step (forward, R-D loss, backward) of ``model`` on a batch of
    ``batch_size x 3 x patch x patch`` (torch.utils.flop_counter: convolutions, matmuls, attention)."""
    from compressai.losses import RateDistortionLoss
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.train()
    x = torch.rand(args.batch_size, 3, args.patch_size, args.patch_size)
    counter = FlopCounterMode(display=False)
    with counter:
        RateDistortionLoss(lmbda=args.lmbda)(model(x), x)["loss"].backward()
    model.zero_grad(set_to_none=True)
    model.train(was)
    return counter.get_total_flops() / 1e9


def _baseline_kwargs(args) -> dict:
    """``--baseline-n/--baseline-m``; ELIC defaults to N=48, M=136 (8.3 M, near hpcm-small's 7.6 M)."""
    kw = {}
    if args.baseline == "elic2022-chandelier":
        kw = {"N": 48, "M": 136}
    if args.baseline_n:
        kw["N"] = args.baseline_n
    if args.baseline_m:
        kw["M"] = args.baseline_m
    return kw


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
    p.add_argument("--rounds", type=int, default=5, help="alternating measurement rounds (same load for both; >= 5)")
    p.add_argument("--baseline-n", type=int, default=None, help="N of the baseline (ELIC default 48)")
    p.add_argument("--baseline-m", type=int, default=None, help="M of the baseline (ELIC default 136)")
    p.add_argument("--profile", action="store_true", help="print the top operators of a step of each model")
    p.add_argument("--flops", action="store_true", help="print the GFLOP of one training step of each model and "
                                                        "the GFLOP/s each reached")
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
    ours, base = build_model(args.model), build_model(args.baseline, **_baseline_kwargs(args))
    n_ours = sum(p.numel() for p in ours.parameters()) / 1e6
    n_base = sum(p.numel() for p in base.parameters()) / 1e6
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size} x "
          f"{args.patch_size} px crops, {args.steps} timed steps")
    all_a, all_b, r_a, r_b = bench_training(ours, base, paths, args)
    t_ours, t_base = statistics.median(all_a), statistics.median(all_b)
    kw = _baseline_kwargs(args)
    label = args.baseline + (f" N={kw['N']} M={kw['M']}" if kw else "")
    print(f"train step  {args.model:>30} ({n_ours:.1f} M): median {t_ours * 1000:8.1f} ms, per-round medians "
          f"{min(r_a) * 1000:.0f}-{max(r_a) * 1000:.0f} ms ({len(all_a)} steps, {args.rounds} rounds)")
    print(f"train step  {label:>30} ({n_base:.1f} M): median {t_base * 1000:8.1f} ms, per-round medians "
          f"{min(r_b) * 1000:.0f}-{max(r_b) * 1000:.0f} ms (plain loop)")
    ratios = [x / y for x, y in zip(r_a, r_b)]
    print(f"ratio ours / CompressAI: {t_ours / t_base:.2f}x (per round {min(ratios):.2f}-{max(ratios):.2f}x)")
    if args.flops:
        for name, m, t in ((args.model, ours, t_ours), (label, base, t_base)):
            g = step_gflop(m, args)
            print(f"flops {name:>30}: {g:.1f} GFLOP per training step, {g / t:.1f} GFLOP/s at the median step time")
    if args.profile:
        print(f"\n--- {args.model}: top operators of 2 steps (CPU self time) ---")
        print(profile_step(OursRunner(ours, args), paths, args))
        print(f"--- {label}: top operators of 2 steps ---")
        print(profile_step(PlainRunner(base, args), paths, args))
    if args.kodak_images and args.kodak.is_dir():
        if args.checkpoint:
            load_weights(ours, args.checkpoint, model_name=args.model)
        images = [to_tensor(load_rgb(p)).unsqueeze(0) for p in list_images(args.kodak)[: args.kodak_images]]
        for name, r in bench_coding({args.model: ours, args.baseline: base}, images).items():
            print(f"coding {name:>22}: encode {r['encoding_time']:.3f} s, decode {r['decoding_time']:.3f} s per "
                  f"Kodak image ({len(images)} images; real {r['bpp']:.4f} bpp, estimated {r['estimated_bpp']:.4f})")


if __name__ == "__main__":
    main()
