"""Loading compression checkpoints: whole dicts, module. prefixes, after update(), wrong architectures."""
from __future__ import annotations

import pytest
import torch

from finetune_kit.runs.checkpoint import atomic_save
from finetune_kit.tasks.compression.checkpoints import CheckpointMismatchError, load_model, load_weights
from finetune_kit.tasks.compression.models.zoo import build_model


@pytest.fixture()
def tiny():
    torch.manual_seed(1)
    return build_model("hpcm-tiny")


def test_whole_checkpoint_dict_is_accepted(tiny, tmp_path):
    path = atomic_save({"state_dict": tiny.state_dict(), "epoch": 3, "model": "hpcm-tiny",
                        "config": {"model": "hpcm-tiny", "lmbda": 0.0067}}, tmp_path / "c.pt")
    model, ckpt = load_model(path)
    assert ckpt["epoch"] == 3
    for k, v in tiny.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


def test_module_prefix_is_stripped(tiny):
    sd = {f"module.{k}": v for k, v in tiny.state_dict().items()}
    fresh = build_model("hpcm-tiny")
    load_weights(fresh, sd)
    assert torch.equal(fresh.g_a[0].weight, tiny.g_a[0].weight)


def test_state_dict_after_update_loads_into_fresh_model(tiny, kodak_images):
    tiny.eval().update(force=True)
    sd = tiny.state_dict()
    assert sd["gaussian_conditional._quantized_cdf"].numel() > 0
    fresh = build_model("hpcm-tiny").eval()
    assert fresh.state_dict()["gaussian_conditional._quantized_cdf"].numel() == 0
    load_weights(fresh, sd)  # CompressionModel.load_state_dict resizes the CDF buffers
    x = kodak_images[0][..., :128, :128]
    a, b = tiny.compress(x), fresh.compress(x)  # fresh works without calling update()
    assert a["strings"] == b["strings"]


def test_other_size_fails_with_one_line_naming_keys(tiny):
    small = build_model("hpcm-small")
    with pytest.raises(CheckpointMismatchError) as info:
        load_weights(small, {"state_dict": tiny.state_dict(), "model": "hpcm-tiny"}, model_name="hpcm-small")
    msg = str(info.value)
    assert "\n" not in msg
    assert "shape mismatches" in msg and "g_a.0.weight" in msg and "hpcm-tiny" in msg


def test_other_architecture_fails_naming_missing_keys(tiny):
    zoo = build_model("bmshj2018-hyperprior")
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \[context \d+"):
        load_weights(tiny, zoo.state_dict())


def test_bare_state_dict_needs_a_model_name(tiny, tmp_path):
    path = atomic_save(tiny.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="--model"):
        load_model(path)
    model, _ = load_model(path, "hpcm-tiny")
    assert torch.equal(model.g_s[0].weight, tiny.g_s[0].weight)


def test_zoo_models_build_and_round_trip():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64)
    for name in ("bmshj2018-hyperprior", "mbt2018-mean"):
        m = build_model(name).eval()
        m.update(force=True)
        enc = m.compress(x)
        dec = m.decompress(enc["strings"], enc["shape"])
        assert dec["x_hat"].shape == x.shape
    for name in ("cheng2020-anchor", "elic2022-chandelier"):
        assert any(n.endswith(".quantiles") for n, _ in build_model(name).named_parameters())
    with pytest.raises(ValueError, match="unknown compression model"):
        build_model("hpcm-huge")
