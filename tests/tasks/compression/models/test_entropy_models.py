"""The official HPCM entropy models as CompressAI entropy models: likelihoods, tables, rANS round trips, rates."""
from __future__ import annotations

import pytest
import scipy.stats
import torch

from finetune_kit.tasks.compression.models.hpcm.entropy_models import (
    GeneralizedGaussianConditional,
    MeanScaleHyperLatent,
    gennorm_cdf,
    paper_scale_table,
)
from finetune_kit.tasks.compression.models.hpcm.model import HPCM

PAPER = dict(schedule="paper", y_entropy="generalized-gaussian", z_entropy="mean-scale")


def test_gennorm_cdf_matches_scipy_and_has_finite_gradients():
    x = torch.linspace(-12, 12, 241, dtype=torch.float64)
    ref = torch.from_numpy(scipy.stats.gennorm.cdf(x.numpy(), 1.5))
    assert torch.allclose(gennorm_cdf(x, 1.5), ref, atol=1e-12, rtol=1e-9)
    xg = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0], requires_grad=True)
    gennorm_cdf(xg, 1.5).sum().backward()
    pdf = torch.from_numpy(scipy.stats.gennorm.pdf(xg.detach().numpy(), 1.5)).float()
    assert torch.isfinite(xg.grad).all() and torch.allclose(xg.grad, pdf, atol=1e-6)


def test_conditional_likelihood_and_rans_round_trip():
    torch.manual_seed(0)
    gc = GeneralizedGaussianConditional(None).eval()
    assert gc.update_scale_table(paper_scale_table().tolist()) and gc.scale_table.numel() == 60
    assert float(gc.scale_table[0]) == pytest.approx(0.12) and float(gc.scale_table[-1]) == pytest.approx(64)
    y = torch.randn(2, 8, 6, 6) * 3
    scales = torch.rand(2, 8, 6, 6) * 4
    means = torch.randn(2, 8, 6, 6)
    y_q, lik = gc(y, scales, means)
    r = torch.round(y - means)
    s = scales.clamp_min(0.12)
    ref = (scipy.stats.gennorm.cdf(((r + 0.5) / s).numpy(), 1.5) - scipy.stats.gennorm.cdf(((r - 0.5) / s).numpy(), 1.5))
    assert torch.allclose(lik, torch.from_numpy(ref).float().clamp_min(1e-9), atol=1e-6)
    idx = gc.build_indexes(scales)
    strings = gc.compress(y, idx, means)
    assert torch.equal(gc.decompress(strings, idx, means=means), y_q)
    up = GeneralizedGaussianConditional(None, index_rounding="up")
    up.update_scale_table(paper_scale_table().tolist())
    assert (up.build_indexes(scales) >= idx).all()


def test_mean_scale_z_model_round_trip_training_and_reload():
    torch.manual_seed(0)
    zm = MeanScaleHyperLatent(16)
    with torch.no_grad():
        zm.means.copy_(torch.randn(1, 16, 1, 1))
        zm.scales.copy_(0.2 + 3 * torch.rand(1, 16, 1, 1))
    z = torch.randn(2, 16, 4, 5) * 2
    z_hat, lik = zm.train()(z)  # straight-through rounding around the mean
    assert torch.equal(z_hat, torch.round(z - zm.means) + zm.means)
    z_hat.sum().backward()
    assert zm.means.grad is None or torch.isfinite(zm.means.grad).all()
    zm.eval()
    assert float(zm.loss()) == 0.0
    with pytest.raises(ValueError):
        zm.compress(z)  # tables not built yet
    assert zm.update()
    assert not zm.update()  # tables exist: nothing to do without force
    z_hat, _ = zm(z)
    strings = zm.compress(z)
    assert torch.equal(zm.decompress(strings, (4, 5)), z_hat)
    fresh = MeanScaleHyperLatent(16)
    fresh.load_state_dict(zm.state_dict())  # resizes the coder tables
    assert torch.equal(fresh.decompress(strings, (4, 5)), z_hat)


def test_paper_options_on_hpcm_model():
    m = HPCM("hpcm-tiny", **PAPER)
    assert m.config()["schedule"] == "paper" and m.schedule.name == "paper"
    assert isinstance(m.entropy_bottleneck, MeanScaleHyperLatent)
    assert isinstance(m.gaussian_conditional, GeneralizedGaussianConditional)
    assert not any(n.endswith("quantiles") for n, _ in m.named_parameters())
    assert float(m.aux_loss()) == 0.0
    base = HPCM("hpcm-base")  # the paper's presets default to the paper's choices
    assert base.schedule.name == "paper" and isinstance(base.entropy_bottleneck, MeanScaleHyperLatent)
    with pytest.raises(ValueError, match="schedule"):
        HPCM("hpcm-tiny", schedule="zigzag")
    with pytest.raises(ValueError, match="unknown HPCM option"):
        HPCM("hpcm-tiny", windows=(1, 1, 1))
    # a state dict saved after update() loads into a fresh model (tables resized) and still decodes
    m.eval().update(force=True)
    x = torch.rand(1, 3, 128, 128)
    enc = m.compress(x)
    fresh = HPCM("hpcm-tiny", **PAPER).eval()
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.decompress(enc["strings"], enc["shape"], enc["image_size"])["y_hat"], enc["y_hat"])


@pytest.mark.slow
def test_real_bitstreams_bit_exact_and_within_1pc_after_short_training(photos, kodak_images):
    """hpcm-tiny with the paper's schedule and entropy models, ~70 s of training on 2 cores."""
    from torch.utils.data import DataLoader, RandomSampler

    from finetune_kit.seeding import seed_everything
    from finetune_kit.tasks.compression.data import RandomCropDataset, list_images
    from finetune_kit.tasks.compression.evaluate import evaluate_image
    from finetune_kit.tasks.compression.objectives.rate_distortion import RateDistortionLoss
    from finetune_kit.tasks.compression.engine import train_one_epoch

    seed_everything(0)
    ds = RandomCropDataset(list_images(photos)[:20], 128)
    loader = DataLoader(ds, batch_size=8, sampler=RandomSampler(ds, replacement=True, num_samples=8 * 100))
    model = HPCM("hpcm-tiny", **PAPER)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)  # no aux optimizer: the z model has no quantiles
    train_one_epoch(model, loader, opt, None, RateDistortionLoss(0.0483), clip_max_norm=1.0)
    model.eval()
    model.update(force=True)
    for x in kodak_images:
        res = evaluate_image(model, x)
        assert res["y_hat_exact"], res
        assert abs(res["bpp"] - res["estimated_bpp"]) / res["estimated_bpp"] < 0.01, res
        enc = model.compress(x)
        dec = model.decompress(enc["strings"], enc["shape"], enc["image_size"])
        assert torch.equal(enc["y_hat"], dec["y_hat"])
        with torch.no_grad():
            assert torch.allclose(dec["x_hat"], model(x)["x_hat"].clamp(0, 1), atol=1e-5)
