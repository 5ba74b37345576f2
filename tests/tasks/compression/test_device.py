"""--device for the compression commands: training, fine-tuning and real-bitstream coding on CPU and CUDA.

The CUDA cases run only where a GPU is present (skipped with the reason otherwise); the device
validation of the configs is checked everywhere.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from finetune_kit.runs.checkpoint import atomic_save, load_checkpoint
from finetune_kit.tasks.compression.checkpoints import load_model, to_cpu_state
from finetune_kit.tasks.compression.data import RandomCropDataset, list_images
from finetune_kit.tasks.compression.evaluate import evaluate_image
from finetune_kit.tasks.compression.objectives.rate_distortion import RateDistortionLoss
from finetune_kit.tasks.compression.engine import build_optimizers, train_one_epoch
from finetune_kit.tasks.compression.models.zoo import build_model

NO_CUDA = "no CUDA device on this machine (the cuda case runs on a GPU machine)"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA))]


@pytest.mark.parametrize("device", DEVICES)
def test_train_steps_and_bit_exact_coding_on_device(device, photos, kodak_images, tmp_path):
    torch.manual_seed(0)
    model = build_model("hpcm-tiny").to(device)
    opt, aux = build_optimizers(model, lr=5e-4)
    loader = DataLoader(RandomCropDataset(list_images(photos)[:4], 128), batch_size=2)  # CPU batches
    before = model.g_a[0].weight.detach().clone()
    res = train_one_epoch(model, loader, opt, aux, RateDistortionLoss(0.0483), clip_max_norm=1.0)
    assert res["steps"] == 2 and model.g_a[0].weight.device.type == device
    assert not torch.equal(before, model.g_a[0].weight)
    model.eval()
    model.update(force=True)
    r = evaluate_image(model, kodak_images[0][..., :128, :192])  # a CPU image: moved to the model's device
    assert r["y_hat_exact"] and r["bytes"] > 0 and r["psnr-rgb"] > 0
    # a checkpoint written from the device loads on the CPU (portable) with equal weights
    path = atomic_save({"state_dict": to_cpu_state(model.state_dict()), "model": "hpcm-tiny"}, tmp_path / "m.pt")
    cpu_model, _ = load_model(path)
    assert all(torch.equal(v, model.state_dict()[k].cpu()) for k, v in cpu_model.state_dict().items())


@pytest.mark.parametrize("device", DEVICES)
def test_finetune_and_eval_commands_on_device(device, photos, kodak, tmp_path):
    """Balanced re-evaluation replays the device's RNG; checkpoints hold CPU tensors; eval codes on the device."""
    import json

    from typer.testing import CliRunner

    from finetune_kit.tasks.cli import app
    from finetune_kit.tasks.compression.run.loop import run as finetune
    from finetune_kit.tasks.compression.run.config import FinetuneConfig

    cfg = FinetuneConfig(data=photos, output_dir=tmp_path, model="hpcm-tiny", epochs=1, steps_per_epoch=2, batch_size=2,
                         patch_size=128, val_fraction=0.1, val_max_batches=1, wandb="disabled", progress=False,
                         threads=1, use_balanced=True, use_hierarchical=True, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # from scratch, on purpose
        res = finetune(cfg)
    ck = load_checkpoint(res["checkpoint"])
    assert ck["config"]["device"] == device
    assert all(v.device.type == "cpu" for v in ck["state_dict"].values())
    steps = [json.loads(line) for line in open(f"{res['run_dir']}/steps.jsonl")]
    assert len(steps) == 2 and all("delta/rate_s3" in s for s in steps)
    r = CliRunner().invoke(app, ["compress", "train", "--preset", "hpcm-tiny", "--data", str(photos), "--output-dir",
                                 str(tmp_path / "t"), "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2",
                                 "--patch-size", "128", "--wandb", "disabled", "--no-progress", "--device", device])
    assert r.exit_code == 0, r.output
    trained = load_checkpoint(next((tmp_path / "t").iterdir()) / "checkpoints" / "last.pt")
    assert trained["config"]["device"] == device and trained["state_dict"]["g_a.0.weight"].device.type == "cpu"
    out = tmp_path / "eval"
    r = CliRunner().invoke(app, ["compress", "eval", res["checkpoint"], "--data", str(kodak), "--limit", "1",
                                 "--output", str(out), "--device", device, "--no-progress"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "results.json").read_text())["y_hat_exact"] == [True]


@pytest.mark.parametrize("device", DEVICES)
def test_balanced_replay_sees_the_same_quantization_noise(device):
    from finetune_kit.tasks.compression.objectives.objective import replay_rng, rng_snapshot

    torch.manual_seed(0)
    model = build_model("hpcm-tiny").to(device).train()
    x = torch.rand(1, 3, 128, 128, device=device)
    dev = torch.device(device)
    state = rng_snapshot(dev)
    with torch.no_grad():
        first = model(x)["likelihoods"]["y"]
        with replay_rng(dev, state):
            replayed = model(x)["likelihoods"]["y"]
        after = model(x)["likelihoods"]["y"]
    assert torch.equal(first, replayed)  # the noise is drawn on the device: its generator is replayed
    assert not torch.equal(first, after)  # and restored afterwards: the run's stream moves on


def test_device_options_are_validated_at_the_edge(photos, tmp_path):
    from finetune_kit.tasks.compression.config import EvalConfig, check_device
    from finetune_kit.tasks.compression.run.config import TrainConfig

    assert check_device("cpu") == "cpu"
    for bad in ("gpu", "cuda:x", "cuda:-1", "CPU"):
        with pytest.raises(ValueError, match="is not one of cpu, cuda, cuda:N"):
            check_device(bad)
    with pytest.raises(ValueError, match=r"cuda:99'?: (CUDA is not available|this machine has \d+ CUDA device)"):
        TrainConfig(data=photos, device="cuda:99")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available on this machine.*use --device cpu"):
            check_device("cuda")
    from typer.testing import CliRunner

    from finetune_kit.tasks.cli import app

    r = CliRunner().invoke(app, ["compress", "train", "--data", str(photos), "--device", "cuda:99"])
    assert r.exit_code == 2 and "device" in r.output and "cuda:99" in r.output
    path = atomic_save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="is not one of"):
        EvalConfig(checkpoints=[path], data=photos, device="tpu")
