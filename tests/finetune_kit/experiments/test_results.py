"""Results loader: columns, flattening, best-over-epochs, statuses, wandb folders, errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pathlib import Path


from finetune_kit.experiments.results import discover_runs, epoch_key, flatten, load_runs, metric_mode
from analysis_helpers import MODES, make_run
from finetune_kit.runs.run_dir import RunDir


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
                                       ("val_ece", "min"), ("lr", None), ("epoch", None),
                                       # compression-finetune's R-D cost and its per-scale parts
                                       ("val_rd", "min"), ("final.val_rd", "min"), ("val_rd_s1", "min"),
                                       ("rd", "min"), ("nll", "min"), ("test_ece_calibrated", "min"),
                                       ("bd_rate", "min"), ("epoch_time_s", "min"), ("val_psnr", "max"),
                                       ("final.test.auroc", "max"), ("val_bpp_s2", "min"), ("val_ms_ssim", "max"),
                                       # hyperparameters logged beside the metrics have no direction
                                       ("learning_rate", None), ("config.learning_rate", None), ("decay_rate", None),
                                       ("drop_path_rate", None), ("gamma_s1", None), ("loss_weight", None),
                                       ("task_weight/distortion", None), ("trainable_params", None)])
def test_metric_mode_is_what_the_tasks_declare(name, mode):
    assert metric_mode(name, MODES) == mode


def test_no_direction_is_guessed_from_a_name():
    from finetune_kit.experiments.analysis import resolve_mode

    assert metric_mode("val_loss") is None and metric_mode("val_auroc", {"val_x": "max"}) is None
    assert metric_mode("final.val_loss", {"val_*": "max", "val_loss": "min"}) == "min"  # exact name over pattern
    with pytest.raises(ValueError, match=r"'final.val_odd' has no declared direction: pass --mode max or --mode min, "
                                         r"or declare it .*TaskProfile\(metric_modes=\{'val_odd': 'max'\}\)"):
        resolve_mode("final.val_odd", None, MODES)
    assert resolve_mode("final.val_odd", "min", MODES) == "min"


@pytest.mark.parametrize("name,key", [("val_auroc", "val_auroc"), ("best.val_auroc", "val_auroc"),
                                      ("test_auroc", "val_auroc"), ("final.test.auroc", "val_auroc"),
                                      ("final.val_rd", "val_rd"), ("wandb.summary.test_psnr", "val_psnr"),
                                      ("final.epochs", "epochs")])
def test_epoch_key(name, key):
    assert epoch_key(name) == key


def test_dataframe_one_row_per_run_with_config_final_best(grid_runs):
    root, truth = grid_runs
    res = load_runs(root, metric_modes=MODES)
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
    res = load_runs(root, stale_after_s=0, metric_modes=MODES)
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
    fresh = load_runs(root, stale_after_s=3600, metric_modes=MODES)
    assert {r.run: r.status for r in fresh.incomplete}["zz-crashed"] == "running"
    assert set(fresh.df.loc[fresh.df["status"] != "completed", "run"]) == {"zz-crashed", "zz-failed"}


def test_dead_pid_means_crashed(tmp_path):
    path = make_run(tmp_path, "r", {"seed": 0}, [{"epoch": 0, "val_auroc": 0.5}], status="running")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    status = json.loads((path / "status.json").read_text())
    status["pid"] = proc.pid
    (path / "status.json").write_text(json.dumps(status))
    res = load_runs(tmp_path, stale_after_s=3600, metric_modes=MODES)
    assert res.incomplete[0].status == "crashed"
    assert str(proc.pid) in res.incomplete[0].reason
    status["pid"] = os.getpid()  # alive: running
    (path / "status.json").write_text(json.dumps(status))
    assert load_runs(tmp_path, stale_after_s=0, metric_modes=MODES).incomplete[0].status == "running"


def test_completed_without_metrics_json_and_truncated_jsonl(tmp_path):
    make_run(tmp_path, "nometrics", {"seed": 0}, [{"epoch": 0, "val_auroc": 0.5}], final=None)
    p = make_run(tmp_path, "truncated", {"seed": 1}, [{"epoch": 0, "val_auroc": 0.5}], final={"test_auroc": 0.6})
    with open(p / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 1, "val_au')
    res = load_runs(tmp_path, metric_modes=MODES)
    st = dict(zip(res.df["run"], res.df["status"]))
    assert st == {"nometrics": "incomplete", "truncated": "completed"}
    assert "metrics.json missing" in res.incomplete[0].reason
    row = res.df[res.df["run"] == "truncated"].iloc[0]
    assert "unreadable line" in row["reason"] and row["epochs"] == 1


def _legacy_wandb_run(folder, summary, config_yaml):
    """A wandb offline run folder as older wandb versions wrote it (files/, no record log)."""
    files = folder / "files"
    files.mkdir(parents=True)
    (files / "wandb-summary.json").write_text(json.dumps(summary))
    (files / "config.yaml").write_text(config_yaml)
    return folder


def test_wandb_folders_inside_a_run_are_merged_oldest_first(tmp_path):
    p = make_run(tmp_path, "r", {"seed": 0}, [{"epoch": 0, "val_auroc": 0.5}], final={"test_auroc": 0.6})
    _legacy_wandb_run(p / "wandb" / "offline-run-20260101_000000-abc", {"val_auroc": 0.55, "first": 1, "_runtime": 3},
                      "_wandb:\n  value: {}\nlearning_rate:\n  desc: null\n  value: 0.001\n")
    _legacy_wandb_run(p / "wandb" / "offline-run-20260102_000000-xyz", {"val_auroc": 0.58}, "")  # resumed later
    res = load_runs(tmp_path, metric_modes=MODES)
    assert list(res.df["run"]) == ["r"]  # the wandb runs of a run folder are not runs of their own
    row = res.df.iloc[0]
    assert row["status"] == "completed" and row["final.test_auroc"] == 0.6
    assert row["wandb.summary.val_auroc"] == 0.58 and row["wandb.summary.first"] == 1
    assert "wandb.summary._runtime" not in res.df.columns


def test_wandb_folder_beside_run_folders_hides_nothing(tmp_path):
    make_run(tmp_path, "a", {"seed": 0}, final={"test_auroc": 0.6})
    make_run(tmp_path, "b", {"seed": 1}, final={"test_auroc": 0.7})
    _legacy_wandb_run(tmp_path / "wandb" / "offline-run-20260101_000001-def", {"test_auroc": 0.9},
                      "learning_rate:\n  value: 0.01\n")
    (tmp_path / "wandb" / "debug.log").write_text("")
    res = load_runs(tmp_path, metric_modes=MODES)
    wb = "wandb/offline-run-20260101_000001-def"
    assert list(res.df["run"]) == ["a", "b", wb]
    st = dict(zip(res.df["run"], res.df["status"]))
    assert st == {"a": "completed", "b": "completed", wb: "unknown"}  # no exit record: listed, not ranked
    assert list(res.completed["run"]) == ["a", "b"]
    row = res.df.set_index("run").loc[wb]
    assert row["config.learning_rate"] == 0.01 and row["final.test_auroc"] == 0.9
    assert "wandb run only" in row["reason"] and "no exit record" in row["reason"]


def test_real_wandb_offline_runs_get_status_from_their_exit_record(tmp_path):
    pytest.importorskip("wandb")
    script = ("import wandb\n"
              "for code in (0, 3):\n"
              "    r = wandb.init(mode='offline', dir=%r, project='p', config={'learning_rate': 0.1 * (code + 1)})\n"
              "    r.log({'val_auroc': 0.5}); r.summary['test_auroc'] = 0.7 - code / 100\n"
              "    r.finish(exit_code=code)\n") % str(tmp_path)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, capture_output=True, timeout=120)
    res = load_runs(tmp_path, metric_modes=MODES)
    assert len(res.df) == 2 and all(r.startswith("wandb/offline-run-") for r in res.df["run"])
    df = res.df.sort_values("config.learning_rate")
    assert list(df["status"]) == ["completed", "failed"]
    assert list(df["final.test_auroc"]) == pytest.approx([0.7, 0.67])
    assert "exited with code 3" in df.iloc[1]["reason"]


def test_discover_nested_runs_but_not_inside_runs(tmp_path):
    make_run(tmp_path / "sweep" / "trials" / "trial-0000", "trial-0000-x", {"seed": 0}, final={"a": 1})
    p = make_run(tmp_path, "top", {"seed": 0}, final={"a": 1})
    (p / "checkpoints").mkdir()
    (p / "checkpoints" / "checkpoints.json").write_text(json.dumps(
        {"metric": "val_auroc", "mode": "max", "best": "epoch_0001.pt", "last": "epoch_0002.pt",
         "entries": [{"file": "epoch_0001.pt", "epoch": 1, "metrics": {}}]}))
    runs = discover_runs(tmp_path)
    assert [r.name for r in runs] == ["trial-0000-x", "top"]
    res = load_runs(tmp_path, metric_modes=MODES)
    assert res.df.set_index("run").loc["top", "checkpoint.best_epoch"] == 1


def test_resolve_names_and_errors(grid_runs, tmp_path):
    root, _ = grid_runs
    res = load_runs(root, metric_modes=MODES)
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
        load_runs(tmp_path / "empty", metric_modes=MODES)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_runs(tmp_path / "missing", metric_modes=MODES)


def test_discover_compare_folders_at_any_nesting(tmp_path):
    """A compare folder (its own config.json + one run per strategy) is a container, not a run; so
    is a plain folder of them, at any depth; a run's eval-NAME/ results stay part of the run."""
    from finetune_kit.experiments.run_files import is_container

    def compare(parent: Path, name: str, marked: bool) -> Path:
        folder = parent / name
        RunDir(folder).write_json("config.json", {"kind": "comparison"} if marked else {"base": {}})
        for i, s in enumerate(("linear", "gradual", "full", "progressive")):
            make_run(folder, s, {"ft_strategy": s}, [{"epoch": 1, "val_auroc": 0.5 + i / 10}],
                     final={"test": {"auroc": 0.6 + i / 10}})
        return folder

    a = compare(tmp_path / "study" / "2026" / "a", "compare-resnet18-1", marked=True)
    b = compare(tmp_path / "study", "compare-resnet18-2", marked=False)  # unmarked: its runs make it a container
    RunDir(a / "full" / "eval-external").write_json("metrics.json", {"metrics": {"auroc": 0.5}})
    assert is_container(a) and not is_container(b)
    for root in (tmp_path, tmp_path / "study", a):
        runs = discover_runs(root)
        assert all(r.name in ("linear", "gradual", "full", "progressive") for r in runs), runs
    assert len(discover_runs(tmp_path)) == 8 and len(discover_runs(a)) == 4
    res = load_runs(a, metric_modes=MODES)
    ranked = res.completed.sort_values("final.test.auroc", ascending=False)
    assert list(ranked["config.ft_strategy"]) == ["progressive", "full", "gradual", "linear"]


