"""Data layouts, case-insensitive extensions, stratified seeded splits, corrupt images."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from finetune_kit.tasks.classification.config import DataConfig
from finetune_kit.tasks.classification.data import DataError, discover, read_split, stratified_split, write_split
from finetune_kit.tasks.classification.transforms import CorruptImageError, ImageCache, build_transforms, decode_image


def test_acrima_regex_preset_full_folder(acrima_dir):
    imgs = discover(DataConfig(data=str(acrima_dir), label_preset="acrima"))
    assert imgs.layout == "regex" and imgs.class_names == ["normal", "glaucoma"]
    counts = np.bincount(imgs.labels)
    assert counts.tolist() == [232, 297] and len(imgs.samples) == 529
    assert sum(s.path.endswith(".JPG") for s in imgs.samples) == 2  # upper-case extensions matched


def test_imagefolder_layout(acrima_imagefolder):
    imgs = discover(DataConfig(data=str(acrima_imagefolder)))
    assert imgs.layout == "imagefolder" and imgs.class_names == ["normal", "glaucoma"]
    assert np.bincount(imgs.labels).tolist() == [12, 12]
    assert all(("_g_" in Path(s.path).name) == (s.label == 1) for s in imgs.samples)


def test_csv_layout_with_and_without_split(acrima_flat, tmp_path):
    files = sorted(acrima_flat.iterdir())
    rows = [(f.name, "glaucoma" if "_g_" in f.name else "normal") for f in files]
    plain = tmp_path / "plain.csv"
    with open(plain, "w", newline="") as fh:
        w = csv.writer(fh); w.writerow(["path", "label"])
        w.writerows([(str(acrima_flat / p), lab) for p, lab in rows])
    imgs = discover(DataConfig(data=str(plain)))
    assert imgs.layout == "csv" and len(imgs.samples) == 24 and all(s.split is None for s in imgs.samples)
    # relative paths + split column
    (tmp_path / "imgs").symlink_to(acrima_flat)
    split_csv = tmp_path / "split.csv"
    with open(split_csv, "w", newline="") as fh:
        w = csv.writer(fh); w.writerow(["path", "label", "split"])
        w.writerows([(f"imgs/{p}", lab, ("train", "val", "test")[i % 3]) for i, (p, lab) in enumerate(rows)])
    imgs = discover(DataConfig(data=str(split_csv)))
    stratified_split(imgs, val_fraction=0.2, test_fraction=0.2, seed=0)  # keeps the given split
    assert [s.split for s in imgs.samples] == [("train", "val", "test")[i % 3] for i in range(24)]


def test_stratified_split_is_seeded_and_written(acrima_dir, tmp_path):
    cfg = DataConfig(data=str(acrima_dir), label_preset="acrima")
    a, b = discover(cfg), discover(cfg)
    stratified_split(a, val_fraction=0.15, test_fraction=0.2, seed=3)
    stratified_split(b, val_fraction=0.15, test_fraction=0.2, seed=3)
    assert [s.split for s in a.samples] == [s.split for s in b.samples]
    for split, frac in (("test", 0.2), ("val", 0.15)):
        part = [s.label for s in a.samples if s.split == split]
        assert abs(len(part) - frac * 529) <= 2
        assert abs(np.mean(part) - 297 / 529) < 0.03  # stratified
    samples, names = read_split(write_split(a, tmp_path / "split.csv"))
    assert names == ["normal", "glaucoma"] and [s.split for s in samples] == [s.split for s in a.samples]


def test_missing_folder_error_names_path_and_fix(tmp_path):
    with pytest.raises(DataError, match=r"no_such_dir: no such folder or CSV file; pass"):
        discover(DataConfig(data=str(tmp_path / "no_such_dir")))


def test_flat_folder_without_rule_says_how(acrima_flat):
    with pytest.raises(DataError, match="--label_preset acrima"):
        discover(DataConfig(data=str(acrima_flat)))


def test_corrupt_image_error_or_skip(acrima_flat, tmp_path):
    bad = tmp_path / "broken_g_.JPG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(CorruptImageError, match=r"broken_g_\.JPG.*--skip_corrupt"):
        decode_image(str(bad))
    cache = ImageCache(32)
    good = str(next(acrima_flat.iterdir()))
    with pytest.raises(CorruptImageError, match="broken_g_"):
        cache.load([good, str(bad)])
    assert cache.load([good, str(bad)], skip_corrupt=True) == [str(bad)]
    assert cache.get(good).shape == (32, 32, 3)


def test_fundus_transforms_shapes_and_determinism(acrima_flat):
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=2)
    tf = build_transforms(model, 48, augment="fundus", clahe=True, seed=1)
    cache = ImageCache(tf.cache_size)
    path = str(sorted(acrima_flat.iterdir())[0])
    cache.load([path])
    assert tf.cache_size == round(48 / 0.95) and tf.random_train
    tf.train.set_random_seed(5); a = tf.train(image=cache.get(path))["image"]
    tf.train.set_random_seed(5); b = tf.train(image=cache.get(path))["image"]
    assert a.shape == (48, 48, 3) and np.array_equal(a, b)
    e = tf.eval(image=cache.get(path))["image"]
    assert e.shape == (48, 48, 3) and np.array_equal(e, tf.eval(image=cache.get(path))["image"])
