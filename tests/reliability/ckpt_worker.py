"""Subprocess of the fault-injection tests: save checkpoints of epochs START..END with a manager.

Usage: python ckpt_worker.py FOLDER START END [SLEEP_S]. ``FINETUNE_KIT_FAULT`` (see
finetune_kit.runs.faults) kills it at a phase of a save; the states are small but real
(a tiny model's state dict, an Adam state, the RNG state), ~0.5 MB each.
"""
import sys
import time

import torch

from finetune_kit.runs.checkpoint import CheckpointManager
from finetune_kit.seeding import rng_state

folder, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.Linear(512, 64))
opt = torch.optim.Adam(model.parameters())
manager = CheckpointManager(folder, keep_last=2, keep_best=1, metric="val_loss", mode="min")
for epoch in range(start, end + 1):
    model(torch.randn(4, 64)).sum().backward()
    opt.step()
    loss = float(abs(epoch - 3) + 0.5)  # epoch 3 is the best
    manager.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng_state(), "epoch": epoch},
                 epoch, {"val_loss": loss})
    time.sleep(pause)
print("done")
