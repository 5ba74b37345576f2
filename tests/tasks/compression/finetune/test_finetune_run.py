"""Short real fine-tunes of the small HPCM preset on photos-train crops (CPU)."""
from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

from finetune_kit.runs.checkpoint import atomic_save, load_checkpoint
from finetune_kit.tasks.compression.run.config import OptionWarning


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    """A 'trained' hpcm-tiny checkpoint (random weights, compress-train layout, lambda 0.0067)."""
    from finetune_kit.tasks.compression.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model("hpcm-tiny")
    path = tmp_path_factory.mktemp("base") / "base.pt"
    atomic_save({"state_dict": model.state_dict(), "model": "hpcm-tiny", "epoch": 41,
                 "config": {"model": "hpcm-tiny", "lmbda": 0.0067}}, path)
    return path


def _cfg(data, out, **kw):
    from finetune_kit.tasks.compression.run.config import FinetuneConfig

    base = dict(data=data, output_dir=out, epochs=2, steps_per_epoch=2, batch_size=2, patch_size=128,
                val_fraction=0.2, val_max_batches=1, wandb="disabled", progress=False, threads=1, seed=0)
    return FinetuneConfig(**{**base, **kw})


def test_hierarchical_balanced_progressive_and_resume(photos, base_ckpt, tmp_path, capsys):
    from finetune_kit.tasks.compression.run.loop import run as finetune

    opts = dict(checkpoint=base_ckpt, lmbda=0.013, learning_rate=1e-4, use_hierarchical=True, use_balanced=True,
                adaptive_gamma=True, gamma_strategy="hierarchical", scale_early_stopping=True,
                early_stopping_patience=3, progressive_unfreeze=True, unfreeze_schedule="1,2",
                unfreeze_warmup_epochs=1, freeze_entropy=True)
    ctx_before = {k: v.clone() for k, v in torch.load(base_ckpt)["state_dict"].items()
                  if k.startswith(("context.", "entropy_bottleneck."))}
    with pytest.warns(OptionWarning, match="epoch\\(s\\) 2 are >= --epochs 2"):
        res = finetune(_cfg(photos, tmp_path, name="h", **opts))
    run = res["run_dir"]
    import hashlib
    from pathlib import Path

    env = json.loads((Path(run) / "environment.json").read_text())  # the weights fine-tuned from, fingerprinted
    assert env["inputs"]["checkpoint"]["sha256"] == hashlib.sha256(Path(base_ckpt).read_bytes()).hexdigest()
    assert env["inputs"]["data"]["kind"] == "folder"
    # --freeze_entropy pins the entropy bottleneck: stage 2 announces (and counts) only h_a, h_s
    from finetune_kit.tasks.compression.models.zoo import build_model

    ev = load_checkpoint(res["checkpoint"])["finetune"]["strategy"]["events"]
    assert [e["groups"] for e in ev] == [["h_a", "h_s"]]
    counts = {n: sum(p.numel() for k, p in build_model("hpcm-tiny").named_parameters() if k.startswith(n + "."))
              for n in ("g_a", "g_s", "h_a", "h_s")}
    assert ev[0]["trainable_params"] == sum(counts.values())
    assert "epoch 2: unfroze h_a, h_s (" in capsys.readouterr().out  # unfreeze_schedule 1: after 1 epoch
    ck = load_checkpoint(res["checkpoint"])
    assert ck["epoch"] == 2 and ck["config"]["lmbda"] == 0.013 and ck["model"] == "hpcm-tiny"
    assert "lambda=0.0067" in res["notes"][0]  # another lambda: announced, counters reset (epoch 0 start)
    sd = ck["state_dict"]
    # context unfreezes only at epoch 2 (not reached) and the entropy bottleneck is frozen: unchanged
    for k, v in ctx_before.items():
        if not k.endswith(("_quantized_cdf", "_offset", "_cdf_length")):
            assert torch.equal(sd[k], v), k
    bal = ck["finetune"]["balanced"]
    assert bal["task_names"][0] == "dist_coarse" and bal["steps"] == 4 and not torch.equal(bal["w"], torch.zeros(7))
    steps = [json.loads(line) for line in open(f"{run}/steps.jsonl")]
    assert len(steps) == 4 and "weight/rate_s3" in steps[0] and "scale_contrib/s1" in steps[0] and "gamma/rate_z" in steps[0]
    hist = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
    assert {"val_rd_s1", "val_rd_s2", "val_rd_s3", "gamma_s1", "es_s1"} <= set(hist[0])
    assert hist[0]["gamma_s1"] > hist[1]["gamma_s1"]  # hierarchical schedule anneals s1 first
    assert json.load(open(f"{run}/scale_early_stopping.json"))["history"][0]["signals"]["s1"] == "improved"
    lr_rows = {r["group"]: r for r in json.load(open(f"{run}/lr_table.json"))["groups"]}
    assert lr_rows["context"]["frozen"] and lr_rows["g_a"]["lr"] == pytest.approx(1e-4)
    # resume one more epoch: same run folder, balanced state continues, context unfreezes at epoch 2
    res2 = finetune(_cfg(photos, tmp_path, resume=run, **{**opts, "epochs": 3}))
    assert res2["run_dir"] == run
    ck2 = load_checkpoint(res2["checkpoint"])
    assert ck2["epoch"] == 3 and ck2["finetune"]["balanced"]["steps"] == 6
    assert [h["epoch"] for h in (json.loads(line) for line in open(f"{run}/metrics.jsonl"))] == [1, 2, 3]
    assert [s["step"] for s in (json.loads(line) for line in open(f"{run}/steps.jsonl"))] == [0, 1, 2, 3, 4, 5]
    assert "context" in ck2["finetune"]["strategy"]["trainable"]


