"""Real training runs killed with SIGKILL during checkpoint saves, then ``--resume RUN`` alone:
the final metrics equal the uninterrupted run's (bit-identical on CPU) and the checkpoint folder
holds no more files than the retention allows."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_kit.runs.faults import FAULT_ENV

VOLATILE = ("seconds", "time", "run_dir", "checkpoint", "wall", "path", "per_s", "memory", "throughput", "config",
            "resumed", "output_dir")


def _cli(args, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-m", "finetune_kit.tasks.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)


def _stable(obj):
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if not any(w in k.lower() for w in VOLATILE)}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def _only_run(folder: Path) -> Path:
    runs = [p for p in folder.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def _kill_chain(args, out: Path, faults: list[str], max_epoch_files: int) -> tuple[Path, int]:
    """Run, killed by each fault in turn (each resumed run killed by the next), then resumed to the end."""
    r = _cli([*args, "--output_dir", out], fault=faults[0])
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    run = _only_run(out)
    for fault in faults[1:] + [None]:
        command = args[:2] if args[0] == "compress" else args[:1]
        r = _cli([*command, "--resume", run], fault=fault)  # the run folder alone
        if fault is None:
            assert r.returncode == 0, r.stderr[-3000:]
        else:
            assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
        ck = run / "checkpoints"
        assert not list(ck.glob(".*.tmp"))
        assert len(list(ck.glob("epoch_*.pt"))) <= max_epoch_files + (1 if fault else 0)  # + the one being written
    assert len(list((run / "checkpoints").glob("epoch_*.pt"))) <= max_epoch_files
    return run, len(faults)


@pytest.mark.slow
def test_compress_train_killed_at_each_phase_resumes_bit_identical(photos_train_dir, tmp_path):
    few_photos = tmp_path / "photos"
    few_photos.mkdir()
    for p in sorted(photos_train_dir.glob("*.png"))[:6]:
        (few_photos / p.name).symlink_to(p)
    args = ["compress", "train", "--preset", "hpcm-tiny", "--data", few_photos, "--name", "t", "--epochs", "3",
            "--steps-per-epoch", "2", "--batch-size", "2", "--patch-size", "64", "--wandb", "disabled",
            "--no-progress", "--quality", "6", "--threads", "1"]
    args[args.index("--epochs") + 1] = "2"
    r = _cli([*args, "--output_dir", tmp_path / "full"])
    assert r.returncode == 0, r.stderr[-3000:]
    full = json.loads((_only_run(tmp_path / "full") / "metrics.json").read_text())
    # epoch 1 saved; the save of epoch 2 killed before its write, then (resumed) after its repoint
    faults = ["before_write@2", "after_repoint@1"]
    run, kills = _kill_chain(args, tmp_path / "kill", faults, max_epoch_files=3)  # keep_last 2 + best 1
    resumed = json.loads((run / "metrics.json").read_text())
    assert _stable(resumed) == _stable(full)  # == on floats: bit-identical
    assert kills == 2


def _images(root: Path, n: int = 12, size: int = 48) -> Path:
    from tests.reliability.generated import class_folders

    return class_folders(root, n, size)


@pytest.mark.slow
def test_classify_killed_at_each_phase_resumes_bit_identical(tmp_path):
    data = _images(tmp_path / "data")
    args = ["classify", "--data", data, "--model_name", "resnet18", "--img_size", "32", "--num_epochs", "2",
            "--batch_size", "4", "--ft_strategy", "full", "--num_threads", "1", "--no-progress"]
    r = _cli([*args, "--output_dir", tmp_path / "full"])
    assert r.returncode == 0, r.stderr[-3000:]
    full = json.loads((_only_run(tmp_path / "full") / "metrics.json").read_text())
    # epoch 1 saved; the save of epoch 2 killed mid-write, after the write, after the repoint
    faults = ["mid_write@2", "after_write@1", "after_repoint@1"]
    run, kills = _kill_chain(args, tmp_path / "kill", faults, max_epoch_files=2)  # last + best
    resumed = json.loads((run / "metrics.json").read_text())
    assert _stable(resumed) == _stable(full)
    assert kills == 3




@pytest.mark.slow
def test_compress_finetune_killed_resumes_from_the_run_folder_alone(photos_train_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted(photos_train_dir.glob("*.png"))[:6]:
        (photos / p.name).symlink_to(p)
    common = ["--data", photos, "--steps-per-epoch", "2", "--batch-size", "2", "--patch-size", "64", "--wandb",
              "disabled", "--no-progress", "--threads", "1"]
    r = _cli(["compress", "train", "--preset", "hpcm-tiny", "--epochs", "1", "--quality", "6", "--name", "src",
              "--output_dir", tmp_path / "src", *common])
    assert r.returncode == 0, r.stderr[-3000:]
    source = _only_run(tmp_path / "src") / "checkpoints" / "last.pt"
    args = ["compress", "finetune", "--checkpoint", source, "--epochs", "2", "--name", "ft", *common]
    r = _cli([*args, "--output_dir", tmp_path / "full"])
    assert r.returncode == 0, r.stderr[-3000:]
    full = json.loads((_only_run(tmp_path / "full") / "metrics.json").read_text())
    run, kills = _kill_chain(args, tmp_path / "kill", ["after_write@2"], max_epoch_files=3)
    assert _stable(json.loads((run / "metrics.json").read_text())) == _stable(full)
    assert kills == 1
