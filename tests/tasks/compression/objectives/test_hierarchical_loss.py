"""Measured / fixed / adaptive decompositions (finetune_kit.tasks.compression.objectives.hierarchical)."""
from __future__ import annotations

import pytest
import torch

from finetune_kit.tasks.compression.objectives.hierarchical import (HierarchicalRDLoss, haar_band_energies,
                                                 laplacian_band_energies)



def _f(v) -> float:
    """A scalar tensor (which may still carry the graph for a later backward()) as a float."""
    return float(v.detach())

def _out(B=2, H=64, W=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, H, W, generator=g)
    x_hat = (x + 0.05 * torch.randn(B, 3, H, W, generator=g)).requires_grad_()
    lik_y = torch.rand(B, 8, H // 16, W // 16, generator=g).clamp(0.05, 1)
    masks = torch.zeros(3, B, 8, H // 16, W // 16, dtype=torch.bool)
    idx = torch.randint(0, 3, (B, 8, H // 16, W // 16), generator=g)
    for k in range(3):
        masks[k] = idx == k
    out = {"x_hat": x_hat, "likelihoods": {"y": lik_y, "z": torch.full((B, 4, 1, 1), 0.5)},
           "y_scale_masks": {"s1": masks[0], "s2": masks[1], "s3": masks[2]}}
    return out, x


def test_haar_is_exact_and_laplacian_close():
    err = torch.randn(2, 3, 37, 50)  # odd sides: zero padding adds no energy
    assert float(sum(haar_band_energies(err, 3))) == pytest.approx(float(err.pow(2).sum()), rel=1e-5)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(1, 1, 64, 64), 5, 1, 2)
    lap = float(sum(laplacian_band_energies(smooth, 3)))
    assert lap == pytest.approx(float(smooth.pow(2).sum()), rel=0.5)
    # a constant error lives only in the low-pass band
    e = haar_band_energies(torch.ones(1, 1, 16, 16), 3)
    assert all(float(v) < 1e-9 for v in e[:3]) and float(e[3]) == pytest.approx(256)


def test_measured_tasks_sum_to_rd_loss():
    out, x = _out()
    lam = 0.0067
    loss = HierarchicalRDLoss(lam)
    t = loss(out, x)
    assert list(t.tasks) == loss.task_names == ["dist_coarse", "dist_mid", "dist_fine", "rate_s1", "rate_s2",
                                                "rate_s3", "rate_z"]
    assert _f(sum(t.tasks.values())) == pytest.approx(_f(t.rd), rel=1e-5)
    assert _f(t.rd) == pytest.approx(lam * 255 ** 2 * _f(t.mse) + _f(t.bpp), rel=1e-6)
    assert sum(t.scale_costs.values()) == pytest.approx(_f(t.rd), rel=1e-5)
    # white noise error: each Haar detail level holds 3/4 of what is left
    d = [_f(t.tasks[k]) for k in ("dist_fine", "dist_mid", "dist_coarse")]
    assert d[0] / sum(d) == pytest.approx(0.75, abs=0.03)
    sum(t.tasks.values()).backward()
    assert out["x_hat"].grad is not None


def test_fixed_ratios_and_adaptive_learns():
    out, x = _out()
    t = HierarchicalRDLoss(0.01, decomposition="fixed")(out, x)
    k = 0.01 * 255 ** 2 * _f(t.mse)
    assert _f(t.tasks["dist_s1"]) == pytest.approx(0.40 * k, rel=1e-5)
    assert _f(t.tasks["dist_s3"]) == pytest.approx(0.25 * k, rel=1e-5)
    assert _f(t.tasks["rate_s2"]) == pytest.approx(0.40 * _f(t.bpp), rel=1e-5)
    assert _f(sum(t.tasks.values())) == pytest.approx(_f(t.rd), rel=1e-5)
    ada = HierarchicalRDLoss(0.01, decomposition="adaptive", ratio_lr=0.5).train()
    for _ in range(200):
        ada(out, x)
    measured = HierarchicalRDLoss(0.01)(out, x)
    dsum = sum(_f(measured.tasks[f"dist_{b}"]) for b in ("coarse", "mid", "fine"))
    assert ada.ratios()["dist"][2] == pytest.approx(_f(measured.tasks["dist_fine"]) / dsum, abs=0.01)
    assert "dist_logits" in ada.state_dict()


def test_measured_needs_scale_masks():
    out, x = _out()
    del out["y_scale_masks"]
    with pytest.raises(ValueError, match="--decomposition fixed"):
        HierarchicalRDLoss(0.01)(out, x)
    assert HierarchicalRDLoss(0.01, decomposition="fixed")(out, x).tasks["rate_s1"] is not None
