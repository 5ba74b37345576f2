"""Domain adaptation with adapters on real images: a tiny HPCM base fine-tuned with adapters to
fundus photographs (ACRIMA) and evaluated with real bitstreams on the target's held-out image and
on Kodak (the source), before and after."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from finetune_kit.tasks.compression.checkpoints import load_model
from finetune_kit.tasks.compression.config import EvalConfig
from finetune_kit.tasks.compression.evaluate import evaluate_image, run_eval
from finetune_kit.tasks.compression.finetune.adapters import (ADAPTER_PARAMS, adapter_parameters, adapter_summary,
                                                              attach_adapters)
from finetune_kit.tasks.compression.models.zoo import build_model
from finetune_kit.tasks.compression.run.config import FinetuneConfig
from finetune_kit.tasks.compression.run.loop import run

ACRIMA = Path(__file__).resolve().parents[4].parent / "shared" / "data" / "acrima" / "images"


@pytest.fixture(scope="module")
def fundus(tmp_path_factory) -> Path:
    """Four ACRIMA fundus photographs (277-409 px; links), the target domain."""
    if not ACRIMA.is_dir():
        pytest.skip(f"{ACRIMA} is absent")
    d = tmp_path_factory.mktemp("fundus")
    for p in sorted(ACRIMA.iterdir())[:4]:
        (d / p.name).symlink_to(p)
    return d


@pytest.fixture(scope="module")
def adapted(tiny_base_checkpoint, fundus, kodak_crops, tmp_path_factory):
    """``compress finetune --adapter conv --source-data KODAK_CROPS`` from the tiny base: 3 steps."""
    out = tmp_path_factory.mktemp("adapted")
    cfg = FinetuneConfig(checkpoint=tiny_base_checkpoint, data=fundus, val_fraction=0.25, epochs=1, steps_per_epoch=3,
                         batch_size=2, patch_size=64, learning_rate=1e-3, adapter="conv", adapter_rank=4,
                         source_data=kodak_crops, source_limit=1, wandb="disabled", progress=False, threads=1,
                         output_dir=out, name="conv")
    return run(cfg), cfg


def test_only_adapters_train_and_their_side_cost_is_reported(adapted, tiny_base_checkpoint):
    final, _ = adapted
    base = torch.load(tiny_base_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    after = torch.load(final["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    adapters = [k for k in after if ".conv_adapter." in k]
    assert adapters and all(k not in base for k in adapters)
    frozen = [k for k in base if k in after and after[k].dtype.is_floating_point and after[k].shape == base[k].shape]
    assert all(torch.equal(base[k], after[k]) for k in frozen)  # every base weight, entropy models included
    assert any(after[k].abs().sum() > 0 for k in adapters if k.endswith("up.weight"))  # the adapters moved
    n = sum(after[k].numel() for k in adapters)
    assert final["domain"]["adapter_params"] == n and final["domain"]["adapter_bits"] == 32 * n


def test_source_evaluation_equals_compress_eval_of_the_same_checkpoint(adapted, kodak_crops, tmp_path):
    final, cfg = adapted
    src = final["domain"]["source"]
    res = run_eval(EvalConfig(checkpoints=[final["best_checkpoint"]], data=kodak_crops, limit=1,
                              output=tmp_path / "eval", progress=False))
    assert src["after"]["bpp"] == res["results"]["bpp"][0]
    assert src["after"]["psnr-rgb"] == res["results"]["psnr-rgb"][0]
    assert src["before"]["checkpoint"] == str(cfg.source.checkpoint)
    assert src["after"]["y_hat_exact"] and final["domain"]["target"]["after"]["y_hat_exact"]
    assert final["domain"]["target"]["after"]["images"] == 1  # the held-out quarter of 4
    assert set(final["domain"]["target"]["change"]) == {"bpp_pct", "psnr_db", "rd_cost_pct"}
    assert (Path(final["run_dir"]) / "domain_eval.json").is_file()


def test_adapted_checkpoint_loads_and_decodes_bit_exact_with_its_adapters(adapted, tiny_base_checkpoint, kodak_images):
    final, _ = adapted
    model, _ = load_model(final["best_checkpoint"])
    assert adapter_summary(model)["adapter_params"] == final["domain"]["adapter_params"]
    base, _ = load_model(tiny_base_checkpoint)
    x = kodak_images[0][..., :128, :128]
    model.update(force=True)
    base.update(force=True)
    r = evaluate_image(model, x)
    assert r["y_hat_exact"]
    enc = model.compress(x)
    dec = model.decompress(enc["strings"], enc["shape"], enc["image_size"])
    assert torch.allclose(dec["x_hat"], model.g_s(enc["y_hat"]).clamp(0, 1)[..., :128, :128], atol=1e-6)
    assert not torch.allclose(dec["x_hat"], base.decompress(enc["strings"], enc["shape"], enc["image_size"])["x_hat"])


def test_lora_adapters_train_and_code_with_real_bitstreams(kodak_images):
    torch.manual_seed(0)
    model = build_model("hpcm-tiny")
    found = attach_adapters(model, "lora", 4, "g_s")
    assert found and all(n.startswith("g_s.") for n in found)
    params = adapter_parameters(model)
    assert params and all(".lora_" in n for n in params)
    for n, p in model.named_parameters():
        p.requires_grad_(n in params)
    opt = torch.optim.Adam(params.values(), lr=1e-2)
    x = kodak_images[0][..., :64, :64]
    for _ in range(2):
        opt.zero_grad()
        out = model(x)
        torch.nn.functional.mse_loss(out["x_hat"], x).backward()
        opt.step()
    assert any(p.abs().sum() > 0 for n, p in params.items() if "lora_B" in n)
    state = model.state_dict()
    again = build_model("hpcm-tiny")
    attach_adapters(again, "lora", 4, "g_s")
    again.load_state_dict(state)
    model.eval().update(force=True)
    again.eval().update(force=True)
    a, b = evaluate_image(model, x), evaluate_image(again, x)
    assert a["y_hat_exact"] and a["bpp"] == b["bpp"] and a["psnr-rgb"] == b["psnr-rgb"]


@pytest.mark.parametrize("kind, targets, model_name, message", [
    ("conv", "nothing", "hpcm-tiny", "has no such module"),
    ("conv", "context", "bmshj2018-hyperprior", "has no such module"),
    ("lora", "g_s", "bmshj2018-hyperprior", "no Conv2d"),
])
def test_adapter_target_errors_are_one_line(kind, targets, model_name, message):
    with pytest.raises(ValueError, match=message) as exc:
        attach_adapters(build_model(model_name), kind, 4, targets)
    assert "\n" not in str(exc.value)


def _script(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[4] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_domain_adaptation_table_script(tiny_base_checkpoint, fundus, kodak_crops, tmp_path):
    rows = _script("domain_adaptation").main([
        "--base", str(tiny_base_checkpoint), "--target", str(fundus), "--source", str(kodak_crops), "--source-limit",
        "1", "--val-fraction", "0.25", "--workflows", "decoder-only,lora", "--steps", "2", "--batch-size", "2",
        "--patch-size", "64", "--lr", "1e-3", "--rank", "2", "--threads", "1", "--output", str(tmp_path)])
    by = {r["workflow"]: r for r in rows}
    assert by["lora"]["adapter_bits"] > 0 and by["decoder-only"]["adapter_bits"] == 0
    assert by["lora"]["trainable_params"] * 32 == by["lora"]["adapter_bits"]
    assert by["decoder-only"]["trainable_params"] > by["lora"]["trainable_params"]
    for r in rows:  # the same base, so the same "before" on both domains
        assert r["source_base_bpp"] == rows[0]["source_base_bpp"]
    assert {p.name for p in tmp_path.iterdir()} >= {"domain_adaptation.csv", "domain_adaptation.md", "domain_rd.png"}


def test_base_recipe_script_trains_and_reports_speed_and_rd(few_photos, kodak_crops, tmp_path):
    res = _script("train_base").main([
        "--device", "cpu", "--threads", "1", "--model", "hpcm-tiny", "--steps", "2", "--epochs", "2",
        "--batch-size", "2", "--patch-size", "64", "--data", str(few_photos), "--kodak", str(kodak_crops),
        "--kodak-images", "1", "--output", str(tmp_path)])
    assert res["steps"] == 2 and res["steps_per_s"] > 0 and res["y_hat_exact"]
    assert res["kodak_images"] == 1 and res["kodak_bpp"] > 0
    assert res["gap_db_vs_bmshj2018"] > 3  # two steps from random weights are far below the published model
    assert (Path(res["checkpoint"]).parents[1] / "base_result.json").is_file()
