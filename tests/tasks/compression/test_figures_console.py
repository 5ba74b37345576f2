"""Compression figures as a reader sees them (read from the figures' artists), run names that tell
the workflows apart, the default thread count, and rich progress that stays off piped output."""
from __future__ import annotations

import json

import pytest
import torch
from matplotlib.colors import to_hex
from typer.testing import CliRunner

from finetune_kit.runs.checkpoint import atomic_save
from finetune_kit.scale_early_stopping import ScaleEarlyStopping
from finetune_kit.tasks.cli import app
from finetune_kit.tasks.compression import threads as threads_mod
from finetune_kit.tasks.compression.curve_names import checkpoint_family
from finetune_kit.tasks.compression.progress_bar import ProgressBar
from finetune_kit.tasks.compression.rd_curves import rd_figure
from finetune_kit.tasks.compression.run.config import FinetuneConfig, TrainConfig
from finetune_kit.tasks.compression.run.training_curves import training_curves_figure


def _legend_right_of_axes(fig, ax) -> bool:
    fig.canvas.draw()
    return ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1


def test_the_three_workflows_get_distinct_run_names(photos):
    """The guides' workflows (README lines) differ only in options: the default run names (and so
    the titles of their training_curves.png, which is the run folder's name) name those options."""
    wf = [dict(freeze_entropy=True, context_lr_ratio=0.1),
          dict(use_hierarchical=True, scale_modulation="guides", scale_early_stopping=True, progressive_unfreeze=True),
          dict(use_balanced=True, adaptive_gamma=True, gamma_strategy="hpcm", gamma=0.003, gamma_final=0.001)]
    names = [FinetuneConfig(data=photos, **kw).default_run_name("hpcm-tiny", 0.013) for kw in wf]
    assert names == ["hpcm-tiny-finetune-frozen-entropy-ctx0.1-lambda0.013",
                     "hpcm-tiny-finetune-hierarchical-scale-es-progressive-lambda0.013",
                     "hpcm-tiny-finetune-balanced-hpcm-lambda0.013"]
    assert TrainConfig(data=photos).default_run_name("hpcm-tiny", 0.0067) == "hpcm-tiny-mse-lambda0.0067"
    assert (TrainConfig(data=photos, use_balanced=True, gamma_strategy="step").default_run_name("hpcm-tiny", 0.0067)
            == "hpcm-tiny-mse-balanced-step-lambda0.0067")


def test_training_curves_integer_epochs_legends_off_the_data_gamma_in_its_own_panel():
    recs = [{"epoch": e, "train_rd": 10 - e, "val_rd": 11 - e, "lr/g_a": 1e-4, "lr/context": 1e-5,
             "task_weight/distortion": 0.5 + 0.01 * e, "task_weight/rate": 0.5 - 0.01 * e, "gamma": 0.003 / e}
            for e in (1, 2, 3)]
    fig = training_curves_figure(recs, title="hpcm-tiny-finetune-balanced-hpcm-lambda0.013")
    assert len(fig.axes) == 4  # R-D, LR, task weights, gamma: no twin axis sharing a legend corner
    assert fig.axes[0].get_title() == "hpcm-tiny-finetune-balanced-hpcm-lambda0.013"
    fig.canvas.draw()
    ticks = [t for t in fig.axes[-1].get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)  # no 1.25, 1.5 ... epoch ticks
    for ax in fig.axes:
        assert _legend_right_of_axes(fig, ax)
    assert [line.get_label() for line in fig.axes[3].get_lines()] == ["gamma"]


def test_scale_convergence_gives_each_scale_its_own_y_range():
    """s1's R-D cost is ~100x s3's: on one axis s2/s3 were flat lines at zero."""
    ses = ScaleEarlyStopping(["s1", "s2", "s3"], patience=2)
    for epoch, k in enumerate((1.0, 0.8, 0.7, 0.69), start=1):
        ses.step({"s1": 100 * k, "s2": 5 * k, "s3": 0.5 * k + 0.01 * epoch}, epoch)
    fig = ses.figure()
    assert [ax.get_ylabel() for ax in fig.axes] == ["s1", "s2", "s3"]
    lo, hi = fig.axes[2].get_ylim()
    assert hi - lo < 1.0  # s3's own range (0.35 .. 0.54), not 0 .. 100
    assert "best" in fig.axes[0].get_title(loc="left")


