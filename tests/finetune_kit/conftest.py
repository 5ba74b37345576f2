"""Fixtures of the core tests.

The core knows no task's models, so the head-less model here is grouped by a preset these
tests register themselves (``test-codec``), the way a task registers its own.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from finetune_kit.layer_presets import LayerPreset, register_layer_preset


class _CodecShaped(nn.Module):
    """A tiny head-less model shaped like an image codec: encoder/decoder, hyper transforms, a
    context model and a prior whose ``quantiles`` are a group of their own (no classifier)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 5, 2, 2), nn.Conv2d(8, 8, 5, 2, 2))
        self.decoder = nn.Sequential(nn.ConvTranspose2d(8, 3, 4, 2, 1))
        self.hyper_encoder = nn.Sequential(nn.Conv2d(8, 4, 3))
        self.hyper_decoder = nn.Sequential(nn.Conv2d(4, 16, 3))
        self.context = nn.ModuleDict({"adaptor": nn.Conv2d(16, 16, 1), "spatial_prior": nn.Conv2d(16, 16, 3)})
        self.prior = nn.Module()
        self.prior.density = nn.Linear(4, 4)
        self.prior.quantiles = nn.Parameter(torch.zeros(4, 1, 3))


#: the preset the core tests register for :class:`_CodecShaped` (matched by type only)
CODEC_PRESET = LayerPreset(
    name="test-codec",
    matcher={"encoder": r"^encoder\.", "decoder": r"^decoder\.", "hyper_encoder": r"^hyper_encoder\.",
             "hyper_decoder": r"^hyper_decoder\.", "context": r"^context\.",
             "prior": r"^prior\.(?!quantiles$)", "quantiles": r"^prior\.quantiles$"},
    head=None,
    matches=lambda m: isinstance(m, _CodecShaped),
    stages=(("encoder", "decoder"), ("hyper_encoder", "hyper_decoder", "prior"), ("context",)),
)


@pytest.fixture
def headless_codec() -> nn.Module:
    """A tiny head-less codec-shaped model; the ``test-codec`` preset is registered for it."""
    register_layer_preset(CODEC_PRESET)
    return _CodecShaped()


@pytest.fixture
def hpcm_shaped(headless_codec) -> nn.Module:
    """The head-less model under the name ``test_strategy`` uses (no HPCM names: the core
    tests do not import the compression task)."""
    return headless_codec
