"""Atomic checkpoints, state-dict extraction, run folders, AMP resolution, CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from finetune_kit.amp import resolve_amp
from finetune_kit.runs.checkpoint import CheckpointManager, atomic_save, extract_state_dict, load_checkpoint
from finetune_kit.early_stopping import EarlyStopping
from finetune_kit.runs.run_dir import RunDir


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "ckpt.pt"
    atomic_save({"a": torch.ones(2)}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"a": Unpicklable()}, target)
    assert torch.equal(load_checkpoint(target)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt is not a readable PyTorch file"):
        load_checkpoint(bad)


def test_extract_state_dict_unwraps_and_strips_prefixes():
    sd = {"module.fc.weight": torch.zeros(1), "module.fc.bias": torch.zeros(1)}
    assert set(extract_state_dict({"state_dict": sd, "epoch": 3})) == {"fc.weight", "fc.bias"}
    assert set(extract_state_dict({"model": {"_orig_mod.x": torch.zeros(1)}})) == {"x"}
    with pytest.raises(ValueError, match="no tensors"):
        extract_state_dict({"epoch": 3})


def test_checkpoint_manager_retention_and_resume(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2, keep_best=1, metric="auroc", mode="max")
    scores = [0.5, 0.9, 0.6, 0.7, 0.65]
    for epoch, s in enumerate(scores):
        mgr.save({"epoch": epoch}, epoch, {"auroc": s})
    files = sorted(p.name for p in tmp_path.glob("epoch_*.pt"))
    assert files == ["epoch_0001.pt", "epoch_0003.pt", "epoch_0004.pt"]  # best + last two
    assert mgr.best().name == "epoch_0001.pt" and mgr.last().name == "epoch_0004.pt"
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 4
    resumed = CheckpointManager(tmp_path, keep_last=2, keep_best=1, metric="auroc", mode="max")
    assert resumed.best().name == "epoch_0001.pt" and resumed.is_best({"auroc": 0.95})
    resumed.save({"epoch": 5}, 5, {"auroc": 0.95})
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pt")) == ["epoch_0004.pt", "epoch_0005.pt"]
    assert json.loads((tmp_path / "checkpoints.json").read_text())["best"] == "epoch_0005.pt"


def test_early_stopping_patience_and_state():
    es = EarlyStopping(patience=2, min_delta=0.01, mode="min")
    flags = [es.step(v, i) for i, v in enumerate([1.0, 0.995, 0.9, 0.899, 0.95])]
    assert flags == [True, False, True, False, False] and es.should_stop and es.best_epoch == 2
    es2 = EarlyStopping(patience=2, mode="min")
    es2.load_state_dict(es.state_dict())
    assert es2.should_stop and es2.best == 0.9


def test_run_dir_layout_and_resume_truncation(tmp_path):
    run = RunDir(tmp_path / "run")
    run.start({"lr": 1e-3, "path": tmp_path})
    for epoch in range(4):
        run.log_epoch({"epoch": epoch, "val_auroc": torch.tensor(0.5 + epoch / 10), "nan": float("nan")})
    run.truncate_history(2)
    assert [r["epoch"] for r in run.history()] == [0, 1]
    assert run.history()[1]["val_auroc"] == pytest.approx(0.6) and run.history()[0]["nan"] is None
    assert run.read_json("status.json")["status"] == "running"
    assert "torch" in run.read_json("environment.json")
    with pytest.raises(FileNotFoundError, match="metrics.json not found"):
        run.read_json("metrics.json")


def test_amp_falls_back_to_fp32_on_cpu_without_bf16(monkeypatch):
    import finetune_kit.amp as amp

    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: False)
    settings = resolve_amp(True, "cpu")
    assert not settings.enabled and "fp32" in settings.notice
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: True)
    assert resolve_amp(True, "cpu").dtype == torch.bfloat16
    assert not resolve_amp(False, "cpu").enabled
    with pytest.raises(ValueError, match="fp16"):
        resolve_amp(True, "cpu", dtype="fp16")


def test_cli_help_and_strategies_list():
    exe = [sys.executable, "-m", "finetune_kit.tasks.cli"]
    out = subprocess.run(exe + ["--help"], capture_output=True, text=True, check=True).stdout
    assert "strategies" in out and "compress" in out
    out = subprocess.run(exe + ["strategies"], capture_output=True, text=True, check=True).stdout
    for name in ("linear", "gradual", "full", "progressive"):
        assert name in out
