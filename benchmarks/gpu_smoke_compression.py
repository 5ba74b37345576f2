"""GPU smoke test: train HPCM a few steps on a device, then code Kodak images there with rANS.

Checks what ``--device cuda`` promises: training runs on the device, ``compress``/``decompress``
work with the model on the device (CompressAI's rANS coder runs on the CPU, fed from the device),
and the decoder's ``y_hat`` equals the encoder's (bit-exact on the same device type). Also decodes
the device's bitstreams with a CPU copy of the model, to show whether *cross-device* decoding
happens to match (not promised: floating-point results differ between CPU and GPU).

Usage (from the repository root; data default to ../shared/data)::

    .venv/bin/python benchmarks/gpu_smoke_compression.py --device cuda --steps 20 --images 2

Prints the timings (seconds; GPU work synchronized before each clock read) and the checks;
``--json FILE`` writes them too. Exit status 1 when a same-device decode is not bit-exact.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

SHARED = Path(os.environ.get("FINETUNE_KIT_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--model", default="hpcm-tiny", help="model name (default hpcm-tiny)")
    ap.add_argument("--data", type=Path, default=SHARED / "photos-train", help="training images")
    ap.add_argument("--kodak", type=Path, default=SHARED / "kodak", help="test images")
    ap.add_argument("--steps", type=int, default=20, help="training steps (default 20)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--patch-size", type=int, default=256)
    ap.add_argument("--images", type=int, default=2, help="Kodak images to code (default 2)")
    ap.add_argument("--lmbda", type=float, default=0.0483)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    from torch.utils.data import DataLoader, RandomSampler

    from finetune_kit.tasks.compression.config import check_device
    from finetune_kit.tasks.compression.data import RandomCropDataset, list_images, load_rgb, to_tensor
    from finetune_kit.tasks.compression.evaluate import evaluate_image
    from finetune_kit.tasks.compression.objectives.rate_distortion import RateDistortionLoss
    from finetune_kit.tasks.compression.engine import build_optimizers, train_one_epoch
    from finetune_kit.tasks.compression.models.zoo import build_model

    try:
        device = torch.device(check_device(args.device))
    except ValueError as exc:
        ap.error(str(exc))
    torch.manual_seed(args.seed)
    info = {"device": str(device), "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "model": args.model}
    print(f"device {info['device']} ({info['name']}), torch {info['torch']}, model {args.model}")

    # -- training steps on the device ---------------------------------------------------
    model = build_model(args.model).to(device)
    opt, aux = build_optimizers(model, lr=1e-4)
    ds = RandomCropDataset(list_images(args.data), args.patch_size)
    g = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(ds, batch_size=args.batch_size,
                        sampler=RandomSampler(ds, True, args.batch_size * args.steps, generator=g))
    stamps: list[float] = []

    def on_step(i, values):
        _sync(device)
        stamps.append(time.perf_counter())

    _sync(device)
    stamps.append(time.perf_counter())
    res = train_one_epoch(model, loader, opt, aux, RateDistortionLoss(args.lmbda), on_step=on_step)
    step_times = [b - a for a, b in zip(stamps, stamps[1:])]
    steady = step_times[2:] or step_times
    info["train"] = {"steps": res["steps"], "batch": args.batch_size, "patch": args.patch_size,
                     "first_step_s": step_times[0], "median_step_s": statistics.median(steady),
                     "loss": res["loss"], "bpp": res["bpp_loss"]}
    print(f"train: {res['steps']} steps of {args.batch_size} x {args.patch_size} px, first {step_times[0]:.3f} s, "
          f"median {statistics.median(steady):.3f} s/step, loss {res['loss']:.3f}, bpp {res['bpp_loss']:.3f}")

    # -- real bitstreams on the device, and decoding them on the CPU ---------------------
    model.eval()
    model.update(force=True)
    cpu_model = build_model(args.model)
    cpu_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    cpu_model.eval()
    images = []
    ok = True
    for path in list_images(args.kodak)[: args.images]:
        x = to_tensor(load_rgb(path)).unsqueeze(0)
        r = evaluate_image(model, x)  # compress + decompress on the device, timed
        with torch.no_grad():
            enc = model.compress(x.to(device))
            t0 = time.perf_counter()
            dec_cpu = cpu_model.decompress(enc["strings"], enc["shape"], enc.get("image_size"))
            cpu_dec_s = time.perf_counter() - t0
        cross = bool(torch.equal(enc["y_hat"].cpu(), dec_cpu["y_hat"])) if "y_hat" in dec_cpu else None
        row = {"image": path.name, "bpp": r["bpp"], "estimated_bpp": r["estimated_bpp"], "psnr": r["psnr-rgb"],
               "encode_s": r["encoding_time"], "decode_s": r["decoding_time"],
               "y_hat_exact_same_device": r.get("y_hat_exact"), "y_hat_exact_device_to_cpu": cross,
               "cpu_decode_s": cpu_dec_s}
        images.append(row)
        ok &= r.get("y_hat_exact", True)
        print(f"{path.name}: {r['bpp']:.4f} bpp (estimated {r['estimated_bpp']:.4f}), {r['psnr-rgb']:.2f} dB, "
              f"encode {r['encoding_time']:.3f} s, decode {r['decoding_time']:.3f} s on {device.type}; "
              f"y_hat bit-exact on {device.type}: {r.get('y_hat_exact')}; decoded on cpu ({cpu_dec_s:.2f} s): "
              f"bit-exact {cross}")
    info["images"] = images
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(info, indent=2))
        print(f"wrote {args.json}")
    print("OK: same-device decoding is bit-exact" if ok else "FAIL: a same-device decode differs from the encoder")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
