"""Training building blocks, the train command (the one run without a source), checkpoints and --resume."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from finetune_kit.runs.checkpoint import load_checkpoint
from finetune_kit.tasks.cli import app
from finetune_kit.tasks.compression.config import PAPER_LAMBDAS
from finetune_kit.tasks.compression.data import RandomCropDataset, list_images
from finetune_kit.tasks.compression.engine import build_optimizers, evaluate, train_one_epoch
from finetune_kit.tasks.compression.models.zoo import build_model
from finetune_kit.tasks.compression.objectives.rate_distortion import RateDistortionLoss as RateDistortion
from finetune_kit.tasks.compression.run.config import FinetuneConfig, TrainConfig
from finetune_kit.tasks.compression.run.loop import run as train


def test_train_one_epoch_and_evaluate_report_per_scale_rates(photos):
    torch.manual_seed(0)
    model = build_model("hpcm-tiny")
    opt, aux = build_optimizers(model)
    assert [p for g in aux.param_groups for p in g["params"]] == [model.entropy_bottleneck.quantiles]
    loader = DataLoader(RandomCropDataset(list_images(photos)[:4], 128), batch_size=2)
    before = model.g_a[0].weight.detach().clone()
    res = train_one_epoch(model, loader, opt, aux, RateDistortion(0.013), clip_max_norm=1.0)
    assert res["steps"] == 2 and res["images"] == 4
    for k in ("loss", "bpp_loss", "mse_loss", "aux_loss", "bpp_s1", "bpp_s2", "bpp_s3", "bpp_y", "bpp_z"):
        assert k in res
    assert not torch.equal(before, model.g_a[0].weight)
    ev = evaluate(model, loader, RateDistortion(0.013))
    assert model.training and ev["psnr"] > 0
    # per-scale rates against an independent count: bits of every y element from likelihoods["y"]
    model.eval()
    x = next(iter(loader))
    with torch.no_grad():
        out = model(x)
        res = RateDistortion(0.013)(out, x)
    n = x.shape[0] * x.shape[2] * x.shape[3]
    y_bits = (-torch.log2(out["likelihoods"]["y"])).sum() / n
    z_bits = (-torch.log2(out["likelihoods"]["z"])).sum() / n
    assert float(res["bpp_s1"] + res["bpp_s2"] + res["bpp_s3"]) == pytest.approx(float(y_bits), rel=1e-5)
    assert float(res["bpp_z"]) == pytest.approx(float(z_bits), rel=1e-5)
    assert min(float(res[f"bpp_{s}"]) for s in ("s1", "s2", "s3")) > 0  # each scale codes some of y


def test_ms_ssim_loss_and_zoo_model(photos):
    model = build_model("bmshj2018-hyperprior")
    x = RandomCropDataset(list_images(photos)[:1], 192)[0].unsqueeze(0)
    res = RateDistortion(10.0, "ms-ssim")(model(x), x)
    assert {"loss", "bpp_loss", "mse_loss", "ms_ssim_loss", "bpp_y", "bpp_z"} <= set(res)
    assert "bpp_s1" not in res


def _train_args(photos, out, epochs, extra=("--quality", "6")):
    return ["compress", "train", "--preset", "hpcm-tiny", "--data", str(photos), "--output-dir", str(out),
            "--name", "t", "--epochs", str(epochs), "--steps-per-epoch", "2", "--batch-size", "2",
            "--patch-size", "128", "--wandb", "disabled", "--no-progress", *extra]


def test_train_cli_checkpoints_and_resume(photos, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, _train_args(photos, tmp_path, 2))
    assert r.exit_code == 0, r.output
    run = next(tmp_path.iterdir())
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    for key in ("state_dict", "optimizer", "aux_optimizer", "lr_scheduler", "epoch", "config"):
        assert key in ckpt
    assert ckpt["epoch"] == 2 and ckpt["config"]["model"] == "hpcm-tiny"  # epochs counted from 1
    assert ckpt["config"]["lmbda"] == PAPER_LAMBDAS[5]
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    for name in ("config.json", "environment.json", "metrics.json"):
        assert (run / name).is_file()
    env = json.loads((run / "environment.json").read_text())
    assert env["inputs"]["data"]["kind"] == "folder" and env["inputs"]["data"]["files"] > 0
    assert len(env["inputs"]["data"]["sha256"]) == 64 and env["finetune_kit"]

    r = runner.invoke(app, _train_args(photos, tmp_path, 3, ["--quality", "6", "--resume", str(run)]))
    assert r.exit_code == 0, r.output
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    resumed = load_checkpoint(run / "checkpoints" / "last.pt")
    assert resumed["epoch"] == 3 and (run / "checkpoints" / "epoch_0003.pt").exists()
    assert resumed["optimizer"]["state"][0]["step"] > ckpt["optimizer"]["state"][0]["step"]

    # resuming with another lambda is refused with one line
    r = runner.invoke(app, _train_args(photos, tmp_path, 4, ["--resume", str(run), "--lambda", "0.0018"]))
    assert r.exit_code == 2 and "cannot resume" in r.output and "lmbda=0.0483" in r.output


def test_resume_with_other_lambda_is_refused(photos, tmp_path):
    cfg = TrainConfig(data=photos, output_dir=tmp_path, name="a", epochs=1, steps_per_epoch=1, batch_size=2,
                      patch_size=128, wandb="disabled", progress=False)
    final = train(cfg)
    other = TrainConfig.model_validate({**cfg.flat(), "lmbda": 0.0483, "resume": final["checkpoint"], "epochs": 2})
    with pytest.raises(ValueError, match="lmbda=0.0067"):
        train(other)


def test_bad_options_give_one_line_errors(photos, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["compress", "train", "--data", str(photos), "--model", "hpcm-huge"])
    assert r.exit_code == 2 and "unknown model 'hpcm-huge'" in r.output
    r = runner.invoke(app, ["compress", "train", "--data", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = runner.invoke(app, ["compress", "train", "--data", str(photos), "--metric", "ms-ssim", "--patch-size", "128"])
    assert r.exit_code == 2 and "161 px" in r.output
    r = runner.invoke(app, _train_args(photos, tmp_path, 1, ["--patch-size", "1024"]))  # photos are 512 px high
    assert r.exit_code == 1 and "smaller than the 1024 px crop" in r.output


@pytest.mark.parametrize("exc, status", [(KeyboardInterrupt, "interrupted"), (RuntimeError, "failed")])
def test_interrupt_and_failure_inside_an_epoch_are_recorded(photos, tmp_path, monkeypatch, exc, status):
    """Ctrl-C inside a training step leaves status ``interrupted``; any other exception ``failed``
    (both commands, through run_lifecycle)."""
    from finetune_kit.tasks.compression import engine

    def boom(*args, **kwargs):
        raise exc("stopped in the step")

    monkeypatch.setattr(engine, "train_step", boom)
    cfg = TrainConfig(data=photos, output_dir=tmp_path / "t", name="a", epochs=1, steps_per_epoch=1, batch_size=2,
                      patch_size=128, wandb="disabled", progress=False)
    ft = FinetuneConfig(data=photos, output_dir=tmp_path / "f", model="hpcm-tiny", epochs=1, steps_per_epoch=1,
                        batch_size=2, patch_size=128, val_fraction=0.2, wandb="disabled", progress=False)
    for run in (lambda: train(cfg), lambda: train(ft)):
        with pytest.raises(exc), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fine-tune's from-scratch warning
            run()
    for out in (tmp_path / "t", tmp_path / "f"):
        st = json.loads((next(out.iterdir()) / "status.json").read_text())
        assert st["status"] == status
        expected = "continue with --resume" if exc is KeyboardInterrupt else "RuntimeError: stopped in the step"
        assert expected in st["error"]


def test_models_without_quantiles_train_without_an_aux_optimizer():
    """HPCM with the paper's mean-scale z model has no aux loss: no aux optimizer, steps still train."""
    from finetune_kit.tasks.compression.engine import RDObjective, build_optimizers, train_step
    from finetune_kit.tasks.compression.objectives.rate_distortion import RateDistortionLoss
    from finetune_kit.tasks.compression.models.hpcm.model import HPCM

    torch.manual_seed(0)
    model = HPCM("hpcm-tiny", schedule="paper", y_entropy="generalized-gaussian", z_entropy="mean-scale")
    opt, aux = build_optimizers(model, lr=1e-3)
    assert aux is None
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.rand(1, 3, 64, 64)
    train_step(model, x, opt, aux, RDObjective(RateDistortionLoss(0.0483)))
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("entropy_bottleneck") for n in moved) and any(n.startswith("g_a") for n in moved)


def test_progress_bar_does_not_change_the_random_stream(monkeypatch):
    """The same seeded epoch with and without a progress bar trains on the same batches."""
    from torch.utils.data import DataLoader, RandomSampler, TensorDataset

    from finetune_kit.tasks.compression import engine

    batches: list[torch.Tensor] = []
    monkeypatch.setattr(engine, "train_step", lambda model, x, *a, **k: batches.append(x) or {"loss": x.mean()})
    seen = {}
    for progress in (False, True):
        torch.manual_seed(0)
        ds = TensorDataset(torch.rand(6, 3, 32, 32))
        loader = DataLoader(ds, batch_size=2, sampler=RandomSampler(ds, replacement=True, num_samples=6),
                            collate_fn=lambda b: torch.stack([t[0] for t in b]))
        batches.clear()
        engine.train_one_epoch(torch.nn.Linear(1, 1), loader, None, None, engine.RDObjective(None), progress=progress)
        seen[progress] = torch.stack(batches)
    assert torch.equal(seen[False], seen[True])
