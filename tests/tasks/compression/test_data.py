"""Image-folder datasets: RGB conversion notice, too-small images, empty folders, crops."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from finetune_kit.tasks.compression.data import (ImageModeWarning, RandomCropDataset, list_images, load_rgb,
                                    split_train_val)


def test_random_crops_from_photos(photos):
    paths = list_images(photos)
    assert len(paths) >= 40  # the README says 50; 49 are present
    ds = RandomCropDataset(paths[:3], 128, cache=False)
    x = ds[0]
    assert x.shape == (3, 128, 128) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    val = RandomCropDataset(paths[:3], 128, train=False)
    assert torch.equal(val[1], val[1])  # centre crops are deterministic


def test_grey_image_is_converted_with_a_notice(kodak, tmp_path):
    grey = Image.open(sorted(kodak.iterdir())[0]).convert("L")
    grey.save(tmp_path / "grey.png")
    with pytest.warns(ImageModeWarning, match="grey.png: mode L converted to RGB"):
        img = load_rgb(tmp_path / "grey.png")
    assert img.mode == "RGB"
    arr = np.asarray(img)
    assert (arr[..., 0] == arr[..., 1]).all()


def test_rgba_and_palette_are_converted(tmp_path):
    Image.new("RGBA", (80, 80), (10, 20, 30, 128)).save(tmp_path / "a.png")
    Image.new("P", (80, 80)).save(tmp_path / "p.png")
    for name in ("a.png", "p.png"):
        with pytest.warns(ImageModeWarning):
            assert load_rgb(tmp_path / name).mode == "RGB"


def test_too_small_image_is_named(tmp_path):
    Image.new("RGB", (100, 300)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match=r"small.png is 100x300 px, smaller than the 128 px crop.*--patch-size"):
        RandomCropDataset([tmp_path / "small.png"], 128)


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        list_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "nope")


def test_split_is_seeded_and_disjoint(photos):
    paths = list_images(photos)
    tr, va = split_train_val(paths, 0.1, seed=3)
    assert len(va) == 5 and not set(tr) & set(va)
    assert split_train_val(paths, 0.1, seed=3) == (tr, va)
