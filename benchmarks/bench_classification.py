#!/usr/bin/env python
"""Classification speed benchmarks on real ACRIMA images (not a timed test; prints figures).

Every comparison runs its sides in this process, alternating (the order rotates each repeat), for
``--repeats`` repeats (default 5), and prints per side the median and the min-max range, then the
ratio of the medians and the median (min-max) of the per-repeat paired ratios. A machine shared
with other jobs slows both sides of a pair alike, so one noisy repeat cannot decide.

1. ``loop``: training throughput (images/s over the training steps of an epoch, as
   ``metrics.jsonl``'s ``train_images_per_s``) of our loop (``fit_one_epoch`` + ``end_epoch``:
   strategy hooks, warm-up + cosine schedule, gradient clipping, validation and the checkpoint
   written per epoch) against a plain PyTorch loop doing the same training work: same model and
   weights, frozen BatchNorm, batch size, image size, the fundus augmentation on the same
   decoded-once images, label smoothing 0.1, AdamW (PyTorch defaults), an LR written per step,
   gradient clipping at the same norm. Target: ours >= 1.0x plain. Our whole epoch (validation and
   checkpoint included, which the plain loop does not do) is printed as images/s of wall time too.
   Each side runs one untimed warm-up epoch first.
2. ``probe``: the ``linear`` strategy end to end (``run_training`` wall seconds: build, feature
   extraction or epochs, the report with its bootstrap CIs, OOD detector and plots) and its
   training phase (``train_time_s``: feature extraction + solve or epochs) for three sides: the
   feature cache with the exact L-BFGS solve (the default), the feature cache with 10 AdamW epochs
   (``linear_probe_solver="epochs"``), and no feature cache with 10 epochs through the backbone.
   Target: the cached probe >= 10x faster end to end than the uncached 10 epochs. The decoded
   image cache is shared and filled before timing, so JPEG decoding counts on neither side.
3. ``options``: training images/s of ``full`` fine-tuning with ``--channels-last`` on vs off and
   ``--compile`` (``torch.compile``, inductor) on vs off. Both builds are made once; their epochs
   then alternate (the first, untimed epoch of a compiled model includes its compilation, printed
   in seconds). Compile is measured only with ``--with_compile``: on 2 shared CPU cores inductor's
   C++ code generation + gcc took 457 s before the first MobileNetV2 training step, and it
   compiles again for the last, smaller batch and for eval mode. It is skipped, with the reason,
   when no C++ compiler is found or ``torch.compile`` fails on a tiny module.

Defaults: 96 ACRIMA images (half glaucoma; split 80/10/10), MobileNetV2 with the shared
ImageNet weights at 160 px, batch 16, 1 torch thread; ``--quick``: 64 images. Units: images/s
(throughput) and seconds (wall). Exits 0 with a "skipped" message when the images or the weights
are absent. Usage::

    python benchmarks/bench_classification.py [--quick] [--repeats 5] [--only loop probe options] [--with_compile]
        [--data DIR] [--weights FILE] [--img_size 160] [--images 96] [--threads 1] [--device cpu]
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402

QUIET = Console(file=io.StringIO())  # the runs' per-epoch lines are not the benchmark's output
ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FINETUNE_KIT_SHARED", ROOT.parent / "shared"))
DEFAULT_DATA = SHARED / "data" / "acrima" / "images"
DEFAULT_WEIGHTS = SHARED / "weights" / "mobilenetv2_100.in1k_int8dequant.pth"


# ---------------------------------------------------------------------------------------------
# protocol: alternate the sides, summarise medians and spread


def alternate(sides: dict, repeats: int) -> dict[str, list[float]]:
    """Call each side once per repeat, rotating the order every repeat (A B C, B C A, ...).

    Args:
        sides: name -> zero-argument callable returning one measurement (a float, or a dict
            whose ``"value"`` is the measurement; the dicts are kept under ``name + "/raw"``).
        repeats: how many measurements per side.

    Returns:
        name -> list of ``repeats`` measurements, in repeat order.
    """
    names, out = list(sides), {}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            v = sides[name]()
            if isinstance(v, dict):
                out.setdefault(name + "/raw", []).append(v)
                v = v["value"]
            out.setdefault(name, []).append(float(v))
    return out


def spread(values) -> str:
    """``median (min-max, n=N)`` of ``values``."""
    v = np.asarray(values, dtype=float)
    return f"{np.median(v):.2f} (min-max {v.min():.2f}-{v.max():.2f}, n={len(v)})"


def ratio(num, den) -> tuple[float, str]:
    """Ratio of the medians of ``num`` and ``den`` and the median (min-max) of the paired
    per-repeat ratios, as ``(ratio of medians, text)``."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    r = num / den
    rm = float(np.median(num) / np.median(den))
    return rm, f"{rm:.3f}x (paired per repeat: median {np.median(r):.3f}x, min-max {r.min():.3f}-{r.max():.3f}x)"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ---------------------------------------------------------------------------------------------
