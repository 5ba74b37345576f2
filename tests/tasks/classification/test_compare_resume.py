"""``compare --resume FOLDER`` finishes a comparison: completed strategies kept, unfinished ones continued."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_kit.tasks.classification.synthetic import ensure_synthetic_dataset
from finetune_kit.tasks.cli import app

runner = CliRunner()
FAST = ["--wandb", "disabled", "--no-progress", "--img_size", "48", "--model_name", "resnet18", "--num_threads", "1",
        "--batch_size", "8", "--val_fraction", "0.25", "--test_fraction", "0.25", "--warmup-epochs", "0"]


@pytest.mark.slow  # two short comparisons on CPU (about 100 s on a busy 2-core machine)
def test_compare_resume_keeps_finished_and_continues_stopped_strategies(tmp_path):
    data = ensure_synthetic_dataset(tmp_path / "data", size=48, per_class=6)
    first = runner.invoke(app, ["compare", "--data", str(data), "--strategies", "linear,full", "--num-epochs", "2",
                                "--stop-after-epoch", "1", "--output_dir", str(tmp_path / "out"), *FAST])
    assert first.exit_code == 0, first.output
    folder = next((tmp_path / "out").iterdir())
    status = lambda name: json.loads((folder / name / "status.json").read_text())["status"]  # noqa: E731
    assert (status("linear"), status("full")) == ("completed", "interrupted")
    linear_metrics = (folder / "linear" / "metrics.json").read_text()

    bad = runner.invoke(app, ["compare", "--resume", str(tmp_path)])
    assert bad.exit_code == 2 and "no comparison.json there" in bad.output

    res = runner.invoke(app, ["compare", "--resume", str(folder)])
    assert res.exit_code == 0, res.output
    assert "linear: completed, kept" in res.output and "full: interrupted, continued" in res.output
    assert status("full") == "completed"
    assert len(json.loads((folder / "full" / "metrics.json").read_text())["val"]) > 0
    assert len(Path(folder / "full" / "metrics.jsonl").read_text().splitlines()) == 2  # epoch 2 added, not redone
    assert (folder / "linear" / "metrics.json").read_text() == linear_metrics  # kept untouched
    rows = json.loads((folder / "comparison.json").read_text())["rows"]
    assert {r["strategy"] for r in rows} >= {"linear", "full"} and all(
        r["test_auroc"] is not None for r in rows if r["strategy"] in ("linear", "full"))
