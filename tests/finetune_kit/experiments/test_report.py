"""Rankings, heatmap values, comparisons, recommendations, report and plots."""
from __future__ import annotations

import numpy as np
import pytest

from finetune_kit.experiments import analysis
from finetune_kit.experiments.plots import draw_heatmap, plot_comparison, plot_curves, plot_heatmap
from finetune_kit.experiments.results import load_runs

S, LR, M = "config.ft_strategy", "config.learning_rate", "final.test_auroc"


@pytest.fixture
def res(grid_runs):
    return load_runs(grid_runs[0], stale_after_s=0)


def test_top_k_overall_max_and_min(res, grid_runs):
    _, truth = grid_runs
    top = analysis.top_k(res.df, M, "max", k=3, params=[S, LR])
    expected = sorted(truth.values(), reverse=True)[:3]
    assert list(top[M]) == pytest.approx(expected)
    assert list(top["rank"]) == [1, 2, 3]
    assert top.iloc[0]["run"] == "full-lr0.001-s1"
    assert "zz-crashed" not in set(top["run"])  # unfinished runs are never ranked
    low = analysis.top_k(res.df, M, "min", k=1)
    assert low.iloc[0][M] == pytest.approx(min(truth.values()))


def test_top_k_per_group(res):
    top = analysis.top_k(res.df, M, "max", k=2, group_col=S, params=[LR])
    assert list(top[S]) == ["full", "full", "linear", "linear"]
    best_linear = top[top[S] == "linear"].iloc[0]
    assert best_linear[LR] == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="at least 1"):
        analysis.top_k(res.df, M, "max", k=0)


def test_heatmap_values_are_means_over_seeds(res, grid_runs):
    _, truth = grid_runs
    values, counts = analysis.heatmap_data(res.df, M, LR, S)
    assert list(values.index) == ["full", "linear"]
    assert list(values.columns) == pytest.approx([1e-4, 1e-3, 1e-2])
    for s in ("full", "linear"):
        for lr in (1e-4, 1e-3, 1e-2):
            assert values.loc[s, lr] == pytest.approx(np.mean([truth[(s, lr, 0)], truth[(s, lr, 1)]]))
            assert counts.loc[s, lr] == 2
    with pytest.raises(ValueError, match="two different parameters"):
        analysis.heatmap_data(res.df, M, LR, LR)


def test_heatmap_missing_cell_is_nan(res):
    df = res.df[~((res.df[S] == "linear") & (res.df[LR] == 1e-2))]
    values, counts = analysis.heatmap_data(df, M, LR, S)
    assert np.isnan(values.loc["linear", 1e-2]) and counts.loc["linear", 1e-2] == 0


def test_comparison_and_recommendation_with_seeds(res, grid_runs):
    _, truth = grid_runs
    comp = analysis.comparison_data(res.df, M, LR, S)
    row = comp[(comp[S] == "full") & (comp[LR] == 1e-3)].iloc[0]
    assert row["n"] == 2 and row["mean"] == pytest.approx((truth[("full", 1e-3, 0)] + truth[("full", 1e-3, 1)]) / 2)
    assert row["std"] == pytest.approx(np.std([truth[("full", 1e-3, 0)], truth[("full", 1e-3, 1)]], ddof=1))
    recs = analysis.recommend(res.df, M, "max", [S, LR, "config.seed"])
    assert len(recs) == 1
    best = recs[0]
    assert best.params == {S: "full", LR: 1e-3}
    assert best.n == 2 and best.std == pytest.approx(0.002 / np.sqrt(2))
    assert best.runner_up == {S: "full", LR: 1e-4} and best.within_noise is False
    per_group = analysis.recommend(res.df, M, "max", [S, LR], group_col=S)
    assert [(r.group, r.params[LR]) for r in per_group] == [("full", 1e-3), ("linear", 1e-2)]


def test_report_lists_everything(res):
    text = analysis.build_report(res, M, "max", group_col=S, k=2, heatmaps=[(LR, S)], compare_col=LR,
                                 figures=["heatmap.png"])
    assert "## Top 2 runs per `ft_strategy`" in text
    assert "full-lr0.001-s1" in text
    assert "**ft_strategy=full**: learning_rate=0.001" in text and "over 2 runs/seeds" in text
    assert "| zz-crashed | crashed |" in text and "| zz-failed | failed | RuntimeError: out of memory |" in text
    assert "![heatmap.png](heatmap.png)" in text
    assert "0.931 (n=2)" in text  # heatmap cell: mean of two seeds


def test_heatmap_cells_show_the_pivot_values(res, grid_runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, truth = grid_runs
    df = res.df[~((res.df[S] == "linear") & (res.df[LR] == 1e-2) & (res.df["config.seed"] == 1))]  # one seed there
    df = df[~((df[S] == "linear") & (df[LR] == 1e-4))]  # an empty cell
    values, counts = analysis.heatmap_data(df, M, LR, S)
    fig, ax = plt.subplots()
    try:
        draw_heatmap(ax, values, counts=counts, metric=M, mode="max")
        cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
        best = [p.get_xy() for p in ax.patches]
    finally:
        plt.close(fig)
    assert len(cells) == values.size == 6
    mean = np.mean([truth[("full", 1e-3, 0)], truth[("full", 1e-3, 1)]])
    assert cells[(0, 1)] == f"{mean:.4g}\nn=2"  # row full, column lr=1e-3: mean of two seeds
    assert cells[(1, 2)] == f"{truth[('linear', 1e-2, 0)]:.4g}"  # a single run: no n=
    assert cells[(1, 0)] == "-"  # no run
    for i, y in enumerate(values.index):
        for j, x in enumerate(values.columns):
            v, n = values.loc[y, x], counts.loc[y, x]
            expected = "-" if n == 0 else analysis.fmt(v) + (f"\nn={n}" if n > 1 else "")
            assert cells[(i, j)] == expected
    assert best == [(1 - 0.5, 0 - 0.5)]  # the best cell (full, 1e-3) is outlined


def test_fmt():
    assert analysis.fmt(float("inf")) == "inf" and analysis.fmt(np.float64("-inf")) == "-inf"
    assert analysis.fmt(float("nan")) == "-" and analysis.fmt(None) == "-"
    assert analysis.fmt(3.0) == "3" and analysis.fmt(0.93125) == "0.9313" and analysis.fmt(1e-5) == "1e-05"


def test_plots_write_files(res, tmp_path):
    values, counts = analysis.heatmap_data(res.df, M, LR, S)
    p = plot_heatmap(values, tmp_path / "h.png", counts=counts, metric=M)
    assert p.stat().st_size > 5000
    comp = analysis.comparison_data(res.df, M, LR, S)
    assert plot_comparison(comp, LR, tmp_path / "c.png", group_col=S, metric=M).stat().st_size > 5000
    assert plot_curves(res.df, "val_auroc", tmp_path / "v.png", group_col=S).stat().st_size > 5000
    assert plot_curves(res.df, "nope", tmp_path / "n.png") is None
    with pytest.raises(ValueError, match="no data for heatmap"):
        plot_heatmap(values.iloc[0:0], tmp_path / "e.png")
