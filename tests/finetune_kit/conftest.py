"""Fixtures of the core tests."""
from __future__ import annotations

import pytest
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import nn


class _HPCMShaped(nn.Module):
    """Same top-level naming as the HPCM model (g_a, g_s, h_a, h_s, context, entropy models)."""

    def __init__(self):
        super().__init__()
        self.g_a = nn.Sequential(nn.Conv2d(3, 8, 5, 2, 2), nn.Conv2d(8, 8, 5, 2, 2))
        self.g_s = nn.Sequential(nn.ConvTranspose2d(8, 3, 4, 2, 1))
        self.h_a = nn.Sequential(nn.Conv2d(8, 4, 3))
        self.h_s = nn.Sequential(nn.Conv2d(4, 16, 3))
        self.context = nn.ModuleDict({"adaptor": nn.Conv2d(16, 16, 1), "spatial_prior": nn.Conv2d(16, 16, 3)})
        self.entropy_bottleneck = EntropyBottleneck(4)
        self.gaussian_conditional = GaussianConditional(None)



@pytest.fixture
def hpcm_shaped() -> nn.Module:
    """A tiny module named like HPCM (g_a, g_s, h_a, h_s, context, entropy models)."""
    return _HPCMShaped()
