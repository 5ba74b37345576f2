"""``compress compare`` on hpcm-tiny: every workflow at two target lambdas for 2 steps each, evaluated
with real bitstreams on 2 Kodak images (centre crops); table, BD-rates, plot, resume."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_kit.tasks.cli import app
from finetune_kit.tasks.compression.compare.workflows import WORKFLOWS

runner = CliRunner()


@pytest.fixture(scope="module")
def comparison(tiny_base_checkpoint, few_photos, kodak_crops, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    args = ["compress", "compare", "--checkpoint", str(tiny_base_checkpoint), "--lambda", "0.0035,0.013", "--steps",
            "2", "--epochs", "2", "--data", str(few_photos), "--eval-data", str(kodak_crops), "-b", "2",
            "--patch-size", "64", "--val-fraction", "0.2", "--threads", "1", "--no-progress", "--device", "cpu",
            "--output-dir", str(out), "--name", "t"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return Path(res.output.split("comparison folder: ")[1].split()[0]), res.output


def test_every_workflow_same_budget_real_bitstreams(comparison):
    folder, output = comparison
    rows = list(csv.DictReader((folder / "comparison.csv").open()))
    assert [r["workflow"] for r in rows] == (["base (lambda 0.0067)", *WORKFLOWS]) * 2
    assert [float(r["lambda"]) for r in rows] == [0.0035] * 6 + [0.013] * 6
    cells = json.loads((folder / "cells.json").read_text())["cells"]
    assert len(cells) == 10
    for key, cell in cells.items():
        lmbda, wf = key.split("/")
        tr, ev = cell["train"], cell["eval"]
        assert tr["epochs_run"] * tr["steps_per_epoch"] == 2 and len(tr["val_rd"]) == 2
        assert tr["wall_s"] > 0 and tr["peak_memory_mb"] > 0
        assert len(ev["per_image"]) == 2 and ev["mean"]["y_hat_exact"] is True
        assert ev["mean"]["bpp"] > 0 and abs(ev["mean"]["bpp"] - ev["mean"]["estimated_bpp"]) < 0.5
        cfg = json.loads((Path(tr["run_dir"]) / "config.json").read_text())
        assert cfg["lmbda"] == float(lmbda) and cfg["seed"] == 0 and cfg["batch_size"] == 2
        assert (cfg["checkpoint"] is None) == (wf == "scratch")
        assert cfg["freeze_entropy"] == (wf == "wf1-basic") and cfg["use_balanced"] == (wf == "wf3-balanced")
        assert cfg["use_hierarchical"] == cfg["progressive_unfreeze"] == (wf == "wf2-hierarchical")
        if wf == "finetune-all":
            lrs = json.loads((Path(tr["run_dir"]) / "lr_table.json").read_text())["groups"]
            assert {g["lr_mult"] for g in lrs if not g["frozen"]} == {1.0}
    # R-D cost = lambda * 255^2 * MSE + real bpp, from the per-image numbers
    a = cells["0.013/finetune-all"]["eval"]["per_image"]
    cost = sum(0.013 * 255 ** 2 * 10 ** (-r["psnr-rgb"] / 10) + r["bpp"] for r in a.values()) / 2
    row = next(r for r in rows if r["workflow"] == "finetune-all" and float(r["lambda"]) == 0.013)
    assert float(row["rd_cost"]) == pytest.approx(cost) and float(row["rd_vs_a"]) == 0
    bd = json.loads((folder / "bd.json").read_text())
    assert set(bd) == set(WORKFLOWS)
    for d in bd.values():  # a number, or undefined with the reason (e.g. a 2-step model's curve is not monotone)
        assert d["vs_finetune_all"]["bd_rate"] is not None or d["vs_finetune_all"]["reason"]
        assert "one R-D point" in d["vs_base"]["reason"]
    assert "BD-rate" in (folder / "comparison.md").read_text() and (folder / "rd.png").stat().st_size > 10_000
    assert "partial" not in (folder / "comparison.md").read_text()
    # 2 epochs leave workflow 2's second unfreeze stage past the end: one console line, no source path
    assert "WARNING: --unfreeze_schedule 1,2" in output
    assert "OptionWarning" not in output and "config.py:" not in output


def test_resume_keeps_finished_cells(comparison):
    folder, _ = comparison
    state = json.loads((folder / "cells.json").read_text())
    runs_before = sorted(p.name for p in (folder / "lambda0.013").iterdir())
    del state["cells"]["0.013/scratch"]["eval"]   # trained, not evaluated
    del state["cells"]["0.013/wf1-basic"]         # its run folder completed, the record lost
    (folder / "cells.json").write_text(json.dumps(state))
    res = runner.invoke(app, ["compress", "compare", "--resume", str(folder), "--threads", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    steps = [line for line in res.output.splitlines() if line.startswith("[")]
    assert {line.split("]")[0] for line in steps} == {"[0.013/scratch", "[0.013/wf1-basic"}
    assert not any("training" in line and "scratch" in line for line in steps)
    assert sorted(p.name for p in (folder / "lambda0.013").iterdir()) == runs_before  # nothing retrained
    assert len(json.loads((folder / "cells.json").read_text())["cells"]) == 10


def test_bad_options_fail_in_one_line(tiny_base_checkpoint, few_photos, kodak_crops):
    base = ["compress", "compare", "--checkpoint", str(tiny_base_checkpoint), "--data", str(few_photos),
            "--eval-data", str(kodak_crops), "--lambda", "0.013", "--device", "cpu"]
    res = runner.invoke(app, [*base, "--steps", "7", "--epochs", "2"])
    assert res.exit_code == 2 and "not a multiple of epochs" in res.output
    res = runner.invoke(app, [*base, "--steps", "2", "--workflows", "finetune-all,nope"])
    assert res.exit_code == 2 and "unknown workflow(s) nope" in res.output
