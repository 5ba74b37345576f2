"""The shipped Kodak anchors hold the published curves with their sources, and their BD-rates
against VTM match what the papers report."""
from __future__ import annotations

import json

import pytest

from finetune_kit.tasks.compression.config import DEFAULT_ANCHORS
from finetune_kit.tasks.compression.rd_curves import bd_metrics, load_anchors


def test_every_shipped_curve_names_its_source():
    raw = json.loads(DEFAULT_ANCHORS.read_text())["curves"]
    for name in ("mbt2018 (CompressAI, mse, cpu)", "ELIC (paper)", "MLIC++ (paper)", "HPCM-Base (paper)"):
        assert name in raw
    assert all(c.get("source") for c in raw.values())
    assert all(len(c["bpp"]) == len(c["psnr-rgb"]) for c in raw.values())


@pytest.mark.parametrize("name, low, high", [
    ("ELIC (paper)", -10.0, -5.0),            # He et al. 2022 report -7.88 % vs VVC on Kodak
    ("MLIC++ (paper)", -18.0, -13.0),         # Jiang & Wang report about -16 % vs VTM
    ("mbt2018 (CompressAI, mse, cpu)", 8.0, 14.0),  # behind VTM, ahead of mbt2018-mean
])
def test_published_bd_rate_vs_vtm(name, low, high):
    c = load_anchors(DEFAULT_ANCHORS)
    bd = bd_metrics(c["VTM"], c[name], anchor_name="VTM")
    assert low < bd["bd_rate"] < high
    ordered = bd_metrics(c["mbt2018-mean (CompressAI, mse, cpu)"], c["mbt2018 (CompressAI, mse, cpu)"])
    assert ordered["bd_rate"] < 0  # the context model saves rate over the mean-scale hyperprior
