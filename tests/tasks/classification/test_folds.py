"""Patient-grouped stratified K-fold splits, bootstrap intervals and the cross-validation summary."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from finetune_kit.tasks.classification.bootstrap import bootstrap_metrics, mean_sd, paired_difference
from finetune_kit.tasks.classification.folds import GroupError, fold_splits, group_ids, write_fold_csv


def _two_eyes(n_patients: int = 60, seed: int = 0):
    """File names of both eyes of ``n_patients`` (``1234_left.jpg`` / ``1234_right.jpg``), the eyes of
    one patient mostly sharing a label, classes imbalanced about 1:2."""
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for pid in rng.choice(9000, n_patients, replace=False) + 1000:
        y = int(rng.random() < 0.35)
        for eye in ("left", "right"):
            paths.append(f"/data/{pid}_{eye}.jpg")
            labels.append(y if rng.random() > 0.1 else 1 - y)
    return paths, labels


@pytest.mark.parametrize("k", [3, 5])
def test_grouped_splits_never_put_one_group_in_two_splits(k):
    paths, labels = _two_eyes()
    groups = group_ids(paths, regex=r"^(\d+)_")
    assert len(set(groups)) == 60 and groups[0] == Path(paths[0]).name.split("_")[0]
    splits = fold_splits(labels, groups, k, val_fraction=0.15, seed=3)
    assert len(splits) == k
    g = np.asarray(groups)
    for names in splits:
        parts = {s: set(g[names == s]) for s in ("train", "val", "test")}
        assert all(parts.values()), "every split non-empty"
        assert not parts["train"] & parts["val"] and not parts["train"] & parts["test"] and not parts["val"] & parts["test"]
    test_count = np.sum([names == "test" for names in splits], axis=0)
    assert (test_count == 1).all(), "every image is a test image in exactly one fold"
    # stratified: each test fold's positive share near the whole set's
    share = np.mean(labels)
    for names in splits:
        assert abs(np.mean(np.asarray(labels)[names == "test"]) - share) < 0.15


def test_random_split_would_leak_patients():
    """The check above can fail: ungrouped folds put the two eyes of some patient in train and test."""
    paths, labels = _two_eyes()
    by_image = group_ids(paths)  # each image its own group
    patient = np.asarray(group_ids(paths, regex=r"^(\d+)_"))
    leaks = sum(len(set(patient[names == "train"]) & set(patient[names == "test"]))
                for names in fold_splits(labels, by_image, 5, seed=3))
    assert leaks > 0


def test_group_regex_and_csv_groups(tmp_path):
    with pytest.raises(GroupError, match="does not match img7.jpg"):
        group_ids(["/x/12_left.jpg", "/x/img7.jpg"], regex=r"^(\d+)_")
    with pytest.raises(GroupError, match="does not match Im001_ACRIMA.jpg") as err:  # no patient id in ACRIMA names
        group_ids(["/x/Im001_ACRIMA.jpg"], regex=r"^(\d+)_")
    fix = str(err.value).split(";", 1)[1]
    assert r"'^(\d+)_'" not in fix and "leave --group-regex out" in fix  # never suggests the regex that failed
    with pytest.raises(GroupError, match="not a valid regular expression"):
        group_ids(["/x/a.jpg"], regex="(")
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(b"")
    csv = write_fold_csv([str(tmp_path / n) for n in ("a.jpg", "b.jpg", "c.jpg")], ["normal", "glaucoma"],
                         [0, 1, 1], ["train", "val", "test"], ["p1", "p2", "p1"], tmp_path / "f.csv")
    assert group_ids([str(tmp_path / n) for n in ("c.jpg", "a.jpg", "b.jpg")], csv_path=csv) == ["p1", "p1", "p2"]
    with pytest.raises(ValueError, match="class 1 has only 2"):
        fold_splits([0, 0, 0, 1, 1], ["a", "b", "c", "d", "d2"], 3)


def test_bootstrap_intervals_and_paired_difference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    good = np.clip(y * 0.6 + rng.normal(0.2, 0.2, 300), 0.01, 0.99)
    bad = np.clip(y * 0.15 + rng.normal(0.42, 0.2, 300), 0.01, 0.99)
    pg, pb = np.stack([1 - good, good], 1), np.stack([1 - bad, bad], 1)
    m = bootstrap_metrics(y, pg, n_boot=300)
    for name, r in m.items():
        assert r["ci95"][0] <= r["value"] <= r["ci95"][1], name
        assert r["ci95"][1] - r["ci95"][0] > 0, name
    d = paired_difference(y, pg, pb, n_boot=300)
    assert d["difference"] > 0.1 and d["ci95"][0] > 0 and d["p_value"] < 0.01
    same = paired_difference(y, pg, pg, n_boot=50)
    assert same["difference"] == 0 and same["p_value"] == 1.0
    assert mean_sd([1.0, 3.0]) == (2.0, pytest.approx(np.sqrt(2)))


@pytest.mark.slow
def test_cross_validation_on_real_images(acrima_flat, tmp_path):
    """2 folds of 24 real ACRIMA images, the exact linear probe and LP-FT (1 epoch, tiny resnet18):
    every image is a test image once, the summary has means, SDs, intervals and the paired row."""
    from tests.tasks.classification.conftest import small_config
    from finetune_kit.tasks.classification.cross_validation import run_cross_validation

    base = small_config(acrima_flat, tmp_path, label_preset="acrima", folds=2, num_epochs=1, img_size=32, ood=False)
    out = run_cross_validation(base, ["linear", "lp_ft"], tmp_path, n_boot=100)
    s = json.loads((Path(out["folder"]) / "cv_summary.json").read_text())
    assert s["folds"] == 2 and s["n_images"] == 24
    for name in ("linear", "lp_ft"):
        r = s["strategies"][name]
        assert len(r["auroc"]["folds"]) == 2 and r["auroc"]["ci95"] is not None and np.isfinite(r["ece"]["mean"])
    assert s["paired"][0]["strategy"] == "lp_ft" and s["paired"][0]["versus"] == "linear"
    assert s["reference_logreg"] is not None and len(s["reference_logreg"]["folds"]) == 2
    tests = []
    for i in (1, 2):
        rows = (Path(out["folder"]) / "folds" / f"fold_{i}.csv").read_text().splitlines()[1:]
        tests += [r.split(",")[0] for r in rows if r.split(",")[2] == "test"]
    assert len(tests) == len(set(tests)) == 24
    assert "| linear |" in out["markdown"] and "lp_ft vs linear" in out["markdown"]
    # a finished fold is not run again when the folder is passed back
    again = run_cross_validation(base, ["linear", "lp_ft"], tmp_path, folder=out["folder"], n_boot=100)
    assert again["summary"]["strategies"]["linear"]["auroc"]["folds"] == s["strategies"]["linear"]["auroc"]["folds"]
    assert again["wall_time_s"] < out["wall_time_s"]
