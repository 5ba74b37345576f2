"""The one rate-distortion criterion of the compression commands.

``loss = lmbda * 255^2 * MSE + bpp`` (``metric="mse"``, MSE of [0, 1] images) or
``lmbda * (1 - MS-SSIM) + bpp`` (``"ms-ssim"``), as ``compressai.losses.RateDistortionLoss``
(Ballé et al., "Variational image compression with a scale hyperprior", ICLR 2018, Eq. 1;
the 255^2 scaling is CompressAI's convention, used by the HPCM paper, Sec. 4.1). The
distortion weight (``lmbda * 255^2`` or ``lmbda``) is computed here only
(:attr:`RateDistortionLoss.distortion_weight`); the hierarchical and balanced objectives of
``compress finetune`` split the :class:`RDComponents` of :meth:`RateDistortionLoss.components`
instead of recomputing them. Rates are estimated from the likelihoods, in bits per pixel of
the original image (bpp), per HPCM coding scale when the model reports ``y_scale_masks``.

The criterion is registered in CompressAI's registry as :data:`CRITERION_NAME`
(``compressai.registry.CRITERIONS["RateDistortionLoss_finetune_kit"](lmbda=0.013)`` builds it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch.nn.functional as F
from compressai.registry import register_criterion
from pytorch_msssim import ms_ssim
from torch import Tensor, nn

from finetune_kit.tasks.compression.metrics import bpp_per_scale

__all__ = ["RDComponents", "RateDistortionLoss", "METRICS", "CRITERION_NAME"]

METRICS = ("mse", "ms-ssim")

#: the key of :class:`RateDistortionLoss` in ``compressai.registry.CRITERIONS`` (CompressAI's own
#: ``RateDistortionLoss`` keeps its key)
CRITERION_NAME = "RateDistortionLoss_finetune_kit"


@dataclass
class RDComponents:
    """The measured pieces of one batch's R-D loss (differentiable scalar tensors unless noted).

    Attributes:
        err: ``x_hat - x``, ``[B, 3, H, W]`` (for frequency splits of the distortion).
        mse: mean squared error over [0, 1] pixels.
        bpp: :func:`~finetune_kit.tasks.compression.metrics.bpp_per_scale` of the batch
            (``y``, ``z``, ``total``, plus ``s1``..``s3`` for HPCM), bits per pixel.
        distortion_weight: ``lmbda * 255^2``, the weight of the MSE (a float, from
            :attr:`RateDistortionLoss.mse_weight`).
    """

    err: Tensor
    mse: Tensor
    bpp: dict[str, Tensor]
    distortion_weight: float

    @property
    def weighted_mse(self) -> Tensor:
        """``lmbda * 255^2 * MSE``: the distortion term of the MSE loss."""
        return self.distortion_weight * self.mse

    @property
    def rd(self) -> Tensor:
        """The MSE R-D cost ``lmbda * 255^2 * MSE + bpp`` (scalar tensor)."""
        return self.weighted_mse + self.bpp["total"]


@register_criterion(CRITERION_NAME)
class RateDistortionLoss(nn.Module):
    """Rate-distortion loss with measured per-scale rates (after ``compressai.losses.RateDistortionLoss``).

    Args:
        lmbda: R-D trade-off (> 0; HPCM paper MSE models: 0.0018 ... 0.0483).
        metric: ``"mse"`` (default) or ``"ms-ssim"`` (needs crops of at least 161 px).

    ``forward(out, x)`` with ``x [B, 3, H, W]`` in [0, 1] and ``out`` the model's forward output
    (``x_hat``, ``likelihoods``, optional ``y_scale_masks``) returns a dict of scalar tensors:
    ``loss``, ``bpp_loss`` (bpp of all likelihoods), ``mse_loss`` (always; detached for MS-SSIM),
    ``ms_ssim_loss`` (MS-SSIM metric only), ``bpp_y``, ``bpp_z`` and, for HPCM, ``bpp_s1``,
    ``bpp_s2``, ``bpp_s3``.

    Raises:
        ValueError: ``lmbda <= 0`` or an unknown metric.
    """

    def __init__(self, lmbda: float, metric: str = "mse") -> None:
        super().__init__()
        if lmbda <= 0:
            raise ValueError(f"lmbda={lmbda}: must be positive (paper: 0.0018 ... 0.0483)")
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r}: use 'mse' or 'ms-ssim'")
        self.lmbda, self.metric = lmbda, metric

    @property
    def mse_weight(self) -> float:
        """``lmbda * 255^2``: the weight of MSE (on [0, 1] pixels) in the R-D cost."""
        return self.lmbda * 255 ** 2

    @property
    def distortion_weight(self) -> float:
        """Weight of the distortion term: ``lmbda * 255^2`` for MSE, ``lmbda`` for ``1 - MS-SSIM``."""
        return self.mse_weight if self.metric == "mse" else self.lmbda

    def components(self, out: Mapping[str, Any], x: Tensor) -> RDComponents:
        """Error, MSE and per-scale bpp of one batch (see :class:`RDComponents`).

        Raises:
            ValueError: ``out["likelihoods"]`` has no ``y`` (not a y/z compression model output).
        """
        n, _, h, w = x.shape
        err = out["x_hat"] - x
        return RDComponents(err=err, mse=err.pow(2).mean(), bpp=bpp_per_scale(out, n * h * w),
                            distortion_weight=self.mse_weight)

    def forward(self, out: Mapping[str, Any], x: Tensor) -> dict[str, Tensor]:
        c = self.components(out, x)
        res: dict[str, Tensor] = {"bpp_loss": c.bpp["total"]}
        if self.metric == "mse":
            res["mse_loss"] = c.mse
            res["loss"] = c.rd
        else:
            res["ms_ssim_loss"] = ms_ssim(out["x_hat"], x, data_range=1)
            res["loss"] = self.distortion_weight * (1 - res["ms_ssim_loss"]) + c.bpp["total"]
            res["mse_loss"] = F.mse_loss(out["x_hat"].detach(), x)
        res.update({f"bpp_{k}": v for k, v in c.bpp.items() if k != "total"})
        return res
