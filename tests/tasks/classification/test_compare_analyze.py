"""`analyze` on a real (tiny) compare folder: each strategy is a run, also from the folder above."""
from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tests.tasks.classification.conftest import small_config

STRATEGIES = ["linear", "gradual", "full", "progressive"]


def test_analyze_ranks_the_strategies_of_a_compare_folder(tmp_path):
    from finetune_kit.experiments.results import load_runs
    from finetune_kit.tasks.classification.compare import run_comparison
    from finetune_kit.tasks.classification.synthetic import ensure_synthetic_dataset
    from finetune_kit.tasks.cli import app

    data = ensure_synthetic_dataset(tmp_path / "data", size=40, per_class=6)
    base = small_config(data, tmp_path, img_size=32, batch_size=6, gradual_patience=1, unfreeze_schedule="1",
                        unfreeze_warmup_epochs=0)
    out = tmp_path / "study" / "round-1"
    res = run_comparison(base, STRATEGIES, out)
    folder = Path(res["folder"])
    assert json.loads((folder / "comparison.json").read_text())["kind"] == "comparison"
    for root in (folder, out, tmp_path / "study"):  # the compare folder, its parent, any nesting
        runs = load_runs(root)
        assert sorted(runs.df[runs.resolve_param("ft_strategy")]) == sorted(STRATEGIES), root  # config.strategy.*
        assert set(runs.df["status"]) == {"completed"}
    result = CliRunner().invoke(app, ["analyze", str(tmp_path / "study"), "--output", str(tmp_path / "analysis")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "analysis" / "report.md").read_text()
    assert "not found" not in report
    for s in STRATEGIES:
        assert s in report, s
    # epochs counted from 1 in what analyze reads: the per-epoch records and the checkpoints
    hist = [json.loads(line) for line in (folder / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert (folder / "full" / "checkpoints" / "epoch_0002.pt").exists()
