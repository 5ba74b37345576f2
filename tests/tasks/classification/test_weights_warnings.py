"""A model built without weights is a loud warning (console and metrics.json), and a model whose
outputs ignore the image is flagged."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import timm
import torch
from rich.console import Console

from finetune_kit.tasks.classification.synthetic import ensure_synthetic_dataset
from finetune_kit.tasks.classification.weights_check import constant_outputs_warning, random_init_warning
from tests.tasks.classification.conftest import small_config


def test_random_init_run_warns_on_the_console_and_in_metrics(tmp_path):
    from finetune_kit.tasks.classification.train import run_training

    data = ensure_synthetic_dataset(tmp_path / "data", size=48, per_class=6)
    console = Console(record=True, width=300)
    res = run_training(small_config(data, tmp_path / "run", ft_strategy="linear"), console=console)
    text = console.export_text()
    assert "WARNING: resnet18 has no pretrained weights (no --pretrained, no --custom-weights-path)" in text
    recorded = json.loads((Path(res["run_dir"]) / "metrics.json").read_text())["warnings"]
    assert any("RANDOM initialisation" in w for w in recorded)


def test_no_warning_with_weights(weights_file):
    assert random_init_warning("mobilenetv2_100", False, str(weights_file)) is None
    assert random_init_warning("resnet18", True, None) is None


def test_constant_outputs_are_flagged_on_a_real_model(acrima_flat):
    from PIL import Image

    files = sorted(acrima_flat.iterdir())[:6]
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB").resize((64, 64)), dtype=np.float32)
                                      ).permute(2, 0, 1) / 255 for f in files])
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=2).eval()
    with torch.no_grad():
        varying = model(x).numpy()
        model.fc.weight.zero_()  # a head that reads nothing of the features: outputs = its bias
        constant = model(x).numpy()
    assert constant_outputs_warning(varying) is None
    line = constant_outputs_warning(constant)
    assert line is not None and line.startswith("WARNING: constant outputs") and "\n" not in line
