"""CheckpointManager retention (last N + best M), tracking file and resume (finetune_kit.runs.checkpoint)."""
from __future__ import annotations

import json

import torch

from finetune_kit.runs.checkpoint import CheckpointManager, load_checkpoint


def test_retention_bounded_and_resume(tmp_path):
    d = tmp_path / "ckpt"
    mgr = CheckpointManager(d, keep_last=2, keep_best=2, metric="val_rd", mode="min")
    costs = [5.0, 3.0, 4.0, 1.0, 6.0, 7.0, 2.0, 8.0]
    for epoch, c in enumerate(costs):
        mgr.save({"epoch": epoch, "w": torch.tensor([float(epoch)])}, epoch, {"val_rd": c})
        files = sorted(p.name for p in d.glob("epoch_*.pt"))
        assert len(files) <= 4  # N + M
    # last two: 6, 7; best two: epoch 3 (1.0), epoch 6 (2.0)
    assert sorted(p.name for p in d.glob("epoch_*.pt")) == ["epoch_0003.pt", "epoch_0006.pt", "epoch_0007.pt"]
    track = json.loads((d / "checkpoints.json").read_text())
    assert track["best"] == "epoch_0003.pt" and track["last"] == "epoch_0007.pt"
    assert load_checkpoint(d / "last.pt")["epoch"] == 7 and load_checkpoint(d / "best.pt")["epoch"] == 3
    assert not list(d.glob("*.tmp"))  # atomic writes leave no temporaries
    # a new manager resumes from the tracking file and keeps pruning by the same rules
    again = CheckpointManager(d, keep_last=2, keep_best=2, metric="val_rd", mode="min")
    assert again.last().name == "epoch_0007.pt" and again.best().name == "epoch_0003.pt"
    assert again.is_best({"val_rd": 0.5}) and not again.is_best({"val_rd": 1.5})
    again.save({"epoch": 8}, 8, {"val_rd": 0.5})
    assert sorted(p.name for p in d.glob("epoch_*.pt")) == ["epoch_0003.pt", "epoch_0007.pt", "epoch_0008.pt"]
    assert load_checkpoint(d / "best.pt")["epoch"] == 8


def test_tracking_ignores_deleted_files(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=3, keep_best=0)
    for e in range(3):
        mgr.save({"epoch": e}, e)
    (tmp_path / "epoch_0002.pt").unlink()
    again = CheckpointManager(tmp_path, keep_last=3, keep_best=0)
    assert again.last().name == "epoch_0001.pt"


def test_truncate_drops_the_abandoned_trajectory(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=4, keep_best=1, metric="val_rd", mode="min")
    for e, cost in enumerate([3.0, 2.0, 1.0, 0.5]):  # the later epochs are the best: they would win best.pt
        mgr.save({"epoch": e}, e, {"val_rd": cost})
    assert mgr.best().name == "epoch_0003.pt"
    dropped = mgr.truncate(1)  # resume after epoch 1
    assert sorted(p.name for p in dropped) == ["epoch_0002.pt", "epoch_0003.pt"]
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pt")) == ["epoch_0000.pt", "epoch_0001.pt"]
    assert mgr.last().name == "epoch_0001.pt" and mgr.best().name == "epoch_0001.pt"
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1 and load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    track = json.loads((tmp_path / "checkpoints.json").read_text())
    assert [e["epoch"] for e in track["entries"]] == [0, 1]
    again = CheckpointManager(tmp_path, keep_last=4, keep_best=1, metric="val_rd", mode="min")  # a resumed run
    again.save({"epoch": 2}, 2, {"val_rd": 2.5})
    assert again.best().name == "epoch_0001.pt" and again.last().name == "epoch_0002.pt"
    assert mgr.truncate(5) == []  # nothing later: no change
    assert CheckpointManager(tmp_path, keep_last=4, keep_best=1, metric="val_rd", mode="min").truncate(-1)
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()
