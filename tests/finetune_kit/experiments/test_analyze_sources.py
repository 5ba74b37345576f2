"""``analyze`` ranks runs from their own files first: a wandb summary in some runs must not decide
the default metric column, and a completed run left out of the ranking is named with the reason."""
from __future__ import annotations

import json

from analysis_helpers import MODES, make_run

from finetune_kit.experiments.analyze import analyze_runs
from finetune_kit.tasks.experiments_cli import DEFAULT_METRIC_CANDIDATES


def _wandb_summary(run, summary):
    """A wandb offline run inside a run folder (older layout: files/wandb-summary.json)."""
    files = run / "wandb" / "offline-run-20260101_000000-abc" / "files"
    files.mkdir(parents=True)
    (files / "wandb-summary.json").write_text(json.dumps(summary))
    (files / "config.yaml").write_text("")


def test_default_metric_reads_metrics_json_before_wandb_and_names_left_out_runs(tmp_path):
    hist = [{"epoch": 0, "val_auroc": 0.6}]
    for i, auroc in enumerate((0.70, 0.75)):  # made with wandb on: summary and metrics.json
        run = make_run(tmp_path, f"wb{i}", {"ft_strategy": "full", "learning_rate": 1e-3 * (i + 1)}, hist,
                       {"test": {"auroc": auroc}})
        _wandb_summary(run, {"test_auroc": auroc})
    make_run(tmp_path, "nowandb-best", {"ft_strategy": "linear", "learning_rate": 5e-4}, hist,
             {"test": {"auroc": 0.95}})  # --wandb disabled: only its own files
    make_run(tmp_path, "no-test", {"ft_strategy": "gradual", "learning_rate": 2e-4}, hist, {"val": {"auroc": 0.5}})
    res = analyze_runs(tmp_path, metric_candidates=DEFAULT_METRIC_CANDIDATES, metric_modes=MODES,
                       output=tmp_path / "out")
    assert res.metric_col == "final.test.auroc"  # as docs/analysis.md says, not wandb.summary.test_auroc
    top = res.report.split("## Recommendations")[0]
    assert "nowandb-best" in top.split("## Top")[1].splitlines()[4]  # the best run is ranked first
    assert "left out of the ranking: 1 run(s) (1 without the metric" in res.report
    assert "| no-test | no value for `final.test.auroc`" in res.report


def test_final_column_is_completed_from_the_wandb_summary(tmp_path):
    hist = [{"epoch": 0, "val_auroc": 0.6}]
    make_run(tmp_path, "own", {"learning_rate": 1e-3}, hist, {"test": {"auroc": 0.8}})
    run = make_run(tmp_path, "wandb-only-metric", {"learning_rate": 2e-3}, hist, {"train_time_s": 3.0})
    _wandb_summary(run, {"test_auroc": 0.9})
    res = analyze_runs(tmp_path, metric="test_auroc", metric_modes=MODES, output=tmp_path / "out")
    assert res.metric_col == "final.test.auroc"
    assert "left out" not in res.report
    assert "wandb-only-metric" in res.report.split("## Top")[1].splitlines()[4]
