"""``finetune-kit export``: the exported file gives the run's calibrated probabilities outside Python's
training code (onnxruntime in a fresh interpreter, preprocessing from the sidecar), the calibrator
folding is exact, and unfinished runs / unknown formats are refused in one line."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune_kit.calibration import Calibrator
from finetune_kit.tasks.classification.export import CalibratedClassifier, ExportError, export_run
from finetune_kit.tasks.classification.predict import predict_images
from tests.tasks.classification.conftest import small_config

#: run in a fresh interpreter: only the sidecar's numbers, numpy, OpenCV and onnxruntime (plus the
#: project's decode + field-of-view crop, which the sidecar names)
ONNX_SCRIPT = r"""
import json, sys
import cv2, numpy as np, onnxruntime
from finetune_kit.tasks.classification.transforms import crop_to_fov, decode_image
model, images = sys.argv[1], sys.argv[2:]
side = json.load(open(model + ".json"))
pre = side["preprocessing"]
batch = []
for p in images:
    img = cv2.resize(crop_to_fov(decode_image(p)), (pre["resize_to"],) * 2, interpolation=cv2.INTER_AREA)
    o = (pre["resize_to"] - pre["size"]) // 2
    img = img[o:o + pre["size"], o:o + pre["size"]].astype(np.float32) / 255.0
    batch.append(((img - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)).transpose(2, 0, 1))
sess = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
probs = sess.run(None, {"image": np.stack(batch).astype(np.float32)})[0]
print(json.dumps({"probs": probs.tolist(), "classes": side["class_names"]}))
"""


@pytest.fixture(scope="module")
def mobilenet_run(acrima_flat, weights_file, tmp_path_factory) -> Path:
    """A finished linear probe of the ImageNet MobileNetV2 on the 24 real ACRIMA images, 64 px (the
    random-init ResNet of ``finished_run`` has a probe with weights ~1e6, whose logits cancel
    catastrophically in float32: no exporter reproduces them to 1e-4)."""
    from finetune_kit.tasks.classification.train import run_training

    tmp = tmp_path_factory.mktemp("mobilenet")
    cfg = small_config(acrima_flat, tmp, ft_strategy="linear", label_preset="acrima", model_name="mobilenetv2_100",
                       custom_weights_path=str(weights_file))
    return Path(run_training(cfg)["run_dir"])


@pytest.mark.slow  # ~45 s: a training run, an export and a second interpreter
def test_onnx_in_fresh_interpreter_gives_predicts_decisions(mobilenet_run, acrima_flat, tmp_path):
    """20 real ACRIMA images: the exported ONNX file, run by onnxruntime in a new process with the
    sidecar's preprocessing, gives predict's decisions and its probabilities within 1e-4."""
    finished_run = mobilenet_run
    res = export_run(finished_run, "onnx", output=tmp_path / "m.onnx")
    assert res.max_abs_diff <= 1e-4 and res.n_checked > 0
    images = sorted(str(p.resolve()) for p in acrima_flat.iterdir())[:20]
    rows = list(csv.DictReader(open(predict_images(finished_run, images, output=tmp_path / "p.csv"))))
    out = subprocess.run([sys.executable, "-c", ONNX_SCRIPT, str(res.path), *images], capture_output=True,
                         text=True, check=True, timeout=300)
    got = json.loads(out.stdout)
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == 20
    for p, probs in zip(images, got["probs"]):
        row = by_path[p]
        assert got["classes"][int(np.argmax(probs))] == row["predicted"], p
        np.testing.assert_allclose(probs, [float(row[f"p_{c}"]) for c in got["classes"]], atol=1e-4)


def test_torchscript_export_and_sidecar(finished_run, tmp_path):
    res = export_run(finished_run, "torchscript", output=tmp_path / "m.pt")
    side = json.loads(res.sidecar.read_text())
    assert side["class_names"] == ["normal", "glaucoma"] and side["preprocessing"]["size"] == 64
    assert side["check"]["max_abs_diff"] <= 1e-4
    module = torch.jit.load(str(res.path))
    p = module(torch.zeros(3, 3, 64, 64))
    assert p.shape == (3, 2) and torch.allclose(p.sum(1), torch.ones(3))
    if side["ood"]:
        assert (tmp_path / side["ood"]["statistics"]).is_file()


@pytest.mark.parametrize("cal", [
    Calibrator("temperature", {"T": 1.7}),
    Calibrator("vector", {"w": [0.8, 1.3], "b": [0.2, -0.4]}),
    Calibrator("isotonic", {"x": [0.0, 0.2, 0.2, 0.6, 1.0], "y": [0.01, 0.1, 0.3, 0.35, 0.97]}),
    Calibrator(),
])
def test_folded_calibrator_equals_the_runs(cal):
    """The exported graph's calibration equals Calibrator.probs (float32 tolerance 1e-6)."""
    class Logits(torch.nn.Module):
        num_classes = 2

        def forward(self, x):
            return x

    z = torch.randn(500, 2) * 3
    got = CalibratedClassifier(Logits(), cal)(z).double().numpy()
    np.testing.assert_allclose(got, cal.probs(z.numpy()), atol=1e-6)


def _status(run: Path, status: str) -> dict:
    f = run / "status.json"
    old = json.loads(f.read_text())
    f.write_text(json.dumps({**old, "status": status}))
    return old


@pytest.mark.parametrize("status", ["running", "failed", "interrupted"])
def test_unfinished_or_failed_run_refused(finished_run, status):
    old = _status(finished_run, status)
    try:
        with pytest.raises(ExportError, match=f"the run is {status}, not completed"):
            export_run(finished_run, "onnx")
    finally:
        (finished_run / "status.json").write_text(json.dumps(old))


def test_unknown_format_refused(finished_run):
    with pytest.raises(ExportError, match="unknown export format; use one of onnx, torchscript"):
        export_run(finished_run, "tflite")
