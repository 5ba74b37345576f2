"""``analyze``'s figures read back through their artists: a legend for the colours of the curves, a
log axis for a learning-rate comparison, whole-number epoch ticks, legends beside the data; and the
classification figures' epoch ticks for one-epoch runs."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from analysis_helpers import MODES, make_run  # noqa: E402

import finetune_kit.experiments.plots as plots  # noqa: E402
from finetune_kit.experiments.analyze import analyze_runs  # noqa: E402
from finetune_kit.tasks.classification.plots import training_curves_figure, val_auroc_figure  # noqa: E402


@pytest.fixture
def figures(monkeypatch):
    """Keep every figure ``analyze`` saves (instead of closing it) to read its artists."""
    kept = {}
    save = plots._save

    def keep(fig, path):
        fig.canvas.draw()
        kept[path.name] = fig
        plt.close(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return kept


def _runs(root, n_per_strategy=9, epochs=1):
    for s, strategy in enumerate(("linear", "full", "gradual")):
        for i in range(n_per_strategy):  # 27 runs: more than a per-run legend could name
            lr = (1e-4, 2e-4, 5e-4)[i % 3]
            hist = [{"epoch": e + 1, "val_auroc": 0.6 + 0.05 * s + 0.01 * e} for e in range(epochs)]
            make_run(root, f"{strategy}-{i}", {"ft_strategy": strategy, "learning_rate": lr, "seed": i}, hist,
                     {"test": {"auroc": 0.7 + 0.05 * s + 0.01 * (i % 3)}})


def _inside(ax, legend) -> bool:
    box, axes = legend.get_window_extent(), ax.get_window_extent()
    return box.x0 < axes.x1 and box.x1 > axes.x0 and box.y0 < axes.y1 and box.y1 > axes.y0


def _integer_ticks(ax) -> list[float]:
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    return ticks


def test_curves_legend_names_the_colour_groups_and_epoch_ticks_are_whole(tmp_path, figures):
    _runs(tmp_path)
    res = analyze_runs(tmp_path, metric="test_auroc", group_by="strategy", compare_param="lr", metric_modes=MODES,
                       output=tmp_path / "out")
    curves = figures["curves_val_auroc.png"].axes[0]
    legend = curves.get_legend()
    assert legend is not None and legend.get_title().get_text() == "ft_strategy"
    assert sorted(t.get_text() for t in legend.get_texts()) == ["full", "gradual", "linear"]
    assert not _inside(curves, legend)
    assert _integer_ticks(curves) == [1.0]  # one-epoch runs: no 0.945, 0.96 ... ticks
    comp = [f for name, f in figures.items() if name.startswith("compare_")][0].axes[0]
    assert comp.get_xscale() == "log"  # 1e-4 .. 5e-4 spans less than a decade, but it is a learning rate
    assert comp.get_legend() is not None and not _inside(comp, comp.get_legend())
    assert "curves_val_auroc.png" in res.figures


def test_compare_param_that_is_no_rate_keeps_a_linear_axis(tmp_path, figures):
    comp = pd.DataFrame({"config.seed": [1, 2, 3], "mean": [0.7, 0.72, 0.71], "std": [0.0, 0.0, 0.0],
                         "count": [1, 1, 1]})
    plots.plot_comparison(comp, "config.seed", tmp_path / "c.png", metric="final.test.auroc")
    assert figures["c.png"].axes[0].get_xscale() == "linear"


def test_classification_figures_of_a_one_epoch_run_have_whole_epoch_ticks():
    hist = [{"epoch": 1, "train_loss": 0.6, "val_loss": 0.5, "val_auroc": 0.8, "val_accuracy": 0.7}]
    fig = training_curves_figure(hist)
    fig.canvas.draw()
    for ax in fig.axes:
        assert _integer_ticks(ax) == [1.0]
    plt.close(fig)
    fig = val_auroc_figure({"linear": hist, "full": hist + [{**hist[0], "epoch": 2}]})
    fig.canvas.draw()
    ax = fig.axes[0]
    assert _integer_ticks(ax) == [1.0, 2.0] and not _inside(ax, ax.get_legend())
    plt.close(fig)
