"""Checkpoint saves killed (SIGKILL) at each phase and at random points, a failed write (ENOSPC),
and a folder left dangling by the old save order: ``last.pt`` always loads afterwards, nothing
is lost and the folder holds no more files than the retention allows."""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from finetune_kit.runs.checkpoint import CheckpointManager, load_checkpoint, load_resume_checkpoint
from finetune_kit.runs.faults import FAULT_ENV, PHASES

WORKER = Path(__file__).with_name("ckpt_worker.py")
#: keep_last=2 + keep_best=1 epoch files, plus last.pt, best.pt and checkpoints.json
MAX_FILES = 3 + 3


def _worker(folder: Path, start: int, end: int, fault: str | None = None, pause: float = 0.0):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.Popen([sys.executable, str(WORKER), str(folder), str(start), str(end), str(pause)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _check_folder(folder: Path) -> int:
    """The invariants after a kill, once a new manager (a resumed run) opened the folder."""
    manager = CheckpointManager(folder, keep_last=2, keep_best=1, metric="val_loss", mode="min")
    ck, path, note = load_resume_checkpoint(folder)
    assert note is None, note  # the new order never leaves last.pt dangling
    tracked = json.loads((folder / "checkpoints.json").read_text())
    assert all((folder / e["file"]).is_file() for e in tracked["entries"])
    assert not list(folder.glob(".*.tmp")), "stale temp files left"
    files = [p for p in folder.iterdir()]
    assert len(files) <= MAX_FILES, sorted(p.name for p in files)
    assert ck["epoch"] == int(manager.last().stem.split("_")[1])  # last.pt is the newest tracked epoch
    return int(ck["epoch"])


# two phases in the default run, all four in CI's slow run (each kill costs a python + torch start-up)
@pytest.mark.parametrize("phase", [pytest.param(p, marks=pytest.mark.slow) if p in ("before_write", "after_write")
                                   else p for p in PHASES])
def test_kill_at_each_phase_of_a_save_leaves_a_loadable_last(tmp_path, phase):
    folder = tmp_path / "checkpoints"
    p = _worker(folder, 1, 4, fault=f"{phase}@3")  # killed in the save of epoch 3
    _, err = p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL, err.decode()[-2000:]
    if phase == "mid_write":
        assert list(folder.glob(".epoch_0003.pt.*.tmp")), "the kill should leave a partial temp file"
    epoch = _check_folder(folder)
    # a save is committed by its repoint: killed before it, the run resumes from epoch 2 (the
    # orphaned epoch_0003.pt is deleted and written again); killed after it, from epoch 3
    assert epoch == (3 if phase == "after_repoint" else 2)
    # resume: the run goes on from the loaded epoch to the end, and the folder ends as an uninterrupted run's
    manager = CheckpointManager(folder, keep_last=2, keep_best=1, metric="val_loss", mode="min")
    for e in range(epoch + 1, 6):  # the resumed run, in-process: the same saves as ckpt_worker.py
        manager.save({"epoch": e, "w": torch.full((4,), float(e))}, e, {"val_loss": abs(e - 3) + 0.5})
    assert _check_folder(folder) == 5
    kept = sorted(e["file"] for e in json.loads((folder / "checkpoints.json").read_text())["entries"])
    assert kept == ["epoch_0003.pt", "epoch_0004.pt", "epoch_0005.pt"]  # best (3) + last two


@pytest.mark.slow
def test_random_kills_never_lose_a_checkpoint(tmp_path):
    """Six SIGKILLs at random moments of a run that saves continuously; after each, the folder is
    checked and the run resumed; at the end epochs 1..12 were all reached and nothing leaked."""
    folder, rng, epoch, kills = tmp_path / "checkpoints", random.Random(12), 0, 0
    while epoch < 12:
        p = _worker(folder, epoch + 1, 12, pause=0.05)
        if kills < 6:
            time.sleep(rng.uniform(1.5, 3.0))  # python + torch start-up takes ~1.5 s here
            p.send_signal(signal.SIGKILL)
            kills += p.wait(timeout=60) == -signal.SIGKILL
        else:
            assert p.wait(timeout=120) == 0
        if (folder / "checkpoints.json").exists():
            epoch = _check_folder(folder)
    assert kills == 6 and epoch == 12


def test_enospc_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    manager = CheckpointManager(folder, keep_last=1, keep_best=0)
    manager.save({"w": torch.ones(3)}, 1)
    before = (folder / "checkpoints.json").read_text()
    real_save = torch.save

    def full_disk(obj, fh, *a, **k):
        fh.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="no space left on device .*free space there"):
        manager.save({"w": torch.zeros(3)}, 2)
    monkeypatch.setattr(torch, "save", real_save)
    assert (folder / "checkpoints.json").read_text() == before
    assert torch.equal(load_checkpoint(folder / "last.pt")["w"], torch.ones(3))
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoints.json", "epoch_0001.pt", "last.pt"]


def test_dangling_last_from_the_old_order_falls_back_to_the_newest_epoch_file(tmp_path):
    """The state issue 12 found: last.pt -> a deleted file, checkpoints.json listing it, the new
    epoch file on disk untracked, plus a stale temp file."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"epoch": 3, "metrics": {"val_loss": 0.5}}, folder / "epoch_0003.pt")
    os.symlink("epoch_0002.pt", folder / "last.pt")
    (folder / "checkpoints.json").write_text(json.dumps({"entries": [{"file": "epoch_0002.pt", "epoch": 2}]}))
    (folder / ".epoch_0004.pt.abc123.tmp").write_bytes(b"partial")
    ck, path, note = load_resume_checkpoint(folder)
    assert ck["epoch"] == 3 and path.name == "epoch_0003.pt" and "dangling" in note and "epoch_0003.pt" in note
    manager = CheckpointManager(folder, keep_last=1, keep_best=0)  # a resumed run opens the folder
    assert manager.last().name == "epoch_0003.pt" and os.readlink(folder / "last.pt") == "epoch_0003.pt"
    assert not list(folder.glob(".*.tmp"))
    assert load_resume_checkpoint(folder)[2] is None