# data and configs


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
    """A run config over ``folder`` with the benchmark's model, size, batch, threads and device;
    ``kw`` overrides fields."""
    from finetune_kit.tasks.classification.config import ClassificationConfig, DataConfig

    base = dict(model_name=args.model, img_size=args.img_size, batch_size=args.batch_size,
                custom_weights_path=str(args.weights), wandb="disabled", progress=False, output_dir=str(out),
                learning_rate=3e-4, num_threads=args.threads, device=args.device, num_workers=0)
    base.update(kw)
    return ClassificationConfig(data=DataConfig(data=str(folder), label_preset="acrima", val_fraction=0.1,
                                                test_fraction=0.1), **base)


def ours_state(cfg, cache):
    """A built and started :class:`TrainingRun` of ``cfg`` (our loop's state), epochs not run."""
    from finetune_kit.tasks.classification.setup import build, start_run

    return start_run(build(cfg, image_cache=cache, console=QUIET))


class OursEpochs:
    """Successive epochs of our loop on one state: each call runs ``fit_one_epoch`` + ``end_epoch``
    and returns the record's training images/s (``value``) and images/s of the whole epoch's wall
    time (``wall_ips``, validation and checkpoint included)."""

    def __init__(self, cfg, cache, write: bool = True):
        self.state, self.epoch, self.write = ours_state(cfg, cache), 0, write

    def __call__(self) -> dict:
        from finetune_kit.tasks.classification.loop import end_epoch, fit_one_epoch

        t0 = time.perf_counter()
        rec = fit_one_epoch(self.state, self.epoch)
        if self.write:
            end_epoch(self.state, rec)
        wall = time.perf_counter() - t0
        self.epoch += 1
        n = len(self.state.data.train)
        return {"value": rec["train_images_per_s"], "wall_ips": n / wall, "wall_s": wall}


class PlainEpochs:
    """A plain PyTorch loop over the same images; each call trains one epoch and returns images/s.

    DataLoader (shuffled, batch ``cfg.optim.batch_size``) -> fundus augmentation of the cached uint8
    image -> batched normalisation -> forward, label-smoothed cross-entropy, backward, gradient
    clipping at ``cfg.optim.grad_clip``, an LR written to every group per step (cosine), AdamW step.
    BatchNorm layers stay in eval mode when our run freezes their statistics (``bn_stats``)."""

    def __init__(self, cfg, cache, samples):
        from finetune_kit.tasks.classification.config import resolved_bn_stats
        from finetune_kit.tasks.classification.model import build_model
        from finetune_kit.tasks.classification.transforms import build_transforms, normalize_batch

        torch.manual_seed(0)
        self.model, _ = build_model(cfg.model.model_name, 2, custom_weights_path=cfg.model.custom_weights_path)
        self.tf = build_transforms(self.model, cfg.transforms.img_size, augment="fundus", seed=0)
        self.device = torch.device(cfg.runtime.device)
        self.model.to(self.device).train()
        if resolved_bn_stats(cfg) == "frozen":
            for m in self.model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.learning_rate)
        self.crit = torch.nn.CrossEntropyLoss(label_smoothing=cfg.optim.smoothing)
        self.cfg, self.normalize, self.step = cfg, normalize_batch, 0
        tf = self.tf

        class DS(torch.utils.data.Dataset):
            def __len__(self):
                return len(samples)

            def __getitem__(self, i):
                return np.ascontiguousarray(tf.train(image=cache.get(samples[i].path))["image"]), samples[i].label

        self.loader = torch.utils.data.DataLoader(DS(), batch_size=cfg.optim.batch_size, shuffle=True,
                                                  pin_memory=self.device.type == "cuda")
        self.total = 1000 * len(self.loader)

    def __call__(self) -> float:
        cfg, model, opt, n = self.cfg, self.model, self.opt, 0
        t0 = time.perf_counter()
        for x, y in self.loader:
            x = self.normalize(x, self.tf.mean, self.tf.std).to(self.device, non_blocking=True)
            y = y.to(self.device)
            o = cfg.optim
            lr = o.min_lr + 0.5 * (o.learning_rate - o.min_lr) * (1 + np.cos(np.pi * self.step / self.total))
            for g in opt.param_groups:
                g["lr"] = lr
            loss = self.crit(model(x), y)
            opt.zero_grad()
            loss.backward()
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            opt.step()
            self.step += 1
            n += len(y)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return n / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# the three comparisons


