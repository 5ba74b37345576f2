"""Rate and distortion measures for learned image compression.

Units: bits per pixel (bpp) = bits / (images x height x width) of the *original* (unpadded)
images; PSNR in dB for signals in [0, 1]; MS-SSIM in [0, 1] (Wang et al. 2003).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from pytorch_msssim import ms_ssim as _ms_ssim
from torch import Tensor

__all__ = ["bits", "bpp_per_scale", "psnr", "ms_ssim", "to_8bit", "MS_SSIM_MIN_SIDE"]

#: pytorch_msssim's 5-scale MS-SSIM with an 11-px window needs the smaller side > 160 px.
MS_SSIM_MIN_SIDE = 161


def bits(likelihoods: Tensor) -> Tensor:
    """Information content ``-log2(p)`` of every element, in bits (same shape, differentiable)."""
    return -torch.log2(likelihoods)


def bpp_per_scale(out: Mapping[str, Any], num_pixels: int) -> dict[str, Tensor]:
    """Estimated rate per coding scale, in bits per pixel (differentiable).

    Args:
        out: a model's ``forward`` output: ``likelihoods`` ``{"y": [B,M,h,w], "z": [B,N,h',w']}``
            and, for HPCM, ``y_scale_masks`` ``{"s1","s2","s3": bool like y}``.
        num_pixels: ``B * H * W`` of the original images.

    Returns:
        ``{"s1", "s2", "s3", "y", "z", "total"}`` (scalar tensors, bpp) for HPCM, where
        ``y = s1 + s2 + s3`` exactly (it is defined as that sum) and ``total = y + z``;
        ``{"y", "z", "total"}`` for models without ``y_scale_masks`` (CompressAI zoo models).
        Every other entry of ``likelihoods`` is added to ``total``.

    Raises:
        ValueError: ``num_pixels`` is not positive or ``likelihoods`` lacks ``y``.
    """
    if num_pixels <= 0:
        raise ValueError(f"num_pixels={num_pixels}: pass B*H*W of the input images")
    lik = out["likelihoods"]
    if "y" not in lik:
        raise ValueError(f"likelihoods has no 'y' entry (keys: {sorted(lik)}): not a y/z compression model output")
    y_bits = bits(lik["y"])
    res: dict[str, Tensor] = {}
    masks = out.get("y_scale_masks")
    if masks:
        for s in ("s1", "s2", "s3"):
            res[s] = torch.where(masks[s], y_bits, 0.0).sum() / num_pixels
        res["y"] = res["s1"] + res["s2"] + res["s3"]
    else:
        res["y"] = y_bits.sum() / num_pixels
    total = res["y"]
    for k, v in lik.items():
        if k == "y":
            continue
        res[k] = bits(v).sum() / num_pixels
        total = total + res[k]
    res.setdefault("z", total.new_zeros(()))
    res["total"] = total
    return res


def to_8bit(x: Tensor) -> Tensor:
    """Clamp to [0, 1] and round to the 8-bit grid (what a decoded PNG holds), still in [0, 1]."""
    return x.clamp(0, 1).mul(255).round().div(255)


def psnr(a: Tensor, b: Tensor, data_range: float = 1.0) -> float:
    """PSNR in dB between ``a`` and ``b`` (same shape); ``inf`` when identical."""
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


def ms_ssim(a: Tensor, b: Tensor) -> float:
    """MS-SSIM (pytorch_msssim, 5 scales, data range 1) of ``[B,3,H,W]`` images.

    Returns NaN when the smaller side is below :data:`MS_SSIM_MIN_SIDE` (undefined there).
    """
    if min(a.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return float("nan")

    return float(_ms_ssim(a.float(), b.float(), data_range=1.0).item())
