"""Compression under DDP: 2 gloo processes x batch B/2 equal 1 process x batch B.

Both sides run under torchrun (world size 1 and 2), so both use the per-position crops and the
per-sample quantization noise; the weights must agree within 1e-5 and the validation metrics
equal. The fine-tune case also covers progressive unfreezing (DDP re-wrapped), the balanced
weights ``w`` (identical on both ranks and equal to one process's), the adaptive hierarchical
split ratios and per-scale early stopping.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.torchrun_helpers import rank_results, torchrun

pytestmark = pytest.mark.slow  # torchrun start-up dominates: about 1 min per launch on 2 cores

TRAIN = dict(model="hpcm-tiny", epochs=2, steps_per_epoch=2, batch_size=4, patch_size=64, val_patch_size=64,
             lr=1e-3, progress=False)
FINETUNE = dict(lmbda=0.013, epochs=3, steps_per_epoch=2, batch_size=4, patch_size=64, val_patch_size=64,
                learning_rate=1e-3, use_hierarchical=True, decomposition="adaptive", use_balanced=True,
                scale_early_stopping=True, early_stopping_patience=1, progressive_unfreeze=True,
                unfreeze_schedule="1,2", progress=False)


def _weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=False)


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a
               if a[k].is_floating_point() and a[k].numel())


def _history(run: Path) -> list[dict]:
    drop = {"seconds", "train_seconds"}
    return [{k: v for k, v in json.loads(x).items() if k not in drop}
            for x in (run / "metrics.jsonl").read_text().splitlines()]


def _same_history(h1: list[dict], h2: list[dict]) -> None:
    assert len(h1) == len(h2)
    for x, y in zip(h1, h2):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], float):
                assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-6), k
            else:
                assert x[k] == y[k], k


def _run(task: str, spec: dict, tmp: Path, name: str, nproc: int, *extra: str):
    proc = torchrun(task, {**spec, "output_dir": str(tmp / name), "name": name}, tmp / f"{name}.json", nproc, *extra)
    runs = sorted((tmp / name).glob(f"{name}-*"))
    return proc, runs


@pytest.fixture(scope="module")
def images(photos, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ddp_photos")
    for p in sorted(photos.glob("*.png"))[:6]:
        (d / p.name).symlink_to(p)
    return d


@pytest.fixture(scope="module")
def trained(images, tmp_path_factory) -> dict:
    """``compress train`` on 1 and on 2 processes (the 1-process run is the fine-tune's source)."""
    tmp = tmp_path_factory.mktemp("ddp_train")
    spec = {"data": str(images), **TRAIN}
    out = {}
    for n in (1, 2):
        proc, runs = _run("compress", spec, tmp, f"p{n}", n)
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert len(runs) == 1  # rank 0 alone made the run folder
        out[n] = runs[0]
    out["tmp"], out["spec"] = tmp, spec
    return out


def test_compress_train_two_processes_match_one(trained):
    one, two = trained[1], trained[2]
    assert _max_diff(_weights(one)["state_dict"], _weights(two)["state_dict"]) < 1e-5
    _same_history(_history(one), _history(two))
    r0, r1 = rank_results(trained["tmp"] / "p2.json", 2)
    assert r0["val_rd"] == r1["val_rd"]  # every rank reports the same (all-reduced) validation


def test_compress_finetune_two_processes_match_one(trained, images, tmp_path):
    spec = {"data": str(images), "checkpoint": str(trained[1] / "checkpoints" / "last.pt"), **FINETUNE}
    runs = {}
    for n in (1, 2):
        proc, found = _run("finetune", spec, tmp_path, f"f{n}", n)
        assert proc.returncode == 0, proc.stdout[-3000:]
        runs[n] = found[0]
    a, b = _weights(runs[1]), _weights(runs[2])
    assert _max_diff(a["state_dict"], b["state_dict"]) < 1e-5
    # balanced weights: one process's, and (rank results) the same on both ranks
    assert torch.allclose(a["finetune"]["balanced"]["w"], b["finetune"]["balanced"]["w"], atol=1e-6)
    r0, r1 = rank_results(tmp_path / "f2.json", 2)
    timing = {"wall_seconds", "seconds"}
    assert {k: v for k, v in r0.items() if k not in timing} == {k: v for k, v in r1.items() if k not in timing}
    h1, h2 = _history(runs[1]), _history(runs[2])
    _same_history(h1, h2)
    assert [h["unfrozen"] for h in h1] == [h["unfrozen"] for h in h2] and any(h["unfrozen"] for h in h1)
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == pytest.approx(
        [g["lr"] for g in b["optimizer"]["param_groups"]], rel=1e-12)
    assert (runs[2] / "scale_best").is_dir() and (runs[2] / "steps.jsonl").read_text().count("\n") == 6


def test_killed_two_process_compress_train_resumes_to_the_uninterrupted_result(trained):
    """Rank 1 dies in epoch 2: the job fails, rank 0's epoch-1 checkpoint is intact, and
    ``--resume`` on 2 processes ends where the uninterrupted 2-process run ended."""
    tmp, spec = trained["tmp"], trained["spec"]
    proc, runs = _run("compress", spec, tmp, "killed", 2, "--fail-after-epoch", "0")
    assert proc.returncode != 0 and "exitcode  : 3" in proc.stdout
    run = runs[0]
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["epoch"] >= 1
    resumed = torchrun("compress", {**spec, "output_dir": str(tmp / "killed"), "name": "killed", "run_dir": str(run)},
                       tmp / "resumed.json", 2, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert _max_diff(_weights(trained[2])["state_dict"], _weights(run)["state_dict"]) == 0.0
    _same_history(_history(trained[2]), _history(run))
