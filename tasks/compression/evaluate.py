"""Real-bitstream evaluation of compression models on an image folder (e.g. Kodak).

For every image: ``update(force=True)`` tables, ``compress`` (rANS), ``decompress``, then
real bpp (8 x bitstream bytes / pixels), estimated bpp (likelihoods of an eval-mode forward),
PSNR-RGB on the 8-bit rounded output (dB), MS-SSIM-RGB, encode and decode times (s), and,
for HPCM, real per-scale bpp and whether the decoder's y_hat equals the encoder's.
Results are written as CompressAI-style JSON (``{"name", "description", "results": {metric:
[one value per checkpoint]}}``) with per-image details beside. Means over the folder skip NaN
values (MS-SSIM is undefined below 161 px: such an image is named in one warning and left out of
the MS-SSIM mean only).

Devices (``device``, default ``cpu``): the transforms, the context model and the entropy
parameters run on the model's device; CompressAI's rANS coder runs on the CPU, so symbols,
indexes and CDF tables are copied there (``.tolist()``) and decoded symbols copied back. The
decoder reproduces the encoder's ``y_hat`` bit for bit when both run on the same device type
(CPU with CPU, the same GPU model with GPU): the context model's floating-point results must
match exactly, which holds for one device type but not across CPU and GPU.
"""
from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from finetune_kit.runs.checkpoint import atomic_write_text
from finetune_kit.runs.run_dir import environment_info, to_jsonable
from finetune_kit.tasks.compression.checkpoints import checkpoint_model_name, load_model
from finetune_kit.tasks.compression.config import DEFAULT_ANCHORS
from finetune_kit.tasks.compression.curve_names import checkpoint_family, group_by_family
from finetune_kit.tasks.compression.data import list_images, load_rgb, to_tensor
from finetune_kit.tasks.compression.metrics import MS_SSIM_MIN_SIDE, bpp_per_scale, ms_ssim, psnr, to_8bit
from finetune_kit.tasks.compression.models.hpcm.model import pad_to_multiple
from finetune_kit.tasks.compression.models.zoo import pad_multiple
from finetune_kit.tasks.compression.padding import PAD_MODES, crop_centred, pad_centred
from finetune_kit.tasks.compression.progress_bar import ProgressBar
from finetune_kit.tasks.compression.rd_curves import bd_metrics, load_anchors, plot_rd
from finetune_kit.tasks.compression.threads import apply_threads

__all__ = ["evaluate_image", "evaluate_model", "run_eval", "nan_mean"]


def nan_mean(values) -> float:
    """Mean of the finite-or-infinite values, ignoring NaN; NaN when every value is NaN (or none)."""
    kept = [float(v) for v in values if not (isinstance(v, float) and math.isnan(v))]
    return sum(kept) / len(kept) if kept else float("nan")


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock times cover it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate_image(model: nn.Module, x: torch.Tensor, *, pad: str = "edge") -> dict[str, Any]:
    """Code one image ``x [1, 3, H, W]`` for real and measure it.

    The model must be in eval mode with updated tables (``model.update(force=True)``). ``x`` is
    moved to the model's device. ``pad="edge"`` (default): non-HPCM models get the image padded
    right/bottom to a multiple of 64 px (edge replication) and the output cropped back; HPCM
    pads internally the same way. ``pad="centred"``: zeros, centred, to a multiple of
    lcm(256, the model's multiple), the centre cropped back, as the official HPCM ``test.py``
    (:mod:`finetune_kit.tasks.compression.padding`). Rates are per pixel of the original image.

    Raises:
        ValueError: unknown ``pad``.

    Returns:
        ``bpp`` (real), ``estimated_bpp``, ``psnr-rgb`` (dB), ``ms-ssim-rgb``,
        ``encoding_time``/``decoding_time`` (s), ``bytes``; for HPCM also ``bpp_s1``,
        ``bpp_s2``, ``bpp_s3``, ``bpp_z`` (real) and ``y_hat_exact`` (bool).
    """
    device = next(model.parameters()).device
    x = x.to(device)
    h, w = x.shape[-2:]
    num_pixels = h * w
    if pad == "centred":
        xp, _ = pad_centred(x, math.lcm(256, pad_multiple(model)))
    elif pad == "edge":
        xp = pad_to_multiple(x, pad_multiple(model))
    else:
        raise ValueError(f"pad must be one of {', '.join(PAD_MODES)}, got {pad!r}")
    _sync(device)
    t0 = time.perf_counter()
    enc = model.compress(xp)
    _sync(device)
    t1 = time.perf_counter()
    if "image_size" in enc:
        dec = model.decompress(enc["strings"], enc["shape"], enc["image_size"])
    else:
        dec = model.decompress(enc["strings"], enc["shape"])
    _sync(device)
    t2 = time.perf_counter()
    x_hat = to_8bit(crop_centred(dec["x_hat"], (h, w)) if pad == "centred" else dec["x_hat"][..., :h, :w])
    nbytes = sum(len(s) for strings in enc["strings"] for s in strings)
    est = bpp_per_scale(model(xp), num_pixels)
    res: dict[str, Any] = {
        "bpp": nbytes * 8.0 / num_pixels,
        "estimated_bpp": float(est["total"]),
        "psnr-rgb": psnr(x_hat, x),
        "ms-ssim-rgb": ms_ssim(x_hat, x),
        "encoding_time": t1 - t0,
        "decoding_time": t2 - t1,
        "bytes": nbytes,
    }
    if "y_hat" in enc and "y_hat" in dec:
        res["y_hat_exact"] = bool(torch.equal(enc["y_hat"], dec["y_hat"]))
        for name, strings in zip(("s1", "s2", "s3", "z"), enc["strings"]):
            res[f"bpp_{name}"] = sum(len(s) for s in strings) * 8.0 / num_pixels
        for k in ("s1", "s2", "s3"):
            res[f"estimated_bpp_{k}"] = float(est[k])
    return res


