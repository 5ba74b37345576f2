"""``evaluate RUN --data external/`` on a flat folder: the run's own label rule, the data checked before
the model loads, figures named after the data set, one CSV row per image; ``predict``/``evaluate``
take ``--num-threads`` and ``--batch-size``."""
from __future__ import annotations

import csv
import json
import os

import torch
from typer.testing import CliRunner

import finetune_kit.tasks.classification.evaluate as evaluate_module
from finetune_kit.tasks.cli import app

runner = CliRunner()


def test_evaluate_reuses_the_runs_label_rule_and_writes_a_row_per_image(finished_run, acrima_flat, monkeypatch):
    titles = []
    plot_roc = evaluate_module.plot_roc
    monkeypatch.setattr(evaluate_module, "plot_roc", lambda *a, **kw: titles.append(kw["title"]) or plot_roc(*a, **kw))
    threads = torch.get_num_threads()
    try:
        res = runner.invoke(app, ["evaluate", str(finished_run), "--data", str(acrima_flat), "--name", "flat",
                                  "--num-threads", "2", "--batch-size", "5", "--device", "cpu"])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    assert "by the run's rule: --label-preset acrima" in res.output
    assert titles == ["ROC (ACRIMA)"]  # the data set, not "test"
    out = finished_run / "eval-flat"
    method = json.loads((out / "metrics.json").read_text())["calibration"]["method"]
    assert ("(T=" if method == "temperature" else f"(calibrator {method})") in res.output  # no T for others
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 24 == json.loads((out / "metrics.json").read_text())["n_images"]
    assert {r["label"] for r in rows} == {"glaucoma", "normal"}
    for r in rows:
        assert r["label"] == ("glaucoma" if "_g_" in os.path.basename(r["path"]) else "normal")
        p = [float(r["p_normal"]), float(r["p_glaucoma"])]
        assert abs(sum(p) - 1) < 1e-4 and r["predicted"] == ("glaucoma" if p[1] > p[0] else "normal")
        assert r["correct"] == str(r["predicted"] == r["label"]).lower()


def test_bad_data_fails_before_the_model_loads(finished_run, tmp_path, monkeypatch):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"")
    monkeypatch.setattr(evaluate_module, "load_trained", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    res = runner.invoke(app, ["evaluate", str(finished_run), "--data", str(tmp_path / "flat"), "--label-regex", "_g_"])
    assert res.exit_code == 2 and "loaded" not in res.output
    assert [ln for ln in res.output.splitlines() if ln.startswith("error: ")], res.output


def test_predict_takes_threads_and_batch_size(finished_run, acrima_flat, tmp_path):
    threads = torch.get_num_threads()
    try:
        res = runner.invoke(app, ["predict", str(finished_run), str(acrima_flat), "--output", str(tmp_path / "p.csv"),
                                  "--num-threads", "1", "--batch-size", "7"])
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    assert "1 CPU thread(s)" in res.output
    assert len(list(csv.DictReader((tmp_path / "p.csv").open()))) == 24
