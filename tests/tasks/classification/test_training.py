"""Each strategy for two short epochs on real ACRIMA images; resume-after-interrupt; corrupt skip."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tasks.classification.conftest import small_config
from finetune_kit.tasks.classification.train import resume_config, run_training

RUN_FILES = ["config.json", "environment.json", "status.json", "metrics.jsonl", "metrics.json", "split.csv",
             "roc.png", "reliability.png", "training_curves.png", "checkpoints/best.pt", "checkpoints/last.pt"]


@pytest.mark.parametrize("strategy,extra", [
    ("linear", {}),
    ("gradual", {"gradual_patience": 1}),
    ("full", {"llrd_decay": 0.8}),
    ("progressive", {"unfreeze_schedule": "1", "unfreeze_warmup_epochs": 1}),
])
def test_strategy_two_epochs_on_acrima(strategy, extra, acrima_flat, tmp_path):
    res = run_training(small_config(acrima_flat, tmp_path, ft_strategy=strategy, label_preset="acrima", **extra))
    run = Path(res["run_dir"])
    for f in RUN_FILES:
        assert (run / f).exists(), f
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # counted from 1; the linear probe is solved exactly (L-BFGS): one record, no epochs
    assert [h["epoch"] for h in hist] == ([1] if strategy == "linear" else [1, 2])
    t = res["test"]
    for k in ("accuracy", "balanced_accuracy", "auroc", "f1", "sensitivity", "specificity", "kappa",
              "confusion_matrix", "ece", "ece_calibrated", "nll", "nll_calibrated"):
        assert k in t, k
    assert res["temperature"] > 0 and res["skipped_corrupt"] == 0
    if strategy == "linear":
        assert res["feature_cache_epochs"] == 1 and res["trainable_fraction_final"] < 0.01
        assert hist[0]["solver"] == "lbfgs" and hist[0]["C"] > 0
    if strategy == "progressive":  # head-only first epoch: cached features (LP, then FT)
        assert hist[0]["feature_cache"]
    if strategy == "gradual":  # the head is solved as the exact probe, so epoch 1 already trains layer4
        (event,) = hist[0]["unfrozen"]
        assert event["groups"] == ["layer4"] and "linear probe" in event["reason"] and not hist[0]["feature_cache"]
        assert res["unfreeze_events"][0]["epoch"] == 1
    if strategy == "progressive":  # backbone layers train from epoch 1: images, augmented
        assert not hist[1]["feature_cache"]
    if strategy == "full":
        assert res["feature_cache_epochs"] == 0
    if strategy == "full":
        assert res["trainable_fraction_final"] == pytest.approx(1.0)
    if strategy == "progressive":  # stage 1 (head + layer4) after 1 epoch: trains in epoch 2
        assert hist[1]["unfrozen"] and "layer4" in hist[1]["unfrozen"][0]["groups"]
        assert hist[0]["trainable_fraction"] < hist[1]["trainable_fraction"] < 1


def test_vit_gradual_unfreezes_top_blocks(acrima_flat, tmp_path):
    """Without the probe (``--no-probe-init``) the head stage trains by gradient, on cached features."""
    res = run_training(small_config(acrima_flat, tmp_path, ft_strategy="gradual", gradual_patience=1, num_epochs=3,
                                    model_name="vit_tiny_patch16_224", img_size=32, label_preset="acrima",
                                    probe_init=False))
    events = res["unfreeze_events"]
    assert events and events[0]["groups"] == ["blocks.10", "blocks.11+norm"] and "no improvement" in events[0]["reason"]
    hist = [json.loads(line) for line in (Path(res["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert hist[0]["feature_cache"] and not hist[0]["unfrozen"]


def test_resume_after_interrupt_matches_uninterrupted(acrima_flat, tmp_path):
    """Random augmentation, mixup, EMA and plateau unfreezing: resuming from last.pt after epoch 0
    must reproduce the uninterrupted run's per-epoch and final metrics exactly."""
    import torch

    kw = dict(ft_strategy="gradual", gradual_patience=1, num_epochs=3, augment="fundus", mixup=0.2, ema=True,
              ema_decay=0.9, label_preset="acrima", early_stopping_patience=5)
    full = run_training(small_config(acrima_flat, tmp_path / "a", **kw))
    part = run_training(small_config(acrima_flat, tmp_path / "b", stop_after_epoch=1, **kw))
    assert part["status"] == "interrupted"
    run_b = Path(part["run_dir"])
    assert json.loads((run_b / "status.json").read_text())["status"] == "interrupted"
    # the checkpoint written after epoch 0 already counts epoch 0 in the early-stopping state
    early = torch.load(run_b / "checkpoints" / "last.pt", weights_only=False)["early"]
    assert early["best_epoch"] == 1 and early["best"] is not None
    resumed = run_training(resume_config(run_b), resume=True)
    drop = {"epoch_time_s", "train_images_per_s"}
    ha = [{k: v for k, v in json.loads(x).items() if k not in drop}
          for x in (Path(full["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    hb = [{k: v for k, v in json.loads(x).items() if k not in drop}
          for x in (run_b / "metrics.jsonl").read_text().splitlines()]
    assert ha == hb
    assert full["test"] == resumed["test"] and full["best_epoch"] == resumed["best_epoch"]
    assert full["temperature"] == resumed["temperature"]
    for key in ("skipped_corrupt", "epochs_run", "trainable_fraction_mean", "feature_cache_epochs"):
        assert full[key] == resumed[key], key


def test_skip_corrupt_counts_in_metrics(acrima_imagefolder, tmp_path):
    import os

    data = tmp_path / "data"
    for cls in ("normal", "glaucoma"):
        (data / cls).mkdir(parents=True)
        for p in (acrima_imagefolder / cls).iterdir():
            os.symlink(os.readlink(p), data / cls / p.name)
    (data / "glaucoma" / "truncated.jpg").write_bytes(b"\xff\xd8\xff garbage")
    from finetune_kit.tasks.classification.transforms import CorruptImageError

    with pytest.raises(CorruptImageError, match="truncated.jpg"):
        run_training(small_config(data, tmp_path / "r1", ft_strategy="linear", linear_probe_epochs=1))
    res = run_training(small_config(data, tmp_path / "r2", ft_strategy="linear", linear_probe_epochs=1,
                                    skip_corrupt=True))
    assert res["skipped_corrupt"] == 1 and res["skipped_files"][0].endswith("truncated.jpg")


def test_frozen_batchnorm_stays_frozen_with_real_weights(acrima_flat, tmp_path, weights_file):
    """Linear probe on the real MobileNetV2 (BN folded to identity statistics) without the feature
    cache: BatchNorm buffers and backbone weights must not change; only the head does."""
    import torch

    from finetune_kit.tasks.classification.model import build_model

    res = run_training(small_config(acrima_flat, tmp_path, ft_strategy="linear", linear_probe_epochs=1,
                                    model_name="mobilenetv2_100", img_size=64, custom_weights_path=str(weights_file),
                                    augment="fundus", label_preset="acrima"))
    assert not res["feature_cache"] and res["bn_stats"] == "frozen"
    ref, _ = build_model("mobilenetv2_100", 2, custom_weights_path=str(weights_file))
    sd = torch.load(Path(res["run_dir"]) / "checkpoints" / "last.pt", weights_only=False)["model"]
    for k, v in ref.state_dict().items():
        if not k.startswith("classifier."):
            assert torch.equal(v, sd[k]), k
    assert not torch.equal(ref.classifier.weight, sd["classifier.weight"])


def test_loader_workers_repeat_exactly(acrima_flat, tmp_path):
    """Augmentation in 2 DataLoader worker processes: the same seed gives the same run."""
    kw = dict(ft_strategy="full", num_epochs=2, augment="fundus", label_preset="acrima", num_workers=2)
    a, b = (run_training(small_config(acrima_flat, tmp_path / d, **kw)) for d in ("a", "b"))
    drop = {"epoch_time_s", "train_images_per_s"}
    ha, hb = ([{k: v for k, v in json.loads(x).items() if k not in drop}
               for x in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()] for r in (a, b))
    assert ha == hb and a["test"] == b["test"]