def evaluate_model(model: nn.Module, paths: Sequence[Path], *, progress: bool = False, pad: str = "edge") -> dict[str, Any]:
    """Evaluate ``model`` on image files ``paths``; returns ``{"per_image": {name: metrics}, "mean": {...}}``.

    ``pad``: ``"edge"`` (default) or ``"centred"`` (official HPCM evaluation), see :func:`evaluate_image`.

    Calls ``model.eval()`` and ``model.update(force=True)`` first; images go to the model's device.
    Means skip NaN values; images whose MS-SSIM is undefined (a side under 161 px) are named in
    one ``UserWarning``.
    """

    model.eval()
    model.update(force=True)
    per_image: dict[str, dict[str, Any]] = {}
    for p in ProgressBar(paths, description="images", enabled=progress):
        x = to_tensor(load_rgb(p)).unsqueeze(0)
        per_image[Path(p).name] = evaluate_image(model, x, pad=pad)
    keys = [k for k, v in next(iter(per_image.values())).items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    mean = {k: nan_mean(r[k] for r in per_image.values()) for k in keys}
    undefined = [n for n, r in per_image.items() if math.isnan(r.get("ms-ssim-rgb", 0.0))]
    if undefined:
        warnings.warn(f"MS-SSIM is undefined for {len(undefined)} image(s) with a side under {MS_SSIM_MIN_SIDE} px "
                      f"({', '.join(undefined[:5])}{' ...' if len(undefined) > 5 else ''}): left out of the MS-SSIM "
                      "mean", UserWarning, stacklevel=2)
    if any("y_hat_exact" in r for r in per_image.values()):
        mean["y_hat_exact"] = all(r.get("y_hat_exact", False) for r in per_image.values())
    return {"per_image": per_image, "mean": mean}


def run_eval(cfg: "EvalConfig", *, pad: Optional[str] = None) -> dict[str, Any]:  # noqa: F821
    """Run ``compress eval``: evaluate each checkpoint, write JSON, R-D plot and BD numbers.

    ``pad`` (``compress eval --pad``): ``"edge"`` or ``"centred"`` (default: ``cfg.pad`` if the
    config has one, else ``"edge"``); recorded in ``results.json``.

    Writes to ``cfg.output``: ``results.json`` (CompressAI-style, one value per checkpoint,
    sorted by rate), ``per_image.json``, ``rd.png`` and ``bd.json`` (BD-rate/BD-PSNR against
    ``cfg.anchor`` when anchors are available and there are enough points). Checkpoints of
    different model families (a base and its fine-tune: :mod:`.curve_names`) are separate curves
    in ``rd.png``, each with its own BD numbers; ``bd.json`` is then ``{"anchor", "families":
    {curve: bd}}`` (one family: the bd dict itself). Returns the combined dict.

    Raises:
        ValueError: the anchor curve is not in the anchors file.
    """

    _, note = apply_threads(cfg.threads)
    if note:
        print(note, file=sys.stderr)
    device = torch.device(getattr(cfg, "device", "cpu"))
    pad = pad or getattr(cfg, "pad", None) or "edge"
    if pad not in PAD_MODES:
        raise ValueError(f"--pad must be one of {', '.join(PAD_MODES)}, got {pad!r}")
    paths = list_images(cfg.data)
    if cfg.limit is not None:
        paths = paths[: cfg.limit]
    anchors_path: Optional[Path] = cfg.anchors or (DEFAULT_ANCHORS if DEFAULT_ANCHORS.is_file() else None)
    anchors = load_anchors(anchors_path) if anchors_path else {}
    if anchors and cfg.anchor not in anchors:
        raise ValueError(f"anchor {cfg.anchor!r} is not in {anchors_path}: use one of {', '.join(anchors)}")
    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)

    points = []
    names = set()
    for ckpt_path in cfg.checkpoints:
        model, ckpt = load_model(ckpt_path, cfg.model)
        model.to(device)
        model_name = cfg.model or checkpoint_model_name(ckpt)
        names.add(model_name)
        res = evaluate_model(model, paths, progress=cfg.progress, pad=pad)
        lmbda = (ckpt.get("config") or {}).get("lmbda")
        points.append({"checkpoint": str(ckpt_path), "lmbda": lmbda,
                       "family": checkpoint_family(ckpt, model_name or "model"), **res})
        if cfg.progress:
            m = res["mean"]
            print(f"{ckpt_path}: {m['bpp']:.4f} bpp (estimated {m['estimated_bpp']:.4f}), "
                  f"{m['psnr-rgb']:.2f} dB, enc {m['encoding_time']:.2f} s, dec {m['decoding_time']:.2f} s")
    points.sort(key=lambda p: p["mean"]["bpp"])
    name = cfg.name or "+".join(sorted(n for n in names if n))
    metric_keys = [k for k in points[0]["mean"] if k != "y_hat_exact"]
    results = {
        "name": name,
        "description": f"Inference (ans), real bitstreams, {len(paths)} images of {cfg.data}",
        "results": {k: [p["mean"][k] for p in points] for k in metric_keys},
        "checkpoints": [p["checkpoint"] for p in points],
        "lmbda": [p["lmbda"] for p in points],
        "y_hat_exact": [p["mean"].get("y_hat_exact") for p in points],
        "family": [p["family"] for p in points],
        "images": [Path(p).name for p in paths],
        "pad": pad,
        "environment": environment_info(),
    }
    atomic_write_text(json.dumps(to_jsonable(results), indent=2), out_dir / "results.json")
    atomic_write_text(json.dumps(to_jsonable({p["checkpoint"]: p["per_image"] for p in points}), indent=2),
                      out_dir / "per_image.json")
    families = group_by_family(results["family"])
    if len(families) == 1 and cfg.name:  # one curve: --name names it
        families = {name: families[results["family"][0]]}
    curves = {fam: {k: [results["results"][k][i] for i in idx] for k in ("bpp", "psnr-rgb")}
              for fam, idx in families.items()}
    bds = {fam: bd_metrics(anchors.get(cfg.anchor), c, method=cfg.bd_method, anchor_name=cfg.anchor) if anchors else
           {"anchor": cfg.anchor, "bd_rate": None, "bd_psnr": None, "reason": "no anchors file"}
           for fam, c in curves.items()}
    bd = next(iter(bds.values())) if len(bds) == 1 else {"anchor": cfg.anchor, "families": bds}
    atomic_write_text(json.dumps(to_jsonable(bd), indent=2), out_dir / "bd.json")
    plot_rd(curves, anchors, out_dir / "rd.png", title=f"{name} on {Path(cfg.data).name} ({len(paths)} image{'s' * (len(paths) != 1)})",
            bd=bds)
    results["bd"] = bd
    results["plot"] = str(out_dir / "rd.png")
    return results
