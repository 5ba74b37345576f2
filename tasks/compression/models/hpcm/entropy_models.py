"""Entropy models of the official HPCM code, as CompressAI entropy models.

- :class:`GeneralizedGaussianConditional` (y): a ``compressai.entropy_models.GaussianConditional``
  whose standardized distribution is the generalized Gaussian (generalized normal) with a fixed
  shape ``beta`` (official: 1.5), density ``beta / (2 Gamma(1/beta)) exp(-|x|^beta)`` at unit
  scale; likelihoods, ``update()`` (quantized CDF tables per scale-table entry), ``build_indexes``,
  ``compress``/``decompress`` (CompressAI's rANS) are CompressAI's own code paths.
- :class:`MeanScaleHyperLatent` (z): a learned mean and scale per channel (``[1, N, 1, 1]``
  each, 2N parameters) with the same generalized-Gaussian distribution; z is coded as
  ``round(z - mean)`` (training: straight-through rounding around the mean, likelihood of the
  noisy residual). One CDF table per channel; no auxiliary loss.

Defaults follow the official code (github.com/lyq133/LIC-HPCM, ``src/entropy_models`` and
``test.py``): beta 1.5, scale lower bound 0.12, likelihood bound 1e-9, tail mass 1e-6, and
the scale table :func:`paper_scale_table` (60 levels, log-spaced from 0.12 to 64).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import scipy.stats
import torch
from torch import Tensor, nn

from compressai.entropy_models import EntropyModel
from compressai.ops import LowerBound

from finetune_kit.tasks.compression.models.training_noise import GaussianConditional, training_noise

__all__ = ["GeneralizedGaussianConditional", "MeanScaleHyperLatent", "gennorm_cdf", "paper_scale_table",
           "PAPER_BETA", "PAPER_SCALE_BOUND"]

PAPER_BETA = 1.5
PAPER_SCALE_BOUND = 0.12


def paper_scale_table(levels: int = 60, low: float = 0.12, high: float = 64.0) -> Tensor:
    """Log-spaced scale table of the official evaluation (``test.py``: 60 levels, 0.12 to 64)."""
    return torch.exp(torch.linspace(math.log(low), math.log(high), levels))


class _GenNormCDF(torch.autograd.Function):
    """CDF of the unit-scale generalized normal; gradient = its density (finite at 0)."""

    @staticmethod
    def forward(ctx, x: Tensor, beta: Tensor) -> Tensor:  # type: ignore[override]
        a = 1.0 / beta
        p = torch.abs(x).pow(beta)
        tail = 0.5 * torch.special.gammaincc(a.expand_as(p), p)  # P(X > |x|), precise in the tail
        ctx.save_for_backward(p, beta)
        return torch.where(x < 0, tail, 1.0 - tail)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        p, beta = ctx.saved_tensors
        density = torch.exp(-p - torch.lgamma(1.0 / beta)) * beta / 2
        return grad * density, None


def gennorm_cdf(x: Tensor, beta: Tensor | float) -> Tensor:
    """CDF of the generalized normal with shape ``beta`` and unit scale, elementwise on ``x``.

    ``F(x) = 1/2 + sign(x) P(1/beta, |x|^beta) / 2`` (``P`` the regularized lower incomplete
    gamma function), computed from the upper one in both tails for precision.
    """
    b = beta if isinstance(beta, Tensor) else torch.tensor(float(beta))
    return _GenNormCDF.apply(x, b.to(x.dtype).to(x.device))


class GeneralizedGaussianConditional(GaussianConditional):
    """Conditional generalized-Gaussian entropy model for y (HPCM official code, ``GGM``).

    Args:
        scale_table: scales of the coder's CDF tables (default: none until ``update_scale_table``;
            :meth:`HPCM.update` passes :func:`paper_scale_table`).
        beta: shape (default 1.5, a fixed buffer ``beta`` as in the official checkpoints).
        scale_bound: lower bound of the scales (default 0.12).
        tail_mass: probability mass left out of the CDF tables, coded with the escape code
            (default 1e-6 as the official tables).
        index_rounding: how a scale picks its table entry for coding: ``"nearest"`` (default:
            the nearest entry in log scale) or ``"up"`` (the next larger entry, as CompressAI and
            the official coder). Measured on Kodak with a briefly trained hpcm-tiny (0.08-0.16
            bpp) and the 60-level table: real y bits 0.3-0.6 % over the estimate with
            ``"nearest"``, 2.0-7.5 % with ``"up"`` (snapping small scales up makes the many zeros
            markedly dearer; ``"up"`` with 480 levels still leaves 0.4-1.2 %).

    ``forward(y, scales, means)`` with all ``[B, M, H, W]`` returns ``(y_q, likelihoods)``
    (likelihoods in (0, 1], bits = ``-log2``); ``update()``, ``build_indexes``, ``compress`` and
    ``decompress`` are CompressAI's (``update`` uses :meth:`_standardized_cumulative` below).

    Raises:
        ValueError: ``beta <= 0`` or an unknown ``index_rounding`` (and CompressAI's checks of the scale table).
    """

    def __init__(self, scale_table=None, *args: Any, beta: float = PAPER_BETA,
                 scale_bound: float = PAPER_SCALE_BOUND, tail_mass: float = 1e-6,
                 index_rounding: str = "nearest", **kwargs: Any) -> None:
        if beta <= 0:
            raise ValueError(f"generalized Gaussian shape beta must be > 0, got {beta}")
        if index_rounding not in ("nearest", "up"):
            raise ValueError(f"index_rounding must be 'nearest' or 'up', got {index_rounding!r}")
        super().__init__(scale_table, *args, scale_bound=scale_bound, tail_mass=tail_mass, **kwargs)
        self.index_rounding = index_rounding
        self.register_buffer("beta", torch.tensor([float(beta)]))

    def build_indexes(self, scales: Tensor) -> Tensor:
        """Table index (int32, same shape as ``scales``) of each scale; see ``index_rounding``."""
        if self.index_rounding == "up":
            return super().build_indexes(scales)
        scales = self.lower_bound_scale(scales)
        log_table = self.scale_table.to(scales.device).log()
        mid = (log_table[1:] + log_table[:-1]) / 2
        return torch.bucketize(scales.log(), mid).int()

    def _standardized_cumulative(self, inputs: Tensor) -> Tensor:
        return gennorm_cdf(inputs, self.beta)

    def _standardized_quantile(self, quantile):  # type: ignore[override]
        return scipy.stats.gennorm.ppf(quantile, float(self.beta))


class MeanScaleHyperLatent(EntropyModel):
    """Per-channel learned mean and scale for the hyper latent z (HPCM official ``means_hyper``/``scales_hyper``).

    Args:
        channels: N.
        beta, scale_bound, tail_mass: as :class:`GeneralizedGaussianConditional` (official 1.5, 0.12, 1e-6).

    Parameters ``means`` (zeros) and ``scales`` (ones), each ``[1, N, 1, 1]``. ``forward(z)``
    (``[B, N, h, w]``) returns ``(z_hat, likelihoods)``: training ``z_hat = ste_round(z - means) + means``
    and the likelihood of ``z - means + U(-1/2, 1/2)``; eval ``round(z - means) + means`` and its
    likelihood. :meth:`update` builds one CDF table per channel (call after training/loading,
    before :meth:`compress`); :meth:`loss` is zero (no auxiliary loss: nothing to fit).
    """

    def __init__(self, channels: int, beta: float = PAPER_BETA, scale_bound: float = PAPER_SCALE_BOUND,
                 tail_mass: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.tail_mass = float(tail_mass)
        self.means = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.scales = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.register_buffer("beta", torch.tensor([float(beta)]))
        self.lower_bound_scale = LowerBound(scale_bound)

    def _likelihood(self, residual: Tensor) -> Tensor:
        scales = self.lower_bound_scale(self.scales)
        v = torch.abs(residual)
        return gennorm_cdf((0.5 - v) / scales, self.beta) - gennorm_cdf((-0.5 - v) / scales, self.beta)

    def forward(self, z: Tensor, training: Optional[bool] = None) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        if training is None:
            training = self.training
        res = z - self.means
        if training:
            z_hat = (torch.round(res) - res).detach() + res + self.means
            lik = self._likelihood(res + training_noise(res))
        else:
            q = torch.round(res)
            z_hat, lik = q + self.means, self._likelihood(q)
        if self.use_likelihood_bound:
            lik = self.likelihood_lower_bound(lik)
        return z_hat, lik

    def loss(self) -> Tensor:
        """No auxiliary loss (a zero scalar on the parameters' device)."""
        return self.means.new_zeros(())

    @torch.no_grad()
    def update(self, force: bool = False) -> bool:
        """Build the per-channel quantized CDFs from the current scales (CompressAI's table format).

        Returns False (and does nothing) when tables exist and ``force`` is False.
        """
        if self._offset.numel() > 0 and not force:
            return False
        scales = self.lower_bound_scale(self.scales.detach()).view(-1).float()
        multiplier = -scipy.stats.gennorm.ppf(self.tail_mass / 2, float(self.beta))
        center = torch.ceil(scales * multiplier).int()
        length = 2 * center + 1
        max_length = int(length.max())
        samples = torch.abs(torch.arange(max_length, device=scales.device).int() - center[:, None]).float()
        upper = gennorm_cdf((0.5 - samples) / scales[:, None], self.beta)
        lower = gennorm_cdf((-0.5 - samples) / scales[:, None], self.beta)
        pmf = upper - lower
        self._quantized_cdf = self._pmf_to_cdf(pmf, 2 * lower[:, :1], length, max_length)
        self._offset = -center
        self._cdf_length = length + 2
        return True

    def _indexes(self, size) -> Tensor:
        b, c, h, w = size
        return torch.arange(c, dtype=torch.int32).view(1, c, 1, 1).expand(b, c, h, w).contiguous()

    def compress(self, z: Tensor) -> list[bytes]:  # type: ignore[override]
        """rANS-code ``round(z - means)`` of ``z [B, N, h, w]``: one byte string per image."""
        return super().compress(z, self._indexes(z.shape).to(z.device), self.means.detach().expand_as(z))

    def decompress(self, strings: list[bytes], size, dtype=torch.float) -> Tensor:  # type: ignore[override]
        """Decode :meth:`compress` output to ``z_hat [len(strings), N, *size]``."""
        shape = (len(strings), self.channels, *size)
        idx = self._indexes(shape).to(self.means.device)
        return super().decompress(strings, idx, dtype, self.means.detach().expand(shape))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # size the coder tables like the saved ones (a state dict written after update())
        for name in ("_quantized_cdf", "_offset", "_cdf_length"):
            key = prefix + name
            if key in state_dict:
                getattr(self, name).resize_(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