def test_old_metric_names_are_read_in_todays_columns(tmp_path):
    """A run folder written before a task renamed its metrics (``compress train``'s ``val_loss``, now
    ``val_rd``) lands in the same columns as a new one, so no run drops out of a ranking."""
    from finetune_kit.tasks.compression.profile import OLD_METRIC_NAMES

    make_run(tmp_path, "old", {"lmbda": 0.01}, [{"epoch": 1, "val_loss": 2.0}, {"epoch": 2, "val_loss": 1.5}],
             final={"val_loss": 1.5, "val_bpp_loss": 0.3})
    make_run(tmp_path, "new", {"lmbda": 0.01}, [{"epoch": 1, "val_rd": 1.2}], final={"val_rd": 1.2, "val_bpp": 0.4})
    df = load_runs(tmp_path, metric_modes={"val_rd": "min"}, metric_renames=[(("lmbda",), OLD_METRIC_NAMES)]).df.set_index("run")
    assert df.loc["old", "final.val_rd"] == 1.5 and df.loc["new", "final.val_rd"] == 1.2
    assert df.loc["old", "final.val_bpp"] == 0.3 and df.loc["old", "best.val_rd"] == 1.5
    assert "final.val_loss" not in df.columns
    make_run(tmp_path, "classify", {"ft_strategy": "full"}, [{"epoch": 1, "val_loss": 0.7}], final={"val_loss": 0.7})
    df = load_runs(tmp_path, metric_renames=[(("lmbda",), OLD_METRIC_NAMES)]).df.set_index("run")
    assert df.loc["classify", "final.val_loss"] == 0.7  # another task's val_loss is not renamed
