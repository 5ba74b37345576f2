"""HPCM model: structure contract, parameter counts, shapes, coding schedule, per-scale rates."""
from __future__ import annotations

import torch

from finetune_kit.tasks.compression.models.hpcm.model import HPCM, PRESETS
from finetune_kit.tasks.compression.models.hpcm.schedule import SCALE_STEPS, CodingSchedule
from finetune_kit.tasks.compression.metrics import bpp_per_scale


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_base_parameter_count_matches_paper():
    model = HPCM("hpcm-base")
    total = _count(model)
    assert abs(total - 68.5e6) / 68.5e6 < 0.03, total
    per = {name: _count(child) / 1e6 for name, child in model.named_children()}
    # paper: g_a 6.7 M, g_s 6.7 M, h_a 3.2 M, h_s 6.1 M, context about 45 M
    assert abs(per["g_a"] - 6.7) < 0.3 and abs(per["g_s"] - 6.7) < 0.3
    assert abs(per["h_a"] - 3.2) < 0.2 and abs(per["h_s"] - 6.1) < 0.3
    assert 43 < per["context"] < 48


def test_large_parameter_count_matches_paper():
    assert abs(_count(HPCM("hpcm-large")) - 89.7e6) / 89.7e6 < 0.03


def test_module_names_contract():
    model = HPCM("hpcm-tiny")
    assert {n for n, _ in model.named_children()} == {
        "g_a", "g_s", "h_a", "h_s", "context", "entropy_bottleneck", "gaussian_conditional"}
    prefixes = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert prefixes <= {"g_a", "g_s", "h_a", "h_s", "context", "entropy_bottleneck"}
    names = dict(model.named_parameters())
    assert "entropy_bottleneck.quantiles" in names
    assert any(n.startswith("context.s1_adaptor") for n in names)
    assert "context.step_gains" in names


def test_schedule_partitions_y_in_11_steps():
    sch = CodingSchedule(64, groups=8)
    ids = sch.step_ids(16, 24).s3
    counts = torch.bincount(ids.flatten(), minlength=11).tolist()
    n = ids.numel()
    assert len(counts) == 11
    assert counts[0] == counts[1] == n // 32                   # s1: 2 checkerboard halves of 1/16
    assert counts[2] == counts[3] == counts[4] == n // 16      # s2: 3 new steps
    assert all(c == n // 8 for c in counts[5:])                # s3: 6 new steps
    masks = sch.scale_masks(16, 24)
    total = masks["s1"].int() + masks["s2"].int() + masks["s3"].int()
    assert bool((total == 1).all())
    # s1 positions are exactly what the s1 grid holds (4x sub-sampled per channel group)
    grids = sch.step_ids(16, 24)
    assert grids.s1.shape == (64, 4, 6) and set(grids.s1.unique().tolist()) == {0, 1}
    assert set(grids.s2.unique().tolist()) == {0, 1, 2, 3, 4}
    # channel groups code different spatial positions at the same step
    assert not torch.equal(ids[0] == 5, ids[-1] == 5)
    assert sum(len(v) for v in SCALE_STEPS.values()) == 11


def test_down_up_round_trip():
    sch = CodingSchedule(16, groups=8)
    x = torch.randn(2, 32, 8, 8)
    s2 = sch.to_s2(x)
    assert s2.shape == (2, 32, 4, 4)
    back = sch.s2_to_s3(s2)
    assert torch.equal(sch.to_s2(back), s2)


def test_forward_shapes_padding_and_gradients(kodak_images):
    torch.manual_seed(0)
    model = HPCM("hpcm-tiny").train()
    x = kodak_images[0][..., 100:200, 50:190]  # 100 x 140: padded to 128 x 256 inside
    out = model(x)
    assert out["x_hat"].shape == x.shape
    assert out["likelihoods"]["y"].shape == (1, 64, 128 // 16, 256 // 16)
    assert out["likelihoods"]["z"].shape == (1, 64, 128 // 64, 256 // 64)
    for k in ("s1", "s2", "s3"):
        m = out["y_scale_masks"][k]
        assert m.dtype == torch.bool and m.shape == out["likelihoods"]["y"].shape
    bpp = bpp_per_scale(out, x.shape[-1] * x.shape[-2])
    loss = bpp["total"] + ((out["x_hat"] - x) ** 2).mean()
    loss.backward()
    assert model.context.s3_adaptor[5].weight.grad is not None
    assert model.context.s1_attn.q.weight.grad is not None
    assert model.g_a[0].weight.grad.abs().sum() > 0


def test_bpp_per_scale_sums_to_y(kodak_images):
    from compressai.losses import RateDistortionLoss

    model = HPCM("hpcm-tiny").eval()
    x = kodak_images[1][..., :128, :256]
    with torch.no_grad():
        out = model(x)
    n = x.shape[-1] * x.shape[-2]
    bpp = bpp_per_scale(out, n)
    assert set(bpp) == {"s1", "s2", "s3", "y", "z", "total"}
    # independent counts: bits of all of y straight from the likelihoods (no masks), and CompressAI's bpp
    y_bits = -torch.log2(out["likelihoods"]["y"])
    assert torch.allclose(bpp["s1"] + bpp["s2"] + bpp["s3"], y_bits.sum() / n, rtol=1e-5)
    ref = RateDistortionLoss(0.01)(out, x)["bpp_loss"]
    assert torch.allclose(bpp["total"], ref, rtol=1e-4)
    # each scale's share is the bits of the positions the schedule codes at that scale
    ids = CodingSchedule(model.M).step_ids(*y_bits.shape[-2:]).s3
    for s, steps in SCALE_STEPS.items():
        at_scale = torch.isin(ids, torch.tensor(steps)).unsqueeze(0).expand_as(y_bits)
        assert torch.allclose(bpp[s], y_bits[at_scale].sum() / n, rtol=1e-5), s


def test_bpp_per_scale_on_zoo_model():
    from finetune_kit.tasks.compression.models.zoo import build_model

    model = build_model("bmshj2018-hyperprior").eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert set(bpp_per_scale(out, 64 * 64)) == {"y", "z", "total"}


def test_presets_are_registered_with_pad_multiples():
    assert PRESETS["hpcm-base"].pad_multiple == 256
    assert PRESETS["hpcm-tiny"].pad_multiple == 128
