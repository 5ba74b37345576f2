"""Centred padding as the official HPCM evaluation (``compress eval --pad centred``)."""
from __future__ import annotations

import json

import torch

from finetune_kit.tasks.compression.padding import crop_centred, pad_centred


def test_pad_centred_places_the_image_like_the_official_test_script():
    x = torch.rand(1, 3, 100, 301)
    xp, (left, right, top, bottom) = pad_centred(x, 256)
    assert xp.shape[-2:] == (256, 512)
    assert (left, right, top, bottom) == (105, 106, 78, 78)  # the odd pixel goes right/bottom
    assert torch.equal(xp[..., top:top + 100, left:left + 301], x) and float(xp[..., :top, :].abs().sum()) == 0
    assert torch.equal(crop_centred(xp, (100, 301)), x)
    same, pads = pad_centred(torch.rand(1, 3, 512, 768), 256)
    assert pads == (0, 0, 0, 0) and same.shape[-2:] == (512, 768)  # Kodak needs no padding at 256


def test_eval_command_with_centred_padding(kodak, tmp_path):
    from typer.testing import CliRunner

    from finetune_kit.tasks.cli import app
    from finetune_kit.tasks.compression.evaluate import evaluate_image
    from finetune_kit.tasks.compression.models.hpcm.model import HPCM

    torch.manual_seed(0)
    model = HPCM("hpcm-tiny").eval()
    model.update(force=True)
    x = torch.rand(1, 3, 90, 200)
    edge, centred = evaluate_image(model, x), evaluate_image(model, x, pad="centred")
    assert centred["y_hat_exact"] and edge["y_hat_exact"]
    assert centred["bpp"] != edge["bpp"]  # different pixels are coded (zeros around the centre)
    ck = tmp_path / "tiny.pt"
    torch.save({"state_dict": model.state_dict(), "model": "hpcm-tiny"}, ck)
    out = tmp_path / "eval"
    r = CliRunner().invoke(app, ["compress", "eval", str(ck), "--data", str(kodak), "--limit", "1", "--pad", "centred",
                                 "--output", str(out), "--no-progress", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "results.json").read_text())["pad"] == "centred"
    r = CliRunner().invoke(app, ["compress", "eval", str(ck), "--data", str(kodak), "--limit", "1", "--pad", "middle",
                                 "--output", str(out), "--no-progress"])
    assert r.exit_code == 2 and "--pad" in r.output and "'edge'" in r.output and "'centred'" in r.output, r.output
