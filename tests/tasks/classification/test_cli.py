"""Command line: one-line errors for bad input, --amp fallback notice, predict, evaluate, demo data."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_kit.tasks.cli import app

runner = CliRunner()
FAST = ["--wandb", "disabled", "--no-progress", "--img_size", "64", "--model_name", "resnet18", "--num_threads", "1"]


def _error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_missing_data_folder(tmp_path):
    line = _error_line(runner.invoke(app, ["classify", "--data", str(tmp_path / "nope"), *FAST]))
    assert str(tmp_path / "nope") in line and "pass an image folder" in line


def test_unknown_strategy():
    line = _error_line(runner.invoke(app, ["classify", "--ft_strategy", "sideways", *FAST]))
    assert "'sideways'" in line and "gradual" in line and "linear" in line


def test_unknown_model(acrima_flat, tmp_path):
    line = _error_line(runner.invoke(app, ["classify", "--data", str(acrima_flat), "--label_preset", "acrima",
                                           "--output_dir", str(tmp_path), *FAST, "--model_name", "resnet_999"]))
    assert "resnet_999" in line and "timm.list_models" in line


def test_wrong_weights_file(acrima_flat, tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_text("not weights")
    line = _error_line(runner.invoke(app, ["classify", "--data", str(acrima_flat), "--label_preset", "acrima",
                                           "--output_dir", str(tmp_path), *FAST, "--custom_weights_path", str(bad)]))
    assert "weights.pth" in line and ".safetensors" in line


def test_out_of_range_option():
    line = _error_line(runner.invoke(app, ["classify", "--num_epochs", "0", *FAST]))
    assert line.startswith("error: --num-epochs:")


def test_amp_on_cpu_falls_back_with_notice(acrima_flat, tmp_path):
    from finetune_kit.amp import cpu_has_native_bf16

    res = runner.invoke(app, ["classify", "--data", str(acrima_flat), "--label_preset", "acrima", "--ft_strategy",
                              "linear", "--linear_probe_epochs", "1", "--batch_size", "8", "--amp",
                              "--output_dir", str(tmp_path), *FAST])
    assert res.exit_code == 0, res.output
    if not cpu_has_native_bf16():
        assert "--amp ignored" in res.output
    assert list(tmp_path.glob("*/metrics.json"))


def test_predict_and_evaluate(finished_run, acrima_flat, tmp_path):
    out = tmp_path / "pred.csv"
    res = runner.invoke(app, ["predict", str(finished_run), str(acrima_flat), "--output", str(out)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 24 and set(rows[0]) == {"path", "predicted", "p_normal", "p_glaucoma",
                                                  "ood_score", "in_distribution"}
    assert {r["in_distribution"] for r in rows} <= {"True", "False", "true", "false", "1", "0"}
    assert all(abs(float(r["p_normal"]) + float(r["p_glaucoma"]) - 1) < 1e-5 for r in rows)
    res = runner.invoke(app, ["evaluate", str(finished_run), "--data", str(acrima_flat), "--label_preset", "acrima",
                              "--name", "again"])
    assert res.exit_code == 0, res.output
    assert (finished_run / "eval-again" / "metrics.json").is_file() and (finished_run / "eval-again" / "roc.png").is_file()
    line = _error_line(runner.invoke(app, ["predict", str(finished_run), str(tmp_path / "nothing.jpg")]))
    assert "nothing.jpg" in line


def test_evaluate_relabels_class_folders_that_differ_in_case(finished_run, acrima_flat, tmp_path):
    """An external ImageFolder set named Glaucoma/ and normal/ sorts the other way round; its labels
    are mapped to the run's classes, so the metrics equal those on the same images named by rule."""
    import json
    import os

    for p in acrima_flat.iterdir():
        cls = "Glaucoma" if "_g_" in p.name else "normal"
        (tmp_path / "ext" / cls).mkdir(parents=True, exist_ok=True)
        os.symlink(os.readlink(p), tmp_path / "ext" / cls / p.name)
    ref = runner.invoke(app, ["evaluate", str(finished_run), "--data", str(acrima_flat), "--label_preset", "acrima",
                              "--name", "byname"])
    res = runner.invoke(app, ["evaluate", str(finished_run), "--data", str(tmp_path / "ext"), "--name", "folders",
                              "--extensions", "JPG,jpg"])
    assert ref.exit_code == 0 and res.exit_code == 0, res.output
    a, b = (json.loads((finished_run / f"eval-{n}" / "metrics.json").read_text()) for n in ("byname", "folders"))
    assert a["metrics"]["auroc"] == pytest.approx(b["metrics"]["auroc"])
    assert a["metrics"]["confusion_matrix"] == b["metrics"]["confusion_matrix"]


