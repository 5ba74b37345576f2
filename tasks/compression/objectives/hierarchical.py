"""Hierarchical (per-scale) rate-distortion tasks for HPCM fine-tuning.

The R-D loss ``lambda * 255^2 * MSE + bpp`` (MSE of [0, 1] images, bpp = bits / pixels of the
original image) is split into tasks, each named after what it measures:

``measured`` (default)
    rate: ``rate_s1``, ``rate_s2``, ``rate_s3`` (bits of the y elements coded at each HPCM scale:
    s1 = 4x sub-sampled y, s2 = 2x, s3 = full-resolution y; from ``forward()``'s
    ``y_scale_masks`` via :func:`finetune_kit.tasks.compression.metrics.bpp_per_scale`) and ``rate_z`` (the
    hyperprior). Distortion: ``dist_fine``, ``dist_mid``, ``dist_coarse``, the squared error
    split by spatial frequency with an orthonormal Haar pyramid of the error ``x_hat - x``
    (level-1 details, level-2 details, and everything coarser: level >= 3 details plus the
    low-pass residual, with ``levels = 3``). The Haar transform is orthonormal, so by Parseval
    the three bands sum *exactly* to the MSE and the seven tasks sum to the R-D loss.
    ``pyramid="laplacian"`` uses a Laplacian pyramid (Burt & Adelson, 1983; 2x2 average pooling,
    nearest up-sampling) instead: the classical multi-scale split, but over-complete, so its
    bands only approximately sum to the MSE.
``fixed``
    the user's guides: total distortion split 0.40 / 0.35 / 0.25 and total bpp split
    0.30 / 0.40 / 0.30 over s1 / s2 / s3 (tasks ``dist_s1..3``, ``rate_s1..3``). The guides list
    five tasks but give three distortion ratios; we keep all three distortion shares so the
    tasks still sum to the R-D loss. Every task is then a fixed fraction of one of two numbers,
    so weighting them only rescales distortion vs rate: kept for reproducing the guides.
``adaptive``
    the ``fixed`` tasks, but the split ratios are learned: logits initialised at the guides'
    ratios take one gradient step per training step (``ratio_lr``) on the cross-entropy between
    the measured shares (per-scale rate, Haar bands) and ``softmax(logits)``. The ratios track
    the model's real split, smoothed over steps.

Pairing with coding scales (for per-scale gamma, modulation and early stopping): coarse / z ->
s1, mid -> s2, fine -> s3 (frequency order, a convention, not a causal attribution).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from finetune_kit.distributed import all_reduce_mean
from finetune_kit.tasks.compression.objectives.config import SCALES
from finetune_kit.tasks.compression.objectives.rate_distortion import RDComponents, RateDistortionLoss

__all__ = ["DECOMPOSITIONS", "FIXED_DIST_RATIOS", "FIXED_RATE_RATIOS", "RDTerms", "HierarchicalRDLoss",
           "haar_band_energies", "laplacian_band_energies"]

DECOMPOSITIONS = ("measured", "fixed", "adaptive")
FIXED_DIST_RATIOS = (0.40, 0.35, 0.25)  # s1, s2, s3 (the guides)
FIXED_RATE_RATIOS = (0.30, 0.40, 0.30)



def _pad_even(x: Tensor) -> Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (0, w % 2, 0, h % 2)) if (h % 2 or w % 2) else x


def haar_band_energies(err: Tensor, levels: int = 3) -> list[Tensor]:
    """Squared-error energy per band of an orthonormal Haar pyramid of ``err [B, C, H, W]``.

    Returns ``levels + 1`` scalar tensors ``[detail_1 (finest), ..., detail_levels, lowpass]``,
    each the *sum* of squared coefficients; they sum to ``(err ** 2).sum()`` exactly (zero
    padding of odd sides adds no energy). Differentiable.
    """
    out = []
    ll = err
    for _ in range(levels):
        ll = _pad_even(ll)
        a, b = ll[..., 0::2, 0::2], ll[..., 0::2, 1::2]
        c, d = ll[..., 1::2, 0::2], ll[..., 1::2, 1::2]
        lh, hl, hh = (a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2
        out.append(lh.pow(2).sum() + hl.pow(2).sum() + hh.pow(2).sum())
        ll = (a + b + c + d) / 2
    out.append(ll.pow(2).sum())
    return out


def laplacian_band_energies(err: Tensor, levels: int = 3) -> list[Tensor]:
    """Energy per band of a Laplacian pyramid of ``err`` (``levels`` band-pass bands, finest first,
    then the low-pass residual), each band's squared sum weighted by ``4**k`` (its pixel count
    ratio to full resolution). Over-complete: the sum only approximates ``(err ** 2).sum()``."""
    out = []
    g = err
    for k in range(levels):
        g = _pad_even(g)
        down = F.avg_pool2d(g, 2)
        band = g - F.interpolate(down, scale_factor=2, mode="nearest")
        out.append(band.pow(2).sum() * 4 ** k)
        g = down
    out.append(g.pow(2).sum() * 4 ** levels)
    return out


@dataclass
class RDTerms:
    """The pieces of one batch's R-D loss.

    Attributes:
        tasks: ``{task: scalar tensor}``; distortion tasks in ``lambda * 255^2 * MSE`` units, rate
            tasks in bpp (differentiable).
        mse: MSE of ``x_hat`` vs ``x`` ([0, 1] images). bpp: estimated total bpp. rd: ``lambda*255^2*mse + bpp``.
        bpp_scales: ``{s1, s2, s3, y, z, total}`` estimated bpp (floats, for logs).
        scale_costs: per-scale R-D cost ``{s1, s2, s3}`` (floats): ``dist + rate`` of the tasks paired
            with each scale (z counts with s1); sums to ``rd`` for measured-Haar and fixed splits.
    """

    tasks: dict[str, Tensor]
    mse: Tensor
    bpp: Tensor
    rd: Tensor
    bpp_scales: dict[str, float] = field(default_factory=dict)
    scale_costs: dict[str, float] = field(default_factory=dict)


class HierarchicalRDLoss(torch.nn.Module):
    """Split the R-D loss into per-scale tasks (see the module docstring).

    Args:
        lmbda: R-D trade-off of ``lambda * 255^2 * MSE + bpp`` (e.g. 0.0067).
        decomposition: ``measured`` (default), ``fixed`` or ``adaptive``.
        pyramid: ``haar`` (exact split, default) or ``laplacian``.
        levels: pyramid levels (default 3: fine, mid, coarse >= level 3).
        ratio_lr: step size of the learned split ratios (``adaptive``). Default 0.05.

    Raises:
        ValueError: unknown decomposition or pyramid, ``levels`` < 2.
    """

    def __init__(self, lmbda: float, *, decomposition: str = "measured", pyramid: str = "haar", levels: int = 3,
                 ratio_lr: float = 0.05) -> None:
        super().__init__()
        if decomposition not in DECOMPOSITIONS:
            raise ValueError(f"unknown decomposition {decomposition!r}: use one of {', '.join(DECOMPOSITIONS)}")
        if pyramid not in ("haar", "laplacian"):
            raise ValueError(f"unknown pyramid {pyramid!r}: use 'haar' (exact) or 'laplacian'")
        if levels < 2:
            raise ValueError(f"levels={levels}: need at least 2 pyramid levels for three distortion bands")
        self.lmbda, self.decomposition, self.pyramid, self.levels = float(lmbda), decomposition, pyramid, int(levels)
        self.criterion = RateDistortionLoss(self.lmbda)  # the measured terms and lambda * 255^2 (no state)
        self.ratio_lr = float(ratio_lr)
        # learned split-ratio logits (adaptive); buffers so they ride along in state_dict()
        self.register_buffer("dist_logits", torch.tensor(FIXED_DIST_RATIOS).log())
        self.register_buffer("rate_logits", torch.tensor(FIXED_RATE_RATIOS).log())

    @property
    def task_names(self) -> list[str]:
        """Task names in a fixed order."""
        if self.decomposition == "measured":
            return ["dist_coarse", "dist_mid", "dist_fine", "rate_s1", "rate_s2", "rate_s3", "rate_z"]
        return ["dist_s1", "dist_s2", "dist_s3", "rate_s1", "rate_s2", "rate_s3"]

    def ratios(self) -> dict[str, list[float]]:
        """Current split ratios (s1, s2, s3) of distortion and rate (``fixed``/``adaptive``)."""
        if self.decomposition == "fixed":
            return {"dist": list(FIXED_DIST_RATIOS), "rate": list(FIXED_RATE_RATIOS)}
        return {"dist": torch.softmax(self.dist_logits, 0).tolist(), "rate": torch.softmax(self.rate_logits, 0).tolist()}

    def _bands(self, err: Tensor) -> list[Tensor]:
        fn = haar_band_energies if self.pyramid == "haar" else laplacian_band_energies
        e = fn(err, self.levels)
        n = err.numel()
        return [e[0] / n, e[1] / n, sum(e[2:]) / n]  # fine, mid, coarse (MSE units)

    def forward(self, out: Mapping[str, Any], x: Tensor, components: RDComponents | None = None) -> RDTerms:
        """Tasks of one batch: ``out`` is the model's forward output, ``x`` the input ``[B, 3, H, W]``.

        The tasks split the terms of :meth:`RateDistortionLoss.components
        <finetune_kit.tasks.compression.objectives.rate_distortion.RateDistortionLoss.components>` (pass them as
        ``components`` when already measured); distortion tasks are in ``lambda * 255^2 * MSE`` units.

        Raises:
            ValueError: ``measured``/``adaptive`` on a model without ``y_scale_masks`` (CompressAI zoo
                models have no per-scale rate: use ``--decomposition fixed`` or an HPCM model).
        """
        c = components if components is not None else self.criterion.components(out, x)
        mse, bpp, err, k = c.mse, c.bpp, c.err, c.distortion_weight
        has_scales = "s1" in bpp
        if self.decomposition != "fixed" and not has_scales:
            raise ValueError(f"decomposition {self.decomposition!r} needs per-scale rates (y_scale_masks), which this "
                             "model's forward() does not return: use an HPCM model or --decomposition fixed")
        fine, mid, coarse = self._bands(err) if self.decomposition != "fixed" else (None, None, None)
        if self.decomposition == "measured":
            tasks = {"dist_coarse": k * coarse, "dist_mid": k * mid, "dist_fine": k * fine,
                     "rate_s1": bpp["s1"], "rate_s2": bpp["s2"], "rate_s3": bpp["s3"], "rate_z": bpp["z"]}
            costs = {"s1": tasks["dist_coarse"] + tasks["rate_s1"] + tasks["rate_z"],
                     "s2": tasks["dist_mid"] + tasks["rate_s2"], "s3": tasks["dist_fine"] + tasks["rate_s3"]}
        else:
            if self.decomposition == "adaptive":
                self._learn_ratios(torch.stack([coarse, mid, fine]).detach(),
                                   torch.stack([bpp["s1"] + bpp["z"], bpp["s2"], bpp["s3"]]).detach())
            r = self.ratios()
            tasks = {f"dist_{s}": k * mse * r["dist"][i] for i, s in enumerate(SCALES)}
            tasks.update({f"rate_{s}": bpp["total"] * r["rate"][i] for i, s in enumerate(SCALES)})
            costs = {s: tasks[f"dist_{s}"] + tasks[f"rate_{s}"] for s in SCALES}
        return RDTerms(tasks=tasks, mse=mse, bpp=bpp["total"], rd=c.rd,
                       bpp_scales={n: float(v.detach()) for n, v in bpp.items()},
                       scale_costs={s: float(v.detach()) for s, v in costs.items()})

    @torch.no_grad()
    def _learn_ratios(self, dist: Tensor, rate: Tensor) -> None:
        """One step of ``logits -= ratio_lr * d CE(share, softmax(logits)) / d logits`` (= softmax - share)."""
        if not self.training:
            return
        dist, rate = all_reduce_mean(dist), all_reduce_mean(rate)  # DDP: the global batch's shares on every rank
        for logits, values in ((self.dist_logits, dist), (self.rate_logits, rate)):
            total = values.sum()
            if not math.isfinite(float(total)) or float(total) <= 0:
                continue
            share = (values / total).to(logits)
            logits -= self.ratio_lr * (torch.softmax(logits, 0) - share)
