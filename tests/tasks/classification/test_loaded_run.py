"""The public Python API for a finished run: ``finetune_kit.load_run`` -> ``Run.predict``,
``Run.predict_tensor``, ``Run.evaluate``, on a real run over real ACRIMA images; its answers equal
the ``predict`` / ``evaluate`` commands' code."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

import finetune_kit as fk
from finetune_kit.tasks.classification.predict import predict_images
from finetune_kit.tasks.classification.transforms import ImageCache


@pytest.fixture(scope="module")
def run(finished_run):
    return fk.load_run(finished_run, device="cpu")


def test_load_run_is_public_and_lazy():
    assert {"load_run", "Run"} <= set(dir(fk))
    assert fk.load_run.__module__ == "finetune_kit.tasks.classification.loaded_run"


def test_predict_equals_the_predict_command(run, acrima_flat, tmp_path):
    images = sorted(str(p) for p in acrima_flat.iterdir())[:5]
    table = run.predict(images)
    assert sorted(run.class_names) == ["glaucoma", "normal"]
    assert list(table.columns[:4]) == ["path", "predicted", *[f"p_{c}" for c in run.class_names]]
    assert len(table) == 5
    probs = table[[f"p_{c}" for c in run.class_names]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    with open(predict_images(run.path, images, output=tmp_path / "p.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["predicted"] for r in rows] == list(table["predicted"])
    expected = np.array([[float(r[f"p_{c}"]) for c in run.class_names] for r in rows])
    np.testing.assert_allclose(probs, expected, atol=2e-6)  # the CSV keeps 6 decimals
    if "ood_score" in rows[0]:
        assert list(table["in_distribution"]) == [r["in_distribution"] == "true" for r in rows]
    # a folder is searched too, and a single path needs no list
    assert len(run.predict(acrima_flat)) == 24


def test_predict_tensor_equals_predict_on_files(run, acrima_flat):
    images = sorted(str(p) for p in acrima_flat.iterdir())[:4]
    cache = ImageCache(run.transforms.cache_size)
    cache.load(images)
    pixels = np.stack([run.transforms.eval(image=cache.get(p))["image"] for p in images])  # (B, S, S, 3) uint8
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    assert x.shape == (4, 3, run.img_size, run.img_size)
    probs_uint8 = run.predict_tensor(x)
    probs_float = run.predict_tensor(x.float() / 255.0)
    assert probs_uint8.shape == (4, len(run.class_names)) and probs_uint8.dtype == torch.float32
    table = run.predict(images)
    expected = table[[f"p_{c}" for c in run.class_names]].to_numpy()
    np.testing.assert_allclose(probs_uint8.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(probs_float.numpy(), expected, atol=1e-5)


def test_predict_tensor_rejects_the_wrong_size(run):
    with pytest.raises(ValueError, match=r"give \(B, 3, 64, 64\)"):
        run.predict_tensor(torch.rand(2, 3, 32, 32))


def test_evaluate_reuses_the_runs_label_rule(run, acrima_flat):
    res = run.evaluate(acrima_flat, name="api")  # flat ACRIMA names: the run's --label-preset acrima applies
    assert res["n_images"] == 24
    assert 0.0 <= res["metrics"]["auroc"] <= 1.0
    assert (Path(run.path) / "eval-api" / "metrics.json").is_file()


def test_load_run_names_the_fix_for_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        fk.load_run(tmp_path)
