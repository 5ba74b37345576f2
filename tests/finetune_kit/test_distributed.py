"""finetune_kit.distributed without a process group (plain run) and on 2 gloo processes (spawned)."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from finetune_kit import distributed as D


def test_plain_run_is_rank_zero_of_one(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert D.dist_info() == D.DistInfo() and D.is_main() and not D.is_distributed()
    assert D.per_rank_batch(7) == 7
    x = np.arange(6).reshape(3, 2)
    assert D.gather_shards(x, 3) is x and list(D.shard_indices(3)) == [0, 1, 2]
    model = torch.nn.Linear(2, 2)
    assert D.wrap_ddp(model) is model and D.DDPTracker(model).model() is model


def test_bad_torchrun_env_and_uneven_batch(monkeypatch):
    monkeypatch.setenv("RANK", "x")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK"):
        D.dist_info()
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="--batch-size 5 is the global batch"):
        D.per_rank_batch(5)
    assert D.per_rank_batch(6) == 3 and list(D.shard_indices(5)) == [1, 3]


def test_epoch_sampler_reproduces_the_single_process_loader_order(monkeypatch):
    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    ds = list(range(13))
    one = [int(i) for b in DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(5))
           for i in b]
    assert list(D.epoch_sampler(ds, 5)) == one
    monkeypatch.setenv("WORLD_SIZE", "2")
    shards = []
    for r in (0, 1):
        monkeypatch.setenv("RANK", str(r))
        shards.append(list(D.epoch_sampler(ds, 5)))
    assert len(shards[0]) == len(shards[1]) == 7  # padded to a multiple of 2
    # batch k of 2 per rank = batch k of 4 in one process
    for k in range(3):
        assert sorted(shards[0][2 * k:2 * k + 2] + shards[1][2 * k:2 * k + 2]) == sorted(one[4 * k:4 * k + 4])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    D.init_distributed("cpu")
    from finetune_kit.tasks.compression.objectives.balanced import BalancedRD

    bal = BalancedRD(["a", "b"])
    torch.manual_seed(rank)  # different losses on each rank
    for _ in range(3):
        bal.combine(torch.rand(2) + 1)
        bal.update(torch.rand(2) + 1)
    got = D.gather_shards(np.array([[rank * 10 + i] for i in D.shard_indices(5)]), 5)
    res = {"w": bal.w.detach().clone(), "gather": torch.from_numpy(got), "mean": D.all_reduce_mean(torch.tensor([rank + 1.0])),
           "obj": D.broadcast_object({"r": rank}), "sums": D.all_reduce_sums({"x": rank + 1.0})}
    torch.save(res, f"{out}.{rank}")
    D.destroy_distributed()


def test_two_gloo_processes_collectives_and_balanced_w(tmp_path):
    """Balanced R-D: losses before/after all-reduced, so both ranks step ``w`` identically."""
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(tmp_path / "res")), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"res.{r}") for r in (0, 1))
    assert torch.equal(r0["w"], r1["w"]) and r0["w"].abs().sum() > 0
    assert r0["gather"].flatten().tolist() == [0, 11, 2, 13, 4] == r1["gather"].flatten().tolist()
    assert r0["mean"].item() == r1["mean"].item() == 1.5
    assert r0["obj"] == r1["obj"] == {"r": 0} and r0["sums"] == {"x": 3.0}
