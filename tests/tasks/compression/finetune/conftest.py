"""Stand-in compression model for fast unit tests of the fine-tuning components.

It has HPCM's top-level module names (so the ``hpcm`` layer preset resolves it) and a real
CompressAI ``EntropyBottleneck`` (so ``quantiles`` exist), but only a few hundred parameters.
The ``hpcm`` preset is registered by the compression models package, imported here.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import finetune_kit.tasks.compression.models  # noqa: F401  (registers the "hpcm" layer preset)


class StandIn(nn.Module):
    """g_a/g_s/h_a/h_s/context plus entropy_bottleneck and gaussian_conditional (no params)."""

    def __init__(self) -> None:
        super().__init__()
        from compressai.entropy_models import EntropyBottleneck, GaussianConditional

        self.g_a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1))
        self.g_s = nn.Sequential(nn.Conv2d(4, 3, 3, padding=1))
        self.h_a = nn.Sequential(nn.Conv2d(4, 4, 1))
        self.h_s = nn.Sequential(nn.Conv2d(4, 4, 1))
        self.context = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1))
        self.entropy_bottleneck = EntropyBottleneck(4)
        self.gaussian_conditional = GaussianConditional(None)

    def forward(self, x):
        y = self.g_a(x)
        z = self.h_a(y)
        z_hat, z_lik = self.entropy_bottleneck(z)
        y = y + self.context(self.h_s(z_hat))
        return {"x_hat": self.g_s(y), "likelihoods": {"y": torch.sigmoid(y).clamp(1e-3, 1), "z": z_lik}}


@pytest.fixture
def standin() -> StandIn:
    torch.manual_seed(0)
    return StandIn()


@pytest.fixture(scope="session")
def photos(few_photos):
    """The fine-tuning tests train on five of the training photographs."""
    return few_photos