def bench_loop(args, folder, out, cache, train) -> bool:
    """Our loop vs the plain loop; returns whether the target (>= 1.0x) is met."""
    cfg = config(folder, out, args, ft_strategy="full", num_epochs=args.repeats + 1, augment="fundus")
    ours, plain = OursEpochs(cfg, cache), PlainEpochs(cfg, cache, train)
    ours(), plain()  # warm-up epochs (allocator, oneDNN primitives), untimed
    res = alternate({"ours": ours, "plain": plain}, args.repeats)
    r, text = ratio(res["ours"], res["plain"])
    wall = [d["wall_ips"] for d in res["ours/raw"]]
    ck = [d["wall_s"] for d in res["ours/raw"]]
    print("\n[1] training throughput, images/s (full fine-tuning, fundus augmentation)")
    print(f"  ours  (train steps)      {spread(res['ours'])}")
    print(f"  plain PyTorch loop       {spread(res['plain'])}")
    print(f"  ratio ours/plain         {text}  target >= 1.0x: {verdict(r >= 1.0)}")
    print(f"  ours, whole epoch wall (train + validation + checkpoint): {spread(wall)} img/s, "
          f"epoch {spread(ck)} s")
    return r >= 1.0


def bench_probe(args, folder, out, cache) -> bool:
    """The linear probe with/without the feature cache; returns whether >= 10x end to end."""
    from finetune_kit.tasks.classification.train import run_training

    def side(**kw):
        def run():
            c = config(folder, out, args, ft_strategy="linear", augment="none", learning_rate=5e-3,
                       linear_probe_epochs=args.lp_epochs, **kw)
            t0 = time.perf_counter()
            res = run_training(c, image_cache=cache, console=QUIET)
            total = time.perf_counter() - t0
            shutil.rmtree(res["run_dir"], ignore_errors=True)
            return {"value": total, "train_s": res["train_time_s"], "auroc": res["test"].get("auroc"),
                    "ref": (res.get("reference_logreg") or {}).get("test_auroc")}
        return run

    sides = {"cached exact (L-BFGS)": side(feature_cache=True, linear_probe_solver="lbfgs"),
             f"cached {args.lp_epochs} epochs": side(feature_cache=True, linear_probe_solver="epochs"),
             f"uncached {args.lp_epochs} epochs": side(feature_cache=False, linear_probe_solver="epochs")}
    res = alternate(sides, args.repeats)
    names = list(sides)
    unc = names[2]
    print(f"\n[2] linear probe, seconds (end to end = run_training wall; training = feature extraction + "
          f"solve/epochs)")
    for n in names:
        raw = res[n + "/raw"]
        tr = [d["train_s"] for d in raw]
        rest = [d["value"] - d["train_s"] for d in raw]
        print(f"  {n:26s} end to end {spread(res[n])} s; training {spread(tr)} s; rest (build, report) "
              f"{spread(rest)} s; test AUROC {raw[0]['auroc']:.4f} (logreg reference {raw[0]['ref']})")
    ok = True
    for n in names[:2]:
        r, text = ratio(res[unc], res[n])
        rt, text_t = ratio([d["train_s"] for d in res[unc + "/raw"]], [d["train_s"] for d in res[n + "/raw"]])
        ok = ok and r >= 10
        print(f"  speed-up of {n} over {unc}: end to end {text}  target >= 10x: {verdict(r >= 10)}")
        print(f"  {'':>26s} training phase {text_t}")
    return ok


def compile_works() -> str | None:
    """None when ``torch.compile`` (inductor) runs a tiny module here, else the reason it cannot."""
    cc = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cc:
        return "no C++ compiler (g++/clang++) on PATH: inductor generates and compiles C++ on CPU"
    try:
        f = torch.compile(torch.nn.Linear(4, 2))
        f(torch.randn(3, 4)).sum().backward()
    except Exception as exc:  # noqa: BLE001 - the reason is printed
        return f"torch.compile failed on a tiny module: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None


