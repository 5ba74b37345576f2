"""Building blocks of the HPCM model (Li et al., ICCV 2025, arXiv 2507.19125).

Transforms (``g_a``/``g_s``/``h_a``/``h_s``) use stride-2 convolutions and partial-conv
residual blocks (a 3x3 conv on a quarter of the channels, then a 1x1 MLP); the context model
uses depth-wise residual blocks and windowed cross-attention. Shapes are ``[B, C, H, W]``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "conv1x1",
    "PartialConvBlock",
    "DepthwiseConvBlock",
    "SpatialPrior",
    "WindowCrossAttention",
    "analysis_transform",
    "synthesis_transform",
    "hyper_analysis",
    "hyper_synthesis",
]


def conv1x1(cin: int, cout: int) -> nn.Conv2d:
    """A 1x1 convolution with bias (a per-position linear layer)."""
    return nn.Conv2d(cin, cout, kernel_size=1)


class PartialConvBlock(nn.Module):
    """Residual block ``x + MLP(PConv3x3(x))`` (HPCM paper, Sec. 3 / FasterNet-style partial conv).

    The 3x3 conv touches only the first ``channels // partial_ratio`` channels; the others
    pass through. The MLP is 1x1 conv to ``mlp_ratio * channels``, LeakyReLU, 1x1 conv back.

    Args:
        channels: C (input = output channels).
        partial_ratio: fraction denominator of channels seen by the 3x3 conv (default 4).
        mlp_ratio: hidden width multiplier of the 1x1 MLP (default 4).

    Shape: ``[B, C, H, W] -> [B, C, H, W]``.
    """

    def __init__(self, channels: int, partial_ratio: int = 4, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.split = max(1, channels // partial_ratio)
        self.pconv = nn.Conv2d(self.split, self.split, kernel_size=3, padding=1)
        self.mlp = nn.Sequential(conv1x1(channels, channels * mlp_ratio), nn.LeakyReLU(inplace=True),
                                 conv1x1(channels * mlp_ratio, channels))

    def forward(self, x: Tensor) -> Tensor:
        a, b = x[:, : self.split], x[:, self.split:]
        return x + self.mlp(torch.cat((self.pconv(a), b), dim=1))


class DepthwiseConvBlock(nn.Module):
    """Residual block ``x + MLP(DWConv3x3(x))`` used by the spatial prior of the context model.

    Shape: ``[B, C, H, W] -> [B, C, H, W]``; the MLP widens to ``mlp_ratio * C`` (default 2).
    """

    def __init__(self, channels: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels)
        self.mlp = nn.Sequential(conv1x1(channels, channels * mlp_ratio), nn.LeakyReLU(),
                                 conv1x1(channels * mlp_ratio, channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.dwconv(x))


class SpatialPrior(nn.Module):
    """Depth-wise residual "spatial prior": ``head(body(x) * gain)`` -> scales and means.

    Args:
        latent_channels: M; the input has ``3M`` channels (carried context 2M + decoded y M),
            the output ``2M`` (scales, then means).
        depth_before: blocks before the per-step gain (paper: 2 for s1/s2, 3 for s3; base).
        depth_after: blocks after it (paper: 1 for s1/s2, 2 for s3; base).
        mlp_ratio: hidden multiplier of each block's MLP (default 2).

    Shape: ``x [B, 3M, h, w]``, ``gain [1, 3M, 1, 1]`` -> ``[B, 2M, h, w]``.
    """

    def __init__(self, latent_channels: int, depth_before: int, depth_after: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        c = 3 * latent_channels
        self.body = nn.Sequential(*[DepthwiseConvBlock(c, mlp_ratio) for _ in range(depth_before)])
        self.head = nn.Sequential(*[DepthwiseConvBlock(c, mlp_ratio) for _ in range(depth_after)],
                                  conv1x1(c, 2 * latent_channels))

    def forward(self, x: Tensor, gain: Tensor) -> Tensor:
        return self.head(self.body(x) * gain)


class WindowCrossAttention(nn.Module):
    """Windowed multi-head cross-attention carrying context between coding steps (HPCM Sec. 3.3).

    Query from this step's context ``x``, keys/values from the carried context ``h`` within
    non-overlapping ``window x window`` windows; output ``attn + out(x)``.

    Args:
        channels: C of both inputs (2M in HPCM).
        window: window side in positions of the current scale's grid (paper: 4/8/8 for s1/s2/s3).
        heads: attention heads; must divide ``channels``.

    Shape: ``x, h [B, C, H, W] -> [B, C, H, W]``; H and W must be multiples of ``window``.

    Raises:
        ValueError: ``heads`` does not divide ``channels``; H or W not a multiple of ``window``.
    """

    def __init__(self, channels: int, window: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention heads={heads} must divide channels={channels}")
        self.window, self.heads = window, heads
        self.q = conv1x1(channels, channels)
        self.k = conv1x1(channels, channels)
        self.v = conv1x1(channels, channels)
        self.out = conv1x1(channels, channels)

    def _windows(self, t: Tensor) -> Tensor:
        b, c, h, w = t.shape
        p = self.window
        t = t.view(b, self.heads, c // self.heads, h // p, p, w // p, p)
        # -> [b, nh, nw, heads, p*p, head_dim]
        return t.permute(0, 3, 5, 1, 4, 6, 2).reshape(b * (h // p) * (w // p), self.heads, p * p, c // self.heads)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        p = self.window
        if hh % p or ww % p:
            raise ValueError(f"context grid {hh}x{ww} is not a multiple of the attention window {p}: "
                             "pad the image to the model's pad_multiple")
        q, k, v = self._windows(self.q(x)), self._windows(self.k(h)), self._windows(self.v(h))
        a = F.scaled_dot_product_attention(q, k, v)  # [b*nh*nw, heads, p*p, d]
        a = a.view(b, hh // p, ww // p, self.heads, p, p, c // self.heads)
        a = a.permute(0, 3, 6, 1, 4, 2, 5).reshape(b, c, hh, ww)
        return a + self.out(x)


def analysis_transform(channels: Sequence[int], depths: Sequence[int], latent: int,
                       partial_ratio: int = 4, mlp_ratio: int = 4) -> nn.Sequential:
    """``g_a``: image ``[B,3,H,W]`` -> latent y ``[B,M,H/16,W/16]``.

    A 4x4 stride-2 conv, then per stage ``depths[i]`` partial-conv blocks and a 2x2 stride-2
    conv to the next width (``channels`` = e.g. (96, 192, 384) for the base model).
    """
    layers: list[nn.Module] = [nn.Conv2d(3, channels[0], kernel_size=4, stride=2, padding=1)]
    widths = list(channels) + [latent]
    for i, d in enumerate(depths):
        layers += [PartialConvBlock(widths[i], partial_ratio, mlp_ratio) for _ in range(d)]
        layers.append(nn.Conv2d(widths[i], widths[i + 1], kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def synthesis_transform(channels: Sequence[int], depths: Sequence[int], latent: int,
                        partial_ratio: int = 4, mlp_ratio: int = 4) -> nn.Sequential:
    """``g_s``: y_hat ``[B,M,H/16,W/16]`` -> image ``[B,3,H,W]`` (mirror of :func:`analysis_transform`)."""
    widths = [latent] + list(reversed(channels))
    rdepths = list(reversed(depths))
    layers: list[nn.Module] = []
    for i, d in enumerate(rdepths):
        layers.append(nn.ConvTranspose2d(widths[i], widths[i + 1], kernel_size=2, stride=2))
        layers += [PartialConvBlock(widths[i + 1], partial_ratio, mlp_ratio) for _ in range(d)]
    layers.append(nn.ConvTranspose2d(widths[-1], 3, kernel_size=4, stride=2, padding=1))
    return nn.Sequential(*layers)


def hyper_analysis(latent: int, hyper: int, depth: int, partial_ratio: int = 4, mlp_ratio: int = 4) -> nn.Sequential:
    """``h_a``: y ``[B,M,h,w]`` -> z ``[B,N,h/4,w/4]`` (z at 1/64 of the image side)."""
    return nn.Sequential(PartialConvBlock(latent, partial_ratio, mlp_ratio),
                         nn.Conv2d(latent, hyper, kernel_size=2, stride=2),
                         *[PartialConvBlock(hyper, partial_ratio, mlp_ratio) for _ in range(depth)],
                         nn.Conv2d(hyper, hyper, kernel_size=2, stride=2))


def hyper_synthesis(latent: int, hyper: int, depth: int, partial_ratio: int = 4, mlp_ratio: int = 4) -> nn.Sequential:
    """``h_s``: z_hat ``[B,N,h/4,w/4]`` -> hyper parameters ``[B,2M,h,w]`` (scales, then means)."""
    return nn.Sequential(nn.ConvTranspose2d(hyper, hyper, kernel_size=2, stride=2),
                         *[PartialConvBlock(hyper, partial_ratio, mlp_ratio) for _ in range(depth)],
                         nn.ConvTranspose2d(hyper, 2 * latent, kernel_size=2, stride=2),
                         PartialConvBlock(2 * latent, partial_ratio, mlp_ratio))
