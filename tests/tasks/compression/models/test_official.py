"""Official HPCM checkpoints: conversion (self-built official-format state dicts) and equivalence with the official code.

The equivalence test runs the official code (github.com/lyq133/LIC-HPCM) from a user's checkout
named by ``HPCM_OFFICIAL_REPO``; without it, it is skipped with that reason.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from finetune_kit.tasks.compression.models.hpcm.model import HPCM
from finetune_kit.tasks.compression.models.hpcm.official import CODER_TABLE_KEYS, convert_official_state_dict

M, N = 320, 256
_ARCH = {  # g_a/g_s blocks at 384 channels, spatial-prior depths (s1_s2 before/after, s3 before/after)
    "base": {"deep": 4, "s12": (2, 1), "s3": (3, 2)},
    "large": {"deep": 8, "s12": (2, 2), "s3": (4, 3)},
}


def _pconv(prefix, c):
    q = c // 4
    return {f"{prefix}.branch.0.pconv.weight": (q, q, 3, 3), f"{prefix}.branch.0.pconv.bias": (q,),
            f"{prefix}.branch.1.weight": (4 * c, c, 1, 1), f"{prefix}.branch.1.bias": (4 * c,),
            f"{prefix}.branch.3.weight": (c, 4 * c, 1, 1), f"{prefix}.branch.3.bias": (c,)}


def _dw(prefix, c):
    return {f"{prefix}.branch.0.weight": (c, 1, 3, 3), f"{prefix}.branch.0.bias": (c,),
            f"{prefix}.branch.1.weight": (2 * c, c, 1, 1), f"{prefix}.branch.1.bias": (2 * c,),
            f"{prefix}.branch.3.weight": (c, 2 * c, 1, 1), f"{prefix}.branch.3.bias": (c,)}


def _conv(prefix, cin, cout, k, transposed=False):
    return {f"{prefix}.weight": (cin, cout, k, k) if transposed else (cout, cin, k, k), f"{prefix}.bias": (cout,)}


def official_shapes(arch: str) -> dict[str, tuple]:
    """Key names and shapes of an official HPCM_Base / HPCM_Large state dict (before ``update()``)."""
    a = _ARCH[arch]
    s: dict[str, tuple] = {}
    # g_a: conv4x4 3->96, 2 blocks, conv 96->192, 2 blocks, conv 192->384, deep blocks, conv 384->M
    layers = [("conv", 3, 96, 4), ("pc", 96), ("pc", 96), ("conv", 96, 192, 2), ("pc", 192), ("pc", 192),
              ("conv", 192, 384, 2), *[("pc", 384)] * a["deep"], ("conv", 384, M, 2)]
    for i, l in enumerate(layers):
        s.update(_conv(f"g_a.branch.{i}", *l[1:]) if l[0] == "conv" else _pconv(f"g_a.branch.{i}", l[1]))
    layers = [("up", M, 384, 2), *[("pc", 384)] * a["deep"], ("up", 384, 192, 2), ("pc", 192), ("pc", 192),
              ("up", 192, 96, 2), ("pc", 96), ("pc", 96), ("up", 96, 3, 4)]
    for i, l in enumerate(layers):
        s.update(_conv(f"g_s.branch.{i}", *l[1:], transposed=True) if l[0] == "up" else _pconv(f"g_s.branch.{i}", l[1]))
    s.update(_pconv("h_a.branch.0", M)); s.update(_conv("h_a.branch.1", M, N, 2))  # noqa: E702
    for i in (2, 3, 4):
        s.update(_pconv(f"h_a.branch.{i}", N))
    s.update(_conv("h_a.branch.5", N, N, 2))
    s.update(_conv("h_s.branch.0", N, N, 2, transposed=True))
    for i in (1, 2, 3):
        s.update(_pconv(f"h_s.branch.{i}", N))
    s.update(_conv("h_s.branch.4", N, 2 * M, 2, transposed=True)); s.update(_pconv("h_s.branch.5", 2 * M))  # noqa: E702
    for sc, n in (("s1", 1), ("s2", 3), ("s3", 6)):
        for k in range(n):
            s.update(_conv(f"y_spatial_prior_adaptor_list_{sc}.{k}", 3 * M, 3 * M, 1))
    for name, (before, after) in (("y_spatial_prior_s1_s2", a["s12"]), ("y_spatial_prior_s3", a["s3"])):
        for k in range(before):
            s.update(_dw(f"{name}.branch_1.{k}", 3 * M))
        for k in range(after):
            s.update(_dw(f"{name}.branch_2.{k}", 3 * M))
        s.update(_conv(f"{name}.branch_2.{after}", 3 * M, 2 * M, 1))
    for k in range(10):
        s[f"adaptive_params_list.{k}"] = (1, 3 * M, 1, 1)
    for sc in ("s1", "s2", "s3"):
        for c in ("q", "k", "v", "out"):
            s.update(_conv(f"attn_{sc}.conv_{c}", 2 * M, 2 * M, 1))
    for k in (0, 1):
        s.update(_conv(f"context_net.{k}", 2 * M, 2 * M, 1))
    s["means_hyper"] = s["scales_hyper"] = (1, N, 1, 1)
    s["entropy_estimation.beta"] = s["entropy_estimation.scale_lower_bound.bound"] = (1,)
    s["entropy_estimation.likelihood_lower_bound.bound"] = (1,)
    for k in CODER_TABLE_KEYS:
        s[k] = (0,)
    return s


def official_state_dict(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(shape, generator=g) for k, shape in official_shapes(arch).items()}
    sd["entropy_estimation.beta"] = torch.tensor([1.5])
    sd["entropy_estimation.scale_lower_bound.bound"] = torch.tensor([0.12])
    sd["entropy_estimation.likelihood_lower_bound.bound"] = torch.tensor([1e-9])
    sd["quantized_cdf_y"] = torch.zeros(60, 40, dtype=torch.int32)  # as if saved after update()
    return sd


@pytest.mark.parametrize("arch,n_main", [("base", 268), ("large", 334)])
def test_convert_round_trip_and_coverage(arch, n_main):
    official = official_state_dict(arch)
    model = HPCM(f"hpcm-{arch}")
    sd, rep = convert_official_state_dict(official, model)
    assert rep.ok, rep.summary()
    assert not rep.unmapped and not rep.uninitialised and not rep.shape_mismatches
    # 268 (Base) / 334 (Large) network tensors + 10 gains + 2 hyper parameters + 3 entropy-model buffers
    assert rep.mapped == n_main + 10 + 2 + 3
    assert set(rep.skipped_tables) == set(CODER_TABLE_KEYS)
    model.load_state_dict(sd)
    ours = model.state_dict()
    assert torch.equal(ours["g_a.1.pconv.weight"], official["g_a.branch.1.branch.0.pconv.weight"])
    assert torch.equal(ours["g_s.0.weight"], official["g_s.branch.0.weight"])
    assert torch.equal(ours["h_s.5.mlp.2.bias"], official["h_s.branch.5.branch.3.bias"])
    # adaptor relabelling: the official loop uses list[i - 1]
    for ours_k, off_k in ((0, 2), (1, 0), (2, 1)):
        assert torch.equal(ours[f"context.s2_adaptor.{ours_k}.weight"], official[f"y_spatial_prior_adaptor_list_s2.{off_k}.weight"])
    for ours_k, off_k in ((0, 5), (1, 0), (5, 4)):
        assert torch.equal(ours[f"context.s3_adaptor.{ours_k}.bias"], official[f"y_spatial_prior_adaptor_list_s3.{off_k}.bias"])
    last = model.preset.prior_s3[1]
    assert torch.equal(ours[f"context.s3_prior.head.{last}.weight"], official[f"y_spatial_prior_s3.branch_2.{last}.weight"])
    assert torch.equal(ours["context.s12_prior.body.1.dwconv.weight"], official["y_spatial_prior_s1_s2.branch_1.1.branch.0.weight"])
    for k in range(10):
        assert torch.equal(ours["context.step_gains"][k], official[f"adaptive_params_list.{k}"].flatten())
    assert torch.equal(ours["context.s2_attn.out.weight"], official["attn_s2.conv_out.weight"])
    assert torch.equal(ours["entropy_bottleneck.means"], official["means_hyper"])
    assert torch.equal(ours["entropy_bottleneck.scales"], official["scales_hyper"])
    assert float(ours["gaussian_conditional.beta"]) == float(ours["entropy_bottleneck.beta"]) == 1.5
    # every official network tensor landed somewhere, exactly once
    used = [v for k, v in official.items() if k not in CODER_TABLE_KEYS and not k.startswith("adaptive_params")]
    ours_total = sum(v.numel() for k, v in ours.items()
                     if k.rsplit(".", 1)[-1] not in ("_quantized_cdf", "_offset", "_cdf_length", "scale_table"))
    # + the gains; + 4 scalars: beta and the two bounds are held by both entropy models, plus CompressAI's scale_bound
    assert ours_total == sum(v.numel() for v in used) + 10 * 3 * M + 4


def test_convert_command_writes_a_checkpoint_eval_and_finetune_load(tmp_path):
    from typer.testing import CliRunner

    from finetune_kit.tasks.cli import app
    from finetune_kit.tasks.compression.checkpoints import load_model

    src = tmp_path / "0.0067.pth.tar"
    official = official_state_dict("base", seed=1)
    torch.save({f"module.{k}": v for k, v in official.items()}, src)  # DataParallel prefixes as well
    out = tmp_path / "conv.pt"
    r = CliRunner().invoke(app, ["compress", "convert-official", str(src), "--arch", "base", "--output", str(out)])
    assert r.exit_code == 0, r.output
    assert "283 tensors mapped" in r.output
    model, ckpt = load_model(out)
    assert ckpt["model"] == "hpcm-base" and ckpt["config"]["lmbda"] == 0.0067
    assert torch.equal(model.state_dict()["context.s2_adaptor.0.weight"], official["y_spatial_prior_adaptor_list_s2.2.weight"])
    # the wrong --arch is refused, nothing written
    r = CliRunner().invoke(app, ["compress", "convert-official", str(src), "--arch", "large", "--output", str(tmp_path / "x.pt")])
    assert r.exit_code == 2 and "does not convert" in r.output and not (tmp_path / "x.pt").exists()


class _Evil:  # a pickled object (code) rather than tensors
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_convert_refuses_pickled_code(tmp_path):
    from finetune_kit.tasks.compression.convert import read_official_state_dict

    bad = tmp_path / "bad.pth"
    torch.save({"net": _Evil(), "w": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="refused to unpickle code") as exc:
        read_official_state_dict(bad)
    assert "\n" not in str(exc.value) and "--trust-pickled-weights" in str(exc.value)


def _official_repo() -> Path:
    repo = os.environ.get("HPCM_OFFICIAL_REPO")
    if not repo:
        pytest.skip("HPCM_OFFICIAL_REPO is not set: point it at a checkout of github.com/lyq133/LIC-HPCM to "
                    "compare with the official code")
    if not (Path(repo) / "src" / "models" / "HPCM_Base.py").is_file():
        pytest.skip(f"HPCM_OFFICIAL_REPO={repo} is not a checkout of github.com/lyq133/LIC-HPCM")
    return Path(repo)


def _bench():
    path = Path(__file__).resolve().parents[4] / "benchmarks" / "hpcm_official_equivalence.py"
    spec = importlib.util.spec_from_file_location("hpcm_official_equivalence", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["base", "large"])
def test_equivalence_with_official_code(arch, kodak_images):
    repo = _official_repo()
    bench = _bench()
    official = bench.load_official_class(repo, arch)()
    # the test's own description of the official format is the official model's
    assert {k: tuple(v.shape) for k, v in official.state_dict().items()} == official_shapes(arch)
    x = kodak_images[0][..., 128:384, 256:512]  # 256 x 256: one 256-multiple, as test.py pads
    res = bench.compare(repo, arch, x)
    assert res["conversion_ok"], res["conversion"]
    assert res["all_positions_equal"], res["steps"]
    assert res["x_hat"] < 1e-5 and res["y_hat"] < 1e-5
    assert res["max_step_scales"] < 1e-5 and res["max_step_means"] < 1e-5
    assert res["likelihoods_y"] < 1e-5 and res["likelihoods_z"] < 1e-5


def test_paper_schedule_partitions_y_like_the_official_masks():
    from finetune_kit.tasks.compression.models.hpcm.paper_schedule import PaperSchedule
    from finetune_kit.tasks.compression.models.hpcm.schedule import CodingSchedule

    sch = PaperSchedule(64)
    ids = sch.step_ids(8, 12).s3  # [M, 8, 12]
    n = ids[0].numel()
    for c in range(64):  # every channel: 1/32, 1/32, 3 x 1/16, 6 x 1/8 of its positions
        counts = torch.bincount(ids[c].flatten(), minlength=11).tolist()
        assert counts == [n // 32] * 2 + [n // 16] * 3 + [n // 8] * 6
    # group 0 (channels 0-7): s1 at y (0, 0) of each 4x4 tile, step 0 on the even checkerboard of the s1 grid
    assert int(ids[0, 0, 0]) == 0 and int(ids[0, 0, 4]) == 1 and int(ids[0, 4, 4]) == 0
    # group 4 shares group 0's s2 lattice but its s1 position is (2, 0) and it starts on the odd half
    assert int(ids[32, 2, 0]) == 1 and int(ids[32, 2, 4]) == 0
    # s3: group 0 codes the diagonal (1, 1) first, group 1 (lattice (1, 1)) codes (0, 1) first
    assert int(ids[0, 1, 1]) == 5 and int(ids[8, 0, 1]) == 5
    # the kit schedule is a different one (same fractions)
    assert not torch.equal(CodingSchedule(64).step_ids(8, 12).s3, ids)
    # the s2 hyperprior fill puts hyper values only at the positions new in s2, per channel
    params = torch.arange(2 * 64 * 8 * 12, dtype=torch.float32).view(1, 128, 8, 12) + 1
    fill = sch.s2_hyper(params, sch.to_s2(params), sch.step_ids(8, 12))
    new = (sch.step_ids(8, 12).s2 >= 2).repeat(2, 1, 1)
    assert bool((fill[0][~new] == 0).all()) and bool((fill[0][new] > 0).all())
    # groups 0 and 1: aligned with the s2 grid; group 2: shifted by one s2-grid column (official quirk)
    aligned = sch.to_s2(params)
    assert torch.equal(fill[0, :16][new[:16]], aligned[0, :16][new[:16]])
    assert not torch.equal(fill[0, 16:24][new[16:24]], aligned[0, 16:24][new[16:24]])
