"""Real short runs of the task CLIs (tiny models, a few ACRIMA images / Kodak crops, CPU).

Slow (minutes on 2 shared cores): marked ``slow``. Skipped when the data folders or the task
commands are absent.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis_helpers import MODES, ACRIMA, KODAK
from finetune_kit.experiments.results import load_runs
from finetune_kit.runs.run_dir import recorded_command
from finetune_kit.tasks.classification.profile import CLASSIFICATION
from finetune_kit.tasks.compression.profile import COMPRESSION_TRAIN

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "finetune_kit.tasks.cli"]
TINY = ["--label_preset", "acrima", "--model_name", "mobilenetv2_050", "--img_size", "64", "--batch_size", "8",
        "--wandb", "disabled", "--no-progress", "--num_threads", "2", "--linear_probe_epochs", "2"]
RUNS = [("linear", 1e-2), ("full", 1e-3), ("full", 1e-4)]


def _need_classify():
    if not ACRIMA.is_dir():
        pytest.skip(f"ACRIMA images not found at {ACRIMA}")


def tiny_acrima(folder: Path, per_class: int = 12) -> Path:
    """``per_class`` glaucoma (``_g_``) and normal ACRIMA images, linked into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(os.listdir(ACRIMA))
    pick = [n for n in names if "_g_" in n][:per_class] + [n for n in names if "_g_" not in n][:per_class]
    for n in pick:
        (folder / n).symlink_to(ACRIMA / n)
    return folder


