"""Figures as a reviewer wants them: checked on the matplotlib objects before saving."""
from __future__ import annotations

import numpy as np
import pytest

from finetune_kit.tasks.classification import plots
from finetune_kit.tasks.classification.bootstrap import bootstrap_auroc_ci
from finetune_kit.tasks.classification.metrics import auroc

NAMES = ["normal", "glaucoma"]


def _binary(n_pos=30, n_neg=40, seed=0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    p1 = np.clip(0.55 + 0.3 * y + rng.normal(0, 0.12, len(y)), 0.5, 0.99)  # all in the upper half
    return y, np.stack([1 - p1, p1], axis=1)


def _texts(fig) -> list[str]:
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [t.get_text() for t in ax.texts] + [ax.get_title(), ax.get_ylabel(), ax.get_xlabel()]
        if ax.get_legend():
            out += [t.get_text() for t in ax.get_legend().get_texts()]
    return out


def test_bootstrap_ci_is_stratified_seeded_and_brackets_the_auroc():
    y, p = _binary()
    lo, hi = bootstrap_auroc_ci(y, p, n_boot=300, seed=1)
    assert 0 <= lo <= auroc(y, p) <= hi <= 1
    assert bootstrap_auroc_ci(y, p, n_boot=300, seed=1) == (lo, hi)
    assert bootstrap_auroc_ci(np.ones(5, int), p[:5]) is None


def test_roc_legend_names_classes_counts_and_ci():
    y, p = _binary()
    fig = plots.roc_figure(y, p, class_names=NAMES, ci={1: (0.81, 0.93)})
    legend = " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert "glaucoma vs normal: AUROC" in legend and "95% CI 0.810-0.930" in legend
    assert "n = 30 glaucoma / 40 normal" in legend
    boot = " ".join(t.get_text() for t in plots.roc_figure(y, p, class_names=NAMES).axes[0].get_legend().get_texts())
    assert "95% CI" in boot  # bootstrapped when not given


def test_reliability_plots_the_positive_class_with_bin_counts_over_the_populated_range():
    y, p = _binary()
    fig = plots.reliability_figure(y, p, p, 1.0, class_names=NAMES)
    for ax in fig.axes:
        counts = [int(t.get_text().removeprefix("n=")) for t in ax.texts if t.get_text().startswith("n=")]
        assert sum(counts) == len(y)
        assert ax.get_xlim()[0] >= 0.4  # P(glaucoma) all >= 0.5: no empty 0-0.5 half (bin from 0.47)
    assert fig.axes[0].get_ylabel() == "observed fraction of glaucoma"
    assert "predicted probability of glaucoma" in fig.axes[0].get_xlabel()


def test_training_curves_title_axis_and_labelled_unfreeze_lines(tmp_path):
    from finetune_kit.tasks.classification.synthetic import ensure_synthetic_dataset

    hist = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_auroc": 0.5 + e / 10, "val_accuracy": 0.6,
             "unfrozen": [{"epoch": 3, "groups": ["layer4"], "stage": 1}] if e == 2 else []} for e in (1, 2, 3, 4)]
    data = plots.dataset_label(ensure_synthetic_dataset(tmp_path, size=32, per_class=2))
    assert data.startswith("SYNTHETIC")
    fig = plots.training_curves_figure(hist, run_name="resnet18-gradual", dataset=data)
    texts = _texts(fig)
    assert any("resnet18-gradual" in t and "SYNTHETIC" in t for t in texts)
    assert any("unfroze layer4" in t for t in texts)
    assert "validation AUROC / accuracy" in texts and "cross-entropy loss" in texts
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == ":"]
    assert [ln.get_xdata()[0] for ln in lines] == [2.5]  # before epoch 3, the first the groups train in
    assert fig.axes[0].get_xlabel() == "epoch"


def test_compare_figure_says_synthetic_and_dataset_names():
    fig = plots.val_auroc_figure({"linear": [{"epoch": 1, "val_auroc": 0.7}]}, dataset="SYNTHETIC data (generated)")
    assert "SYNTHETIC" in fig.axes[0].get_title()
    assert plots.dataset_label("/x/acrima/images", "acrima") == "ACRIMA"
    assert plots.dataset_label("/x/refuge/images") == "refuge"
    assert plots.dataset_label(None) == ""


def test_calibrated_report_writes_auroc_ci95(tmp_path):
    from finetune_kit.tasks.classification.evaluate import calibrated_report

    y, p = _binary()
    logits = np.log(p)
    rep = calibrated_report(tmp_path, val_logits=logits, val_labels=y, test_logits=logits, test_labels=y,
                            class_names=NAMES, n_boot=200)
    lo, hi = rep["test"]["auroc_ci95"]
    assert lo <= rep["test"]["auroc"] <= hi
    assert (tmp_path / "roc.png").is_file() and (tmp_path / "reliability.png").is_file()