def test_resume_from_an_earlier_checkpoint_drops_the_later_trajectory(photos, base_ckpt, tmp_path):
    from finetune_kit.tasks.compression.run.loop import run as finetune

    res = finetune(_cfg(photos, tmp_path, checkpoint=base_ckpt, epochs=3, steps_per_epoch=1, keep_last=3, keep_best=1))
    run = res["run_dir"]
    ckdir = f"{run}/checkpoints"
    first = load_checkpoint(f"{ckdir}/epoch_0001.pt")  # the first epoch
    assert first["epoch"] == 1
    res2 = finetune(_cfg(photos, tmp_path, resume=f"{ckdir}/epoch_0001.pt", epochs=2, steps_per_epoch=1, keep_last=3,
                         keep_best=1))
    assert res2["run_dir"] == run and load_checkpoint(res2["checkpoint"])["epoch"] == 2
    track = json.load(open(f"{ckdir}/checkpoints.json"))
    assert sorted(e["epoch"] for e in track["entries"]) == [1, 2]  # epoch 3 of the old run is gone
    assert not os.path.exists(f"{ckdir}/epoch_0003.pt")
    assert load_checkpoint(f"{ckdir}/best.pt")["epoch"] in (1, 2) and load_checkpoint(f"{ckdir}/last.pt")["epoch"] == 2
    steps = [json.loads(line) for line in open(f"{run}/steps.jsonl")]
    assert [(s["epoch"], s["step"]) for s in steps] == [(1, 0), (2, 1)]  # no duplicated steps of the old epochs 1, 2
    assert [h["epoch"] for h in (json.loads(line) for line in open(f"{run}/metrics.jsonl"))] == [1, 2]


def test_option_warnings_and_gamma_strategy_implies_a_schedule(photos):
    from finetune_kit.tasks.compression.run.config import FinetuneConfig, OptionWarning

    def cfg(**kw):
        return FinetuneConfig(data=photos, **kw)

    with pytest.warns(OptionWarning, match="--gamma_final 0.001 is ignored with a constant gamma"):
        assert cfg(use_balanced=True, gamma=0.003, gamma_final=0.001).gamma_strategy == "constant"
    with pytest.warns(OptionWarning, match="--gamma, --gamma_strategy only act on the balanced optimizer"):
        cfg(gamma=0.003, gamma_strategy="cosine")
    with pytest.warns(OptionWarning, match="epoch\\(s\\) 200 are >= --epochs 150"):
        cfg(progressive_unfreeze=True, unfreeze_schedule="100,200", epochs=150)
    with pytest.warns(OptionWarning, match="ignored without --progressive_unfreeze"):
        cfg(unfreeze_schedule="1,2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the guides' workflow 3 as written: no warning
        guide = cfg(use_balanced=True, adaptive_gamma=True, gamma_strategy="hpcm", gamma=0.003, gamma_final=0.001)
        assert guide.gamma_strategy == "hpcm"
        assert cfg(use_balanced=True, gamma_strategy="cosine", gamma_final=0.001).gamma_strategy == "cosine"
        assert cfg(use_balanced=True, use_hierarchical=True, adaptive_gamma=True).gamma_strategy == "hierarchical"
    with pytest.raises(ValueError, match="comma-separated epochs"):
        cfg(progressive_unfreeze=True, unfreeze_schedule="a,b")


def test_from_scratch_warns_and_two_task_balanced(photos, tmp_path):
    from finetune_kit.tasks.compression.run.loop import run as finetune
    from finetune_kit.tasks.compression.run.source import FromScratchWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = finetune(_cfg(photos, tmp_path, epochs=1, use_balanced=True, gamma=0.003, model="hpcm-tiny"))
    assert any(issubclass(w.category, FromScratchWarning) and "FROM SCRATCH" in str(w.message) for w in caught)
    ck = load_checkpoint(res["checkpoint"])
    assert ck["finetune"]["balanced"]["task_names"] == ["distortion", "rate"]
    assert float(ck["finetune"]["balanced"]["gamma"][0]) == pytest.approx(0.003)


def test_cli_yaml_config_and_flags(photos, base_ckpt, tmp_path):
    from typer.testing import CliRunner

    from finetune_kit.tasks.cli import app

    cfg = tmp_path / "ft.yaml"
    cfg.write_text(f"data: {photos}\ncheckpoint: {base_ckpt}\nepochs: 1\nsteps_per_epoch: 1\nbatch_size: 2\n"
                   f"patch_size: 128\nval_fraction: 0.2\nval_max_batches: 1\nwandb: disabled\nlambda: 0.025\n"
                   f"learning-rate: 0.001\nfreeze_entropy: true\n")
    r = CliRunner().invoke(app, ["compress", "finetune", "--config", str(cfg), "--output_dir", str(tmp_path / "o"),
                                 "--learning-rate", "2e-4", "--context_lr_ratio", "0.2", "--no-progress", "--threads", "1"])
    assert r.exit_code == 0, r.output
    run = r.output.split("run folder: ")[1].split()[0]
    conf = json.load(open(f"{run}/config.json"))
    assert conf["learning_rate"] == 2e-4 and conf["lmbda"] == 0.025 and conf["freeze_entropy"] is True
    assert conf["context_lr_ratio"] == 0.2
    bad = CliRunner().invoke(app, ["compress", "finetune", "--data", str(photos), "--decomposition", "fixed"])
    assert bad.exit_code == 2 and "--use_hierarchical" in bad.output
    bad = CliRunner().invoke(app, ["compress", "finetune", "--data", str(photos), "--device", "gpu"])
    assert bad.exit_code == 2 and "device 'gpu' is not one of cpu, cuda, cuda:N" in bad.output