def test_layer_patterns_and_stages_reach_the_strategy(acrima_flat, tmp_path):
    import json

    res = runner.invoke(app, ["classify", "--data", str(acrima_flat), "--label_preset", "acrima", "--ft_strategy",
                              "progressive", "--num_epochs", "2", "--unfreeze_schedule", "1", "--batch_size", "8",
                              "--layer_patterns", "stem=^(?:conv1|bn1)\\.", "--layer_patterns", "layer=^layer(\\d)\\.",
                              "--layer_stages", "head;layer4,layer3", "--output_dir", str(tmp_path), *FAST])
    assert res.exit_code == 0, res.output
    metrics = json.loads(next(tmp_path.glob("*/metrics.json")).read_text())
    assert [(e["epoch"], e["groups"]) for e in metrics["unfreeze_events"]] == [(2, ["layer3", "layer4"])]  # trains from epoch 2
    bad = _error_line(runner.invoke(app, ["classify", "--data", str(acrima_flat), "--label_preset", "acrima",
                                          "--layer_stages", "head;decoder", "--output_dir", str(tmp_path), *FAST]))
    assert "'decoder'" in bad and "layer4" in bad


def test_synthetic_set_is_labelled_and_separable(tmp_path):
    import numpy as np

    from finetune_kit.tasks.classification.config import DataConfig
    from finetune_kit.tasks.classification.data import discover
    from finetune_kit.tasks.classification.synthetic import ensure_synthetic_dataset

    root = ensure_synthetic_dataset(tmp_path, size=48, per_class=6)
    assert "SYNTHETIC" in root.name and "SYNTHETIC" in (root / "README.txt").read_text()
    imgs = discover(DataConfig(data=str(root)))
    assert imgs.class_names == ["normal", "glaucoma"] and np.bincount(imgs.labels).tolist() == [6, 6]
    assert all(Path(s.path).name.startswith("SYNTHETIC_") for s in imgs.samples)


@pytest.mark.slow
def test_compare_writes_table_and_figure(acrima_flat, tmp_path):
    res = runner.invoke(app, ["compare", "--data", str(acrima_flat), "--label_preset", "acrima", "--strategies",
                              "linear,full", "--num_epochs", "1", "--linear_probe_epochs", "2", "--batch_size", "8",
                              "--val_fraction", "0.25", "--test_fraction", "0.25", "--output_dir", str(tmp_path), *FAST])
    assert res.exit_code == 0, res.output
    folder = next(tmp_path.glob("compare-*"))
    for f in ("comparison.md", "comparison.csv", "val_auroc.png", "linear/metrics.json", "full/metrics.json"):
        assert (folder / f).exists(), f
    header = (folder / "comparison.csv").read_text().splitlines()[0]
    assert header.startswith("strategy,test_auroc,test_accuracy,ece_before,ece_after")
    rows = {r["strategy"]: r for r in csv.DictReader(open(folder / "comparison.csv"))}
    # full fine-tuning adds gradients and AdamW state for all 11 M parameters (> 100 MiB); the linear
    # probe trains a 1 k-parameter head on cached features
    assert float(rows["full"]["training_memory_mb"]) > float(rows["linear"]["training_memory_mb"]) + 50
