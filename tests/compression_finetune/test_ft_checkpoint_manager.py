"""CheckpointManager retention (last N + best M), tracking file and resume (finetune_kit.checkpoint)."""
from __future__ import annotations

import json

import torch

from finetune_kit.checkpoint import CheckpointManager, load_checkpoint


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