def classify(data: Path, out: Path, tag: str, strategy: str, lr: float, epochs: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "classify", "--data", str(data), *TINY, "--output_dir", str(out),
                           "--experiment_tag", tag, "--ft_strategy", strategy, "--learning_rate", str(lr),
                           "--num_epochs", str(epochs)], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """3 completed tiny classification runs and one killed (SIGKILL) after its first epoch."""
    _need_classify()
    base = tmp_path_factory.mktemp("real")
    data = tiny_acrima(base / "data")
    root = base / "runs"
    for strategy, lr in RUNS:
        r = classify(data, root, f"{strategy}-{lr:g}", strategy, lr)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    proc = subprocess.Popen([*CLI, "classify", "--data", str(data), *TINY, "--output_dir", str(root),
                             "--experiment_tag", "killed", "--ft_strategy", "full", "--num_epochs", "20"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        hist = list(root.glob("killed-*/metrics.jsonl"))
        if hist and hist[0].read_text().strip():
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return root


def test_dataframe_from_real_runs(real_runs):
    res = load_runs(real_runs, stale_after_s=0, metric_modes=MODES)
    done = res.completed
    assert len(done) == 3
    strategy, lr = res.resolve_param("ft_strategy"), res.resolve_param("learning_rate")
    assert (strategy, lr) == ("config.strategy.ft_strategy", "config.optim.learning_rate")  # nested sections
    assert sorted(zip(done[strategy], done[lr])) == sorted(RUNS)
    col = res.resolve_metric("test_auroc")
    assert col == "final.test.auroc"
    assert done[col].between(0, 1).all()
    assert res.resolve_metric("val_auroc") == "final.val.auroc"  # the run folder's metrics.json first
    for _, row in done.iterrows():  # best over epochs agrees with metrics.jsonl
        hist = [json.loads(line) for line in (Path(row["path"]) / "metrics.jsonl").read_text().splitlines()]
        assert all(CLASSIFICATION.metric in h for h in hist)  # the sweep's default objective
        assert row["best.val_auroc"] == pytest.approx(max(h["val_auroc"] for h in hist))
        assert row["epochs"] == len(hist) >= 1
        assert recorded_command(row["path"]) == "classify"  # what rerun reads
    assert set(res.param_columns()) >= {strategy, lr}


def test_killed_run_is_reported_crashed(real_runs):
    res = load_runs(real_runs, stale_after_s=0, metric_modes=MODES)
    crashed = [r for r in res.incomplete if r.run.startswith("killed-")]
    assert len(crashed) == 1 and crashed[0].status == "crashed"
    assert "status running" in crashed[0].reason


def test_ranking_heatmap_and_report_on_real_runs(real_runs, tmp_path):
    from typer.testing import CliRunner

    from finetune_kit.experiments import analysis
    from finetune_kit.tasks.cli import app

    res = load_runs(real_runs, stale_after_s=0, metric_modes=MODES)
    m, s, lr = res.resolve_metric("val_auroc"), res.resolve_param("strategy"), res.resolve_param("lr")
    top = analysis.top_k(res.df, m, "max", k=3)
    assert list(top[m]) == sorted(res.completed[m], reverse=True)
    values, counts = analysis.heatmap_data(res.df, m, lr, s)
    for _, row in res.completed.iterrows():
        assert values.loc[row[s], row[lr]] == pytest.approx(row[m])
    assert int(counts.to_numpy().sum()) == 3
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["analyze", str(real_runs), "--metric", "val_auroc", "--group-by", "ft_strategy",
                                 "--heatmap", "learning_rate", "ft_strategy", "--stale-after", "0", "-o", str(out)])
    assert r.exit_code == 0, r.output
    report = (out / "report.md").read_text()
    assert "crashed" in report and "killed-" in report
    heatmaps = list(out.glob("heatmap_*val*auroc_ft_strategy_x_learning_rate.png"))
    assert len(heatmaps) == 1 and heatmaps[0].stat().st_size > 5000, sorted(p.name for p in out.iterdir())


def _study(sweep: Path):
    from finetune_kit.experiments.study_report import find_study

    return find_study(sweep) if (sweep / "optuna.db").is_file() else None


def test_sweep_of_real_classification_runs_interrupted_and_resumed(tmp_path):
    """A TPE study of 2 tiny real trials (1 epoch each, generated images): interrupted (SIGTERM)
    during trial 1, then resumed by the same command: trial 0 is not re-run, trial 1 re-runs."""
    from finetune_kit.tasks.classification.synthetic import ensure_synthetic_dataset

    data = ensure_synthetic_dataset(tmp_path / "data", size=48, per_class=8)
    sweep = tmp_path / "sweep"
    tiny = [a for a in TINY if a not in ("--label_preset", "acrima")]
    cmd = [*CLI, "sweep", "--task", "classification", "--method", "tpe", "--trials", "2",
           "--param", "ft_strategy=linear,full", "--param", "learning_rate=loguniform(1e-4,1e-2)",
           "--output_dir", str(sweep), "--", "--data", str(data), "--num_epochs", "1", *tiny,
           "--linear_probe_epochs", "1", "--num_threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 900
    while time.time() < deadline:
        study = _study(sweep)
        trials = study.get_trials() if study else []
        if [t.state.name for t in trials][:2] == ["COMPLETE", "RUNNING"] and trials[1].user_attrs.get("run_dir"):
            break
        time.sleep(1)
    else:
        proc.kill()
        pytest.fail("sweep did not reach its second trial: " + proc.communicate()[0][-3000:])
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 of 2 trials already there" in r.stdout  # trial 0 done, trial 1 re-queued (waiting)
    trials = _study(sweep).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[2].params == trials[1].params and trials[1].user_attrs["error"] == "interrupted"
    assert len(list((sweep / "trials" / "trial-0000").iterdir())) == 1
    res = load_runs(sweep, metric_modes=MODES)
    assert len(res.completed) == 2
    assert [r.status for r in res.incomplete] == ["interrupted"]  # the interrupted first attempt of trial 1
    values = {t.user_attrs["run_dir"]: t.value for t in trials if t.state.name == "COMPLETE"}
    for _, row in res.completed.iterrows():
        assert row["best.val_auroc"] == pytest.approx(values[row["path"]])


def _kodak_subset(folder: Path, n: int) -> Path:
    """A folder of symbolic links to the first ``n`` Kodak images (decoding all 24 would dominate)."""
    folder.mkdir()
    for name in sorted(os.listdir(KODAK))[:n]:
        (folder / name).symlink_to(KODAK / name)
    return folder


def test_compression_run_is_loaded(tmp_path):
    if not KODAK.is_dir():
        pytest.skip(f"Kodak images not found at {KODAK}")
    crops = _kodak_subset(tmp_path / "kodak", 4)
    root = tmp_path / "runs"
    for lmbda in (0.0018, 0.0067):
        r = subprocess.run([*CLI, "compress", "train", "--data", str(crops), "--model", "hpcm-tiny", "--epochs", "1",
                            "--steps-per-epoch", "1", "--batch-size", "2", "--patch-size", "64", "--lambda", str(lmbda),
                            "--output-dir", str(root), "--name", f"l{lmbda}", "--wandb", "disabled", "--no-progress",
                            "--num-workers", "0"], capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = load_runs(root, metric_modes=MODES)
    assert len(res.completed) == 2
    lam = res.resolve_param("lambda")
    assert sorted(res.completed[lam]) == [0.0018, 0.0067]
    assert res.resolve_metric("val_rd") == "final.val_rd"  # final metrics come first
    assert res.resolve_metric("val_bpp") == "final.val_bpp"
    assert res.completed["best.val_rd"].notna().all()  # per-epoch best, lower is better
    assert res.completed["best.val_psnr"].notna().all()
    for _, row in res.completed.iterrows():
        hist = [json.loads(line) for line in (Path(row["path"]) / "metrics.jsonl").read_text().splitlines()]
        assert row["best.val_rd"] == pytest.approx(min(h["val_rd"] for h in hist))
        assert all(COMPRESSION_TRAIN.metric in h for h in hist)
        assert recorded_command(row["path"]) == "compress train"  # what rerun reads


def test_sweep_of_real_compression_finetune_runs_with_a_boolean_parameter(tmp_path):
    """Two tiny fine-tuning trials, --use_balanced on and off: both run, the default objective
    (val_rd) is found, and its per-epoch values (what pruning reads) are recorded."""
    if not KODAK.is_dir():
        pytest.skip(f"Kodak images not found at {KODAK}")
    from typer.testing import CliRunner

    from finetune_kit.tasks.cli import app

    crops = _kodak_subset(tmp_path / "kodak", 4)
    sweep = tmp_path / "sweep"
    r = subprocess.run([*CLI, "sweep", "--task", "compression-finetune", "--param", "use_balanced=true,false",
                        "--output_dir", str(sweep), "--", "--data", str(crops), "--model", "hpcm-tiny", "--epochs", "2",
                        "--steps_per_epoch", "1", "--batch_size", "2", "--patch_size", "64", "--lambda", "0.0018",
                        "--val_fraction", "0.5", "--wandb", "disabled", "--no-progress", "--threads", "1"],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "pruning is off" not in r.stdout
    study = _study(sweep)
    spec = study.user_attrs["finetune_kit.spec"]
    assert spec["metric"] == "val_rd" and spec["mode"] == "min" and study.direction.name == "MINIMIZE"
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2, [t.user_attrs.get("error") for t in trials]
    for t in trials:
        cmd = t.user_attrs["command"]
        assert ("--use_balanced" in cmd) is t.params["use_balanced"]
        assert ("--no-use-balanced" in cmd) is not t.params["use_balanced"]  # the generated off form
        config = json.loads((Path(t.user_attrs["run_dir"]) / "config.json").read_text())
        assert config["use_balanced"] is t.params["use_balanced"]
        final = json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert t.value == pytest.approx(final["val_rd"])
        assert sorted(t.intermediate_values) == [1, 2]  # the records' epochs, counted from 1
    out = tmp_path / "report"
    a = CliRunner().invoke(app, ["analyze", str(sweep), "-o", str(out)])
    assert a.exit_code == 0, a.output
    assert "metric: `final.val_rd` (lower is better)" in a.output