def bench_options(args, folder, out, cache) -> None:
    """--channels-last and --compile on vs off (training images/s of ``full``)."""
    def cfg(**kw):
        return config(folder, out, args, ft_strategy="full", num_epochs=args.repeats + 1, augment="fundus", **kw)

    print("\n[3] options, training images/s (full fine-tuning; our loop, validation per epoch, no checkpoints)")
    pairs = [("--channels-last", "channels_last")]
    why = compile_works() if args.with_compile else (
        "pass --with_compile (inductor took 457 s to compile MobileNetV2's first training step on this 2-core "
        "machine, before the recompiles for the last batch and eval mode)")
    if why is None:
        pairs.append(("--compile", "compile"))
    for flag, field in pairs:
        on, off = OursEpochs(cfg(**{field: True}), cache, write=False), OursEpochs(cfg(), cache, write=False)
        t0 = time.perf_counter()
        on()
        first = time.perf_counter() - t0
        off()
        res = alternate({"on": on, "off": off}, args.repeats)
        r, text = ratio(res["on"], res["off"])
        print(f"  {flag:16s} on  {spread(res['on'])}")
        print(f"  {'':16s} off {spread(res['off'])}")
        print(f"  {'':16s} on/off {text}; first (untimed) epoch with it on: {first:.1f} s")
    if why is not None:
        print(f"  --compile        not measured: {why}")


def main() -> int:
    """Parse the options, run the comparisons, print their figures; returns the exit code (0)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ACRIMA image folder")
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="mobilenetv2_100 ImageNet weights (.pth)")
    ap.add_argument("--model", default="mobilenetv2_100")
    ap.add_argument("--img_size", type=int, default=160, help="network input side, pixels")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--images", type=int, default=None, help="ACRIMA images used, 80%% train (default 96; --quick 64)")
    ap.add_argument("--lp_epochs", type=int, default=10, help="epochs of the trained linear probes")
    ap.add_argument("--repeats", type=int, default=5, help="alternating repeats per comparison (>= 5 to decide)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (both sides)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (every side runs there)")
    ap.add_argument("--quick", action="store_true", help="64 images instead of 96")
    ap.add_argument("--with_compile", action="store_true", help="also measure --compile (compiles for minutes)")
    ap.add_argument("--only", nargs="+", choices=["loop", "probe", "options"], default=["loop", "probe", "options"])
    args = ap.parse_args()
    for what, path, ok in (("ACRIMA images", args.data, args.data.is_dir()),
                           ("MobileNetV2 weights", args.weights, args.weights.is_file())):
        if not ok:
            print(f"skipped: {what} not found at {path} (pass --data/--weights or set FINETUNE_KIT_SHARED)")
            return 0
    if args.model != "mobilenetv2_100":
        sys.exit("--model: the shared weights are mobilenetv2_100's; this benchmark uses that model")
    args.images = args.images or (64 if args.quick else 96)
    torch.set_num_threads(args.threads)

    from finetune_kit.tasks.classification.data import discover, stratified_split
    from finetune_kit.tasks.classification.transforms import ImageCache, cache_size_for

    t_all = time.perf_counter()
    folder = subset_folder(args.data, args.images)
    out = Path(tempfile.mkdtemp(prefix="bench-runs-"))
    cache = ImageCache(cache_size_for(args.model, args.img_size))
    images = discover(config(folder, out, args).data)
    cache.load([s.path for s in images.samples])
    stratified_split(images, val_fraction=0.1, test_fraction=0.1, seed=0)
    train = images.subset("train")
    print(f"{len(images.samples)} ACRIMA images ({len(train)} train), {args.model} at {args.img_size} px, batch "
          f"{args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device}, "
          f"{args.repeats} alternating repeats per comparison; figures: median (min-max)")
    results = {}
    if "loop" in args.only:
        results["loop >= 1.0x plain"] = bench_loop(args, folder, out, cache, train)
    if "probe" in args.only:
        results["cached probe >= 10x uncached (end to end)"] = bench_probe(args, folder, out, cache)
    if "options" in args.only:
        bench_options(args, folder, out, cache)
    print("\n" + "; ".join(f"{k}: {verdict(v)}" for k, v in results.items())
          + f"; benchmark wall time {time.perf_counter() - t_all:.0f} s")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
