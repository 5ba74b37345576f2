"""Results loader: columns, flattening, best-over-epochs, statuses, wandb folders, errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from finetune_kit.results import discover_runs, flatten, load_runs, metric_mode
from analysis_helpers import make_run


def test_flatten_nested_lists_and_nan():
    flat = flatten({"a": {"b": 1, "c": [2]}, "cm": [[1, 2], [3, 4]], "tags": ["x", "y"], "bad": float("nan"),
                    "long": list(range(40))})
    assert flat["a.b"] == 1 and flat["a.c"] == 2
    assert flat["cm.1.0"] == 3
    assert flat["tags"] == '["x","y"]'
    assert flat["bad"] is None
    assert isinstance(flat["long"], str)


@pytest.mark.parametrize("name,mode", [("val_auroc", "max"), ("test_accuracy", "max"), ("val_loss", "min"),
                                       ("bpp", "min"), ("val_bpp_loss", "min"), ("psnr", "max"),
                                       ("ece_after", "min"), ("lr", None), ("epoch", None)])
def test_metric_mode(name, mode):
    assert metric_mode(name) == mode


def test_dataframe_one_row_per_run_with_config_final_best(grid_runs):
    root, truth = grid_runs
    res = load_runs(root)
    df = res.df
    assert len(df) == len(truth) + 2
    done = res.completed
    assert len(done) == len(truth)
    row = done[done["run"] == "full-lr0.001-s1"].iloc[0]
    assert row["config.ft_strategy"] == "full"
    assert row["config.learning_rate"] == pytest.approx(1e-3)
    assert row["config.model.name"] == "resnet18"  # nested config flattened
    assert row["final.test_auroc"] == pytest.approx(truth[("full", 1e-3, 1)])
    assert row["final.calibration.ece_after"] == pytest.approx(0.021)
    assert row["final.confusion_matrix.1.0"] == 2
    # best over epochs: val_auroc is max at the last epoch, val_loss min at the last epoch
    assert row["best.val_auroc"] == pytest.approx(truth[("full", 1e-3, 1)])
    assert row["best_epoch.val_auroc"] == 2
    assert row["best.val_loss"] == pytest.approx(1.2 / 3 + 0.01)
    assert row["epochs"] == 3
    assert "best.lr" not in df.columns and "last.lr" in df.columns
    assert set(res.param_columns()) == {"config.ft_strategy", "config.learning_rate", "config.seed"}


def test_crashed_and_failed_runs_are_listed_not_dropped(grid_runs):
    root, _ = grid_runs
    res = load_runs(root, stale_after_s=0)
    by_run = {r.run: r for r in res.incomplete}
    assert by_run["zz-failed"].status == "failed"
    assert "out of memory" in by_run["zz-failed"].reason
    assert by_run["zz-crashed"].status == "crashed"
    assert "running" in by_run["zz-crashed"].reason
    # a run whose process is alive (here: this test process) is 'running', not crashed
    import json
    import os

    status_file = root / "zz-crashed" / "status.json"
    status_file.write_text(json.dumps({**json.loads(status_file.read_text()), "pid": os.getpid()}))
    fresh = load_runs(root, stale_after_s=3600)
    assert {r.run: r.status for r in fresh.incomplete}["zz-crashed"] == "running"
    assert set(fresh.df.loc[fresh.df["status"] != "completed", "run"]) == {"zz-crashed", "zz-failed"}


def test_dead_pid_means_crashed(tmp_path):
    path = make_run(tmp_path, "r", {"seed": 0}, [{"epoch": 0, "val_auroc": 0.5}], status="running")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    status = json.loads((path / "status.json").read_text())
    status["pid"] = proc.pid
    (path / "status.json").write_text(json.dumps(status))
    res = load_runs(tmp_path, stale_after_s=3600)
    assert res.incomplete[0].status == "crashed"
    assert str(proc.pid) in res.incomplete[0].reason
    status["pid"] = os.getpid()  # alive: running
    (path / "status.json").write_text(json.dumps(status))
    assert load_runs(tmp_path, stale_after_s=0).incomplete[0].status == "running"


def test_completed_without_metrics_json_and_truncated_jsonl(tmp_path):
    make_run(tmp_path, "nometrics", {"seed": 0}, [{"epoch": 0, "val_auroc": 0.5}], final=None)
    p = make_run(tmp_path, "truncated", {"seed": 1}, [{"epoch": 0, "val_auroc": 0.5}], final={"test_auroc": 0.6})
    with open(p / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 1, "val_au')
    res = load_runs(tmp_path)
    st = dict(zip(res.df["run"], res.df["status"]))
    assert st == {"nometrics": "incomplete", "truncated": "completed"}
    assert "metrics.json missing" in res.incomplete[0].reason
    row = res.df[res.df["run"] == "truncated"].iloc[0]
    assert "unreadable line" in row["reason"] and row["epochs"] == 1


def test_wandb_offline_folder_is_read(tmp_path):
    p = make_run(tmp_path, "r", {"seed": 0}, [{"epoch": 0, "val_auroc": 0.5}], final={"test_auroc": 0.6})
    files = p / "wandb" / "offline-run-20260101_000000-abc" / "files"
    files.mkdir(parents=True)
    (files / "wandb-summary.json").write_text(json.dumps({"val_auroc": 0.55, "_runtime": 3}))
    (files / "config.yaml").write_text("_wandb:\n  value: {}\nlearning_rate:\n  desc: null\n  value: 0.001\n")
    # a wandb-only run (no finetune-kit files)
    only = tmp_path / "other" / "wandb" / "offline-run-20260101_000001-def" / "files"
    only.mkdir(parents=True)
    (only / "wandb-summary.json").write_text(json.dumps({"test_auroc": 0.7}))
    (only / "config.yaml").write_text("learning_rate:\n  value: 0.01\n")
    res = load_runs(tmp_path)
    df = res.df.set_index("run")
    assert df.loc["r", "wandb.summary.val_auroc"] == 0.55
    assert "wandb.summary._runtime" not in df.columns
    assert df.loc["other", "config.learning_rate"] == 0.01
    assert df.loc["other", "final.test_auroc"] == 0.7
    assert df.loc["other", "status"] == "completed"


def test_discover_nested_runs_but_not_inside_runs(tmp_path):
    make_run(tmp_path / "sweep" / "trials" / "trial-0000", "trial-0000-x", {"seed": 0}, final={"a": 1})
    p = make_run(tmp_path, "top", {"seed": 0}, final={"a": 1})
    (p / "checkpoints").mkdir()
    (p / "checkpoints" / "checkpoints.json").write_text(json.dumps(
        {"metric": "val_auroc", "mode": "max", "best": "epoch_0001.pt", "last": "epoch_0002.pt",
         "entries": [{"file": "epoch_0001.pt", "epoch": 1, "metrics": {}}]}))
    runs = discover_runs(tmp_path)
    assert [r.name for r in runs] == ["trial-0000-x", "top"]
    res = load_runs(tmp_path)
    assert res.df.set_index("run").loc["top", "checkpoint.best_epoch"] == 1


def test_resolve_names_and_errors(grid_runs, tmp_path):
    root, _ = grid_runs
    res = load_runs(root)
    assert res.resolve_metric("test_auroc") == "final.test_auroc"
    assert res.resolve_metric("val_auroc") == "best.val_auroc"
    assert res.resolve_metric("ece_after") == "final.calibration.ece_after"
    assert res.resolve_param("strategy") == "config.ft_strategy"
    assert res.resolve_param("lr") == "config.learning_rate"
    assert res.resolve_param("--learning-rate") == "config.learning_rate"
    assert res.resolve_param("image_size") == "config.model.image_size"
    with pytest.raises(KeyError, match="available metric columns: .*final.test_auroc"):
        res.resolve_metric("psnr")
    with pytest.raises(KeyError, match="config columns that vary: config.ft_strategy"):
        res.resolve_param("gamma")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no run folders"):
        load_runs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_runs(tmp_path / "missing")
