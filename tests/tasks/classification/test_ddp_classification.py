"""Classification under DDP: 2 gloo processes x batch B/2 equal 1 process x batch B.

Augmentation off and BatchNorm statistics frozen (per-rank batch statistics differ from the
global batch's unless --sync-bn); gradual unfreezing on plateau must give the same events and
per-group learning rates, and the weights must agree within 1e-5 after three epochs.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.tasks.classification.conftest import small_config
from tests.torchrun_helpers import fundus_folder, rank_results, torchrun

SPEC = dict(ft_strategy="gradual", gradual_patience=1, num_epochs=3, batch_size=4, bn_stats="frozen", augment="none",
            drop_rate=0.0, img_size=32, feature_cache=False)


def _history(run: Path) -> list[dict]:
    drop = {"epoch_time_s", "train_images_per_s"}
    return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process(tmp_path):
    from finetune_kit.tasks.classification.train import run_training

    data = fundus_folder(tmp_path / "images")
    torch.set_num_threads(1)
    one = run_training(small_config(data, tmp_path / "one", run_dir=str(tmp_path / "one" / "r"), **SPEC))
    proc = torchrun("classify", {"data": str(data), "output_dir": str(tmp_path / "two"),
                                 "run_dir": str(tmp_path / "two" / "r"), **SPEC}, tmp_path / "out.json", 2)
    assert proc.returncode == 0, proc.stdout[-3000:]
    r0, r1 = rank_results(tmp_path / "out.json", 2)
    assert r0 == r1  # every rank returns rank 0's report
    a = torch.load(tmp_path / "one" / "r" / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "two" / "r" / "checkpoints" / "last.pt", weights_only=False)
    diff = max((a["model"][k].double() - b["model"][k].double()).abs().max().item() for k in a["model"])
    assert diff < 1e-5
    # per-group learning rates of the optimizer (frozen groups at their scaled LR, same schedule)
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == pytest.approx(
        [g["lr"] for g in b["optimizer"]["param_groups"]], rel=1e-12)
    h1, h2 = _history(tmp_path / "one" / "r"), _history(tmp_path / "two" / "r")
    assert [h["unfrozen"] for h in h1] == [h["unfrozen"] for h in h2] and any(h["unfrozen"] for h in h1)
    for x, y in zip(h1, h2):
        assert x.keys() == y.keys()
        for k in set(x) - {"unfrozen"}:
            assert x[k] == pytest.approx(y[k], abs=1e-6), k
    assert one["unfreeze_events"] == r0["unfreeze_events"] and one["best_epoch"] == r0["best_epoch"]
    assert one["temperature"] == pytest.approx(r0["temperature"], rel=1e-4)
    assert one["test"]["auroc"] == pytest.approx(r0["test"]["auroc"])
    # rank 0 alone wrote the run folder
    assert not list((tmp_path / "two").glob("*-2026*")) and (tmp_path / "two" / "r" / "metrics.json").is_file()
    # the OOD detector is fitted on the features every rank gathered: the one-process detector
    assert (tmp_path / "two" / "r" / "ood.npz").is_file()
    assert r0["ood"]["threshold"] == pytest.approx(one["ood"]["threshold"], rel=1e-3)
    assert r0["ood"]["test_fraction_flagged"] == one["ood"]["test_fraction_flagged"]


@pytest.mark.slow
def test_two_process_linear_probe_has_the_logistic_reference_and_ood(tmp_path):
    data = fundus_folder(tmp_path / "images")
    spec = dict(SPEC, ft_strategy="linear")
    spec.pop("gradual_patience")
    proc = torchrun("classify", {"data": str(data), "output_dir": str(tmp_path / "two"),
                                 "run_dir": str(tmp_path / "two" / "r"), **spec}, tmp_path / "out.json", 2)
    assert proc.returncode == 0, proc.stdout[-3000:]
    r0, _ = rank_results(tmp_path / "out.json", 2)
    assert 0.0 <= r0["reference_logreg"]["test_auroc"] <= 1.0 and "ood" in r0
    assert (tmp_path / "two" / "r" / "ood.npz").is_file()


@pytest.mark.slow
def test_killed_two_process_run_resumes_to_the_uninterrupted_result(tmp_path):
    """Rank 1 dies after epoch 1: the job ends (non-zero), rank 0's last.pt of epoch 1 is intact, and a
    2-process resume reproduces the uninterrupted 2-process run."""
    data = fundus_folder(tmp_path / "images")
    spec = {"data": str(data), "output_dir": str(tmp_path), **SPEC}
    full = torchrun("classify", {**spec, "run_dir": str(tmp_path / "full")}, tmp_path / "full.json", 2)
    assert full.returncode == 0, full.stdout[-3000:]
    killed = torchrun("classify", {**spec, "run_dir": str(tmp_path / "killed")}, tmp_path / "killed.json", 2,
                      "--fail-after-epoch", "1")
    assert killed.returncode != 0 and "exitcode  : 3" in killed.stdout
    last = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=False)
    assert last["epoch"] >= 1
    resumed = torchrun("classify", {"run_dir": str(tmp_path / "killed")}, tmp_path / "resumed.json", 2, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert _history(tmp_path / "full") == _history(tmp_path / "killed")
    f, r = rank_results(tmp_path / "full.json", 2)[0], rank_results(tmp_path / "resumed.json", 2)[0]
    assert f["test"] == r["test"] and f["best_epoch"] == r["best_epoch"]