def test_rd_figure_one_curve_per_family_each_its_own_colour_and_bd(anchors_file):
    from finetune_kit.tasks.compression.rd_curves import bd_metrics, load_anchors

    vtm = load_anchors(anchors_file)["VTM"]
    base = {"bpp": [0.2, 0.5], "psnr-rgb": [29.0, 32.0]}
    tuned = {"bpp": [0.3], "psnr-rgb": [31.5]}
    bds = {"hpcm-tiny": bd_metrics(vtm, base, anchor_name="VTM"), "hpcm-tiny fine-tuned (all)": bd_metrics(vtm, tuned)}
    fig = rd_figure({"hpcm-tiny": base, "hpcm-tiny fine-tuned (all)": tuned}, {"VTM": vtm}, bd=bds)
    ax = fig.axes[0]
    ours = [line for line in ax.get_lines() if line.get_label().startswith("hpcm-tiny")]
    assert len(ours) == 2 and len({to_hex(line.get_color()) for line in ours}) == 2
    assert list(ours[0].get_xdata()) == [0.2, 0.5] and list(ours[1].get_xdata()) == [0.3]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("hpcm-tiny\n(BD-rate") for t in texts)
    assert _legend_right_of_axes(fig, ax)


def test_checkpoint_family_separates_a_base_from_its_fine_tune():
    assert checkpoint_family({"config": {"command": "train", "lmbda": 0.0067}}, "hpcm-tiny") == "hpcm-tiny"
    assert checkpoint_family({}, "hpcm-base") == "hpcm-base"  # a converted official checkpoint
    tuned = {"config": {"command": "finetune", "checkpoint": "base.pt", "use_balanced": True, "gamma_strategy": "hpcm"}}
    assert checkpoint_family(tuned, "hpcm-tiny") == "hpcm-tiny fine-tuned (balanced-hpcm)"


def test_eval_of_a_base_and_a_fine_tuned_checkpoint_draws_two_curves(tiny_base_checkpoint, kodak_crops, anchors_file,
                                                                        tmp_path):
    base = torch.load(tiny_base_checkpoint, weights_only=False)  # written by compress train
    tuned = {**base, "config": {**base["config"], "command": "finetune", "checkpoint": str(tiny_base_checkpoint),
                                "lmbda": 0.013, "freeze_entropy": True, "context_lr_ratio": 0.1}}
    paths = [tiny_base_checkpoint, atomic_save(tuned, tmp_path / "tuned.pt")]
    out = tmp_path / "eval"
    r = CliRunner().invoke(app, ["compress", "eval", *map(str, paths), "--data", str(kodak_crops), "--limit", "1",
                                 "--output", str(out), "--anchors", str(anchors_file), "--no-progress",
                                 "--num-threads", "1"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert sorted(res["family"]) == ["hpcm-tiny", "hpcm-tiny fine-tuned (frozen-entropy-ctx0.1)"]
    bd = json.loads((out / "bd.json").read_text())
    assert set(bd["families"]) == set(res["family"])
    assert "hpcm-tiny fine-tuned (frozen-entropy-ctx0.1): BD-rate" in r.output
    assert "\r" not in r.output


def test_default_threads_take_the_free_cores(monkeypatch):
    """Measured: compress eval, 2 Kodak images, 2-core machine at load ~7: 63 s with 1 thread, 247 s with 2."""
    monkeypatch.setattr(threads_mod, "TORCH_DEFAULT_THREADS", 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert threads_mod.default_threads(cores=2, load=7.0) == 1  # busy machine: one thread
    assert threads_mod.default_threads(cores=16, load=0.1) == 16  # idle: every core
    assert threads_mod.default_threads(cores=16, load=6.4) == 10
    assert threads_mod.default_threads(4, cores=16, load=0.0) == 4  # four torchrun processes share the cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads_mod.default_threads(cores=16, load=0.0) == 8
    monkeypatch.setattr(threads_mod, "TORCH_DEFAULT_THREADS", 2)  # OMP_NUM_THREADS / physical cores cap it
    assert threads_mod.default_threads(cores=16, load=0.0) == 2
    before = torch.get_num_threads()
    try:
        n, note = threads_mod.apply_threads(None)
        assert torch.get_num_threads() == n >= 1 and note.startswith(f"threads: {n} (") and "--num-threads" in note
        assert threads_mod.apply_threads(1) == (1, "")
    finally:
        torch.set_num_threads(before)


def test_progress_bar_draws_nothing_when_piped(capsys):
    bar = ProgressBar(range(3), description="train")
    assert list(bar) == [0, 1, 2]
    bar.set_postfix(loss="1.0")
    captured = capsys.readouterr()
    assert not bar.drawn and captured.out == "" and captured.err == ""
