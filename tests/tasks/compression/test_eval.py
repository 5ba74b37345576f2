"""Real-bitstream evaluation on Kodak, JSON outputs, R-D plot and BD-rate."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler
from typer.testing import CliRunner

from finetune_kit.runs.checkpoint import atomic_save
from finetune_kit.tasks.cli import app
from finetune_kit.tasks.compression.rd_curves import bd_metrics, load_anchors


def test_paper_hpcm_base_bd_rate_vs_vtm(anchors_file):
    curves = load_anchors(anchors_file)
    assert "VTM" in curves and "HPCM-Base (paper)" in curves
    bd = bd_metrics(curves["VTM"], curves["HPCM-Base (paper)"], anchor_name="VTM")
    assert -18 < bd["bd_rate"] < -13  # the paper reports -15.31 % vs VTM-22.0
    assert bd["bd_psnr"] > 0.5


def test_bd_needs_two_points(anchors_file):
    vtm = load_anchors(anchors_file)["VTM"]
    bd = bd_metrics(vtm, {"bpp": [0.5], "psnr-rgb": [30.0]})
    assert bd["bd_rate"] is None and "at least 2" in bd["reason"]


def test_no_overlap_gives_neither_bd_rate_nor_bd_psnr_and_legend_off_the_axes(anchors_file):
    from finetune_kit.tasks.compression.rd_curves import rd_figure

    vtm = load_anchors(anchors_file)["VTM"]
    low = {"bpp": [0.01, 0.02], "psnr-rgb": [min(vtm["psnr-rgb"]) - 8, min(vtm["psnr-rgb"]) - 6]}
    bd = bd_metrics(vtm, low, anchor_name="VTM")
    assert bd["bd_rate"] is None and bd["bd_psnr"] is None and "do not overlap" in bd["reason"]
    fig = rd_figure({"ours": low}, {"VTM": vtm}, bd=bd)
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert any("BD undefined" in t.get_text() for t in legend.get_texts())
    fig.canvas.draw()  # the legend lies right of the axes: it covers no point
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1


def test_bad_anchors_file(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"curves": {"x": {"bpp": [1, 2], "psnr-rgb": [3]}}}))
    with pytest.raises(ValueError, match="equal length"):
        load_anchors(tmp_path / "a.json")


def test_eval_cli_two_lambdas_on_kodak(trained_tiny, photos, kodak, anchors_file, tmp_path):
    from finetune_kit.tasks.compression.data import RandomCropDataset, list_images
    from finetune_kit.tasks.compression.objectives.rate_distortion import RateDistortionLoss
    from finetune_kit.tasks.compression.engine import build_optimizers, train_one_epoch
    from finetune_kit.tasks.compression.models.zoo import build_model

    a = tmp_path / "a.pt"
    atomic_save({"state_dict": trained_tiny.state_dict(), "model": "hpcm-tiny",
                 "config": {"model": "hpcm-tiny", "lmbda": 0.0483}}, a)
    # a second R-D point: a few steps towards a low lambda
    low = build_model("hpcm-tiny")
    low.load_state_dict(trained_tiny.state_dict())
    opt, aux = build_optimizers(low, lr=5e-4)
    ds = RandomCropDataset(list_images(photos)[:8], 128)
    train_one_epoch(low, DataLoader(ds, batch_size=8, sampler=RandomSampler(ds, True, 8 * 15)), opt, aux,
                    RateDistortionLoss(0.0018))
    b = tmp_path / "b.pt"
    atomic_save({"state_dict": low.state_dict(), "model": "hpcm-tiny",
                 "config": {"model": "hpcm-tiny", "lmbda": 0.0018}}, b)
    out = tmp_path / "eval"
    r = CliRunner().invoke(app, ["compress", "eval", str(a), str(b), "--data", str(kodak), "--limit", "1",
                                 "--output", str(out), "--anchors", str(anchors_file), "--no-progress"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["name"] == "hpcm-tiny" and res["images"] == ["kodim01.png"]
    for k in ("bpp", "estimated_bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time",
              "bpp_s1", "bpp_s2", "bpp_s3", "bpp_z"):
        assert len(res["results"][k]) == 2
    assert res["results"]["bpp"] == sorted(res["results"]["bpp"])
    assert res["y_hat_exact"] == [True, True]
    per = json.loads((out / "per_image.json").read_text())
    assert set(per[str(a)]) == {"kodim01.png"}
    bd = json.loads((out / "bd.json").read_text())
    assert bd["anchor"] == "VTM" and bd["points"] == 2
    assert (out / "rd.png").stat().st_size > 10_000
    assert "BD-rate" in r.output


def test_eval_cli_errors(tmp_path, kodak):
    runner = CliRunner()
    r = runner.invoke(app, ["compress", "eval", str(tmp_path / "none.pt"), "--data", str(kodak)])
    assert r.exit_code == 2 and "does not exist" in r.output
    path = atomic_save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "bare.pt")
    r = runner.invoke(app, ["compress", "eval", str(path), "--data", str(kodak), "--output", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--model" in r.output


def test_small_image_is_left_out_of_the_ms_ssim_mean_only(kodak, tmp_path):
    from PIL import Image

    from finetune_kit.tasks.compression.data import list_images
    from finetune_kit.tasks.compression.evaluate import evaluate_model
    from finetune_kit.tasks.compression.models.zoo import build_model

    img = Image.open(list_images(kodak)[0]).convert("RGB")
    paths = [tmp_path / "big.png", tmp_path / "small.png"]
    img.crop((0, 0, 192, 192)).save(paths[0])
    img.crop((0, 0, 96, 128)).save(paths[1])  # under 161 px: MS-SSIM undefined
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"MS-SSIM is undefined for 1 image\(s\).*\(small\.png\)"):
        res = evaluate_model(build_model("hpcm-tiny"), paths)
    per = res["per_image"]
    assert per["small.png"]["ms-ssim-rgb"] != per["small.png"]["ms-ssim-rgb"]  # NaN for that image
    assert res["mean"]["ms-ssim-rgb"] == pytest.approx(per["big.png"]["ms-ssim-rgb"])
    assert res["mean"]["psnr-rgb"] == pytest.approx((per["big.png"]["psnr-rgb"] + per["small.png"]["psnr-rgb"]) / 2)
