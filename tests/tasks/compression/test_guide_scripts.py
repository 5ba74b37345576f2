"""The guides' scripts under scripts/ run in a tiny form (thin wrappers over the commands)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = ROOT / "scripts"
#: appended to every script's command: the last value of an option wins
TINY = ["--epochs", "2", "--steps-per-epoch", "1", "-b", "2", "--patch-size", "64", "--val-fraction", "0.2",
        "--wandb", "disabled", "--no-progress", "--threads", "1", "--device", "cpu"]


def _env() -> dict:
    env = dict(os.environ, WANDB_MODE="disabled", NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # this venv's finetune-kit
    return env


def _run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(list(args), capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    if ok:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.mark.slow
@pytest.mark.parametrize("script,expect", [
    ("run_finetune_standard.sh", {"freeze_entropy": True, "context_lr_ratio": 0.1}),
    ("run_finetune_hierarchical.sh", {"use_hierarchical": True, "scale_modulation": "guides",
                                      "scale_early_stopping": True}),
    ("run_finetune_progressive.sh", {"use_hierarchical": True, "progressive_unfreeze": True, "unfreeze_schedule": "1"}),
    ("run_balanced_adaptive.sh", {"use_balanced": True, "gamma_strategy": "hpcm", "gamma": 0.003}),
])
def test_finetune_scripts(script, expect, tiny_base_checkpoint, few_photos, tmp_path):
    extra = ["--unfreeze-schedule", "1"] if "progressive" in script else []
    res = _run("bash", str(SCRIPTS / script), str(tiny_base_checkpoint), str(few_photos), *TINY, *extra,
               "--output-dir", str(tmp_path))
    run = Path(res.stdout.split("run folder: ")[1].split()[0])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["lmbda"] == 0.013 and cfg["epochs"] == 2 and cfg["checkpoint"] == str(tiny_base_checkpoint)
    assert {k: cfg[k] for k in expect} == expect
    assert (run / "training_curves.png").is_file()


@pytest.mark.slow
def test_balanced_from_scratch_and_the_dispatcher(tiny_base_checkpoint, few_photos, tmp_path):
    res = _run("bash", str(SCRIPTS / "run_balanced_adaptive.sh"), "scratch", str(few_photos), *TINY,
               "--output-dir", str(tmp_path / "scratch"))
    run = Path(res.stdout.split("run folder: ")[1].split()[0])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["use_balanced"] and cfg["learning_rate"] == 1e-4 and cfg["gamma_strategy"] == "hpcm"
    assert cfg["checkpoint"] is None and cfg["command"] == "train"  # compress train: the run without a source
    res = _run("bash", str(SCRIPTS / "run_finetune.sh"), "standard", str(tiny_base_checkpoint), str(few_photos), *TINY,
               "--output-dir", str(tmp_path / "std"))
    assert json.loads((Path(res.stdout.split("run folder: ")[1].split()[0]) / "config.json").read_text())["freeze_entropy"]
    bad = _run("bash", str(SCRIPTS / "run_finetune.sh"), "nope", "a", "b", ok=False)
    assert bad.returncode == 2 and "unknown workflow 'nope'" in bad.stderr
    usage = _run("bash", str(SCRIPTS / "run_finetune_standard.sh"), ok=False)
    assert usage.returncode == 2 and "CHECKPOINT DATA" in usage.stdout


def test_analyze_model_layers(tiny_base_checkpoint, tmp_path):
    out = tmp_path / "layers.json"
    res = _run(sys.executable, str(SCRIPTS / "analyze_model_layers.py"), "--checkpoint", str(tiny_base_checkpoint),
               "--freeze-entropy", "--context-lr-ratio", "0.1", "--learning-rate", "1e-4", "--json", str(out))
    rows = {r["module"]: r for r in json.loads(out.read_text())}
    assert set(rows) >= {"g_a", "g_s", "h_a", "h_s", "context", "entropy_bottleneck"}
    assert rows["g_a"]["lr_max"] == pytest.approx(1e-4) and rows["context"]["lr_max"] == pytest.approx(1e-5)
    assert rows["h_a"]["lr_max"] == pytest.approx(5e-5) and rows["entropy_bottleneck"]["frozen"] == "yes"
    import torch

    from finetune_kit.tasks.compression.models.zoo import build_model

    assert sum(r["params"] for r in rows.values()) == sum(p.numel() for p in build_model("hpcm-tiny").parameters())
    assert "total" in res.stdout and "trainable" in res.stdout
    del torch


def test_visualize_gamma_schedules(tmp_path):
    out = tmp_path / "g.png"
    _run(sys.executable, str(SCRIPTS / "visualize_gamma_schedules.py"), "--epochs", "50", "--gamma", "0.003",
         "--gamma_final", "0.001", "--out", str(out))
    assert out.stat().st_size > 10_000
