"""Fixtures for the compression tests: real images from ../shared/data, a briefly trained tiny HPCM."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

# On small shared machines (2 cores here) OpenMP threads spin against each other and other
# processes; one thread is faster there. FK_TEST_THREADS overrides.
if os.environ.get("FK_TEST_THREADS") or (os.cpu_count() or 1) <= 2:
    torch.set_num_threads(int(os.environ.get("FK_TEST_THREADS", "1")))

@pytest.fixture(scope="session")
def kodak(kodak_dir) -> Path:
    """The Kodak test images (the root conftest's ``kodak_dir``)."""
    return kodak_dir


@pytest.fixture(scope="session")
def photos(photos_train_dir) -> Path:
    """The 50 training photographs (the root conftest's ``photos_train_dir``)."""
    return photos_train_dir


@pytest.fixture(scope="session")
def few_photos(photos_train_dir, tmp_path_factory) -> Path:
    """Five of the training photographs (symbolic links; decoding all 50 would dominate a test)."""
    d = tmp_path_factory.mktemp("few_photos")
    for p in sorted(photos_train_dir.glob("*.png"))[:5]:
        (d / p.name).symlink_to(p)
    return d


@pytest.fixture(scope="session")
def kodak_images(kodak):
    """The first two Kodak images as ``[1, 3, 512, 768]`` tensors in [0, 1]."""
    from finetune_kit.tasks.compression.data import list_images, load_rgb, to_tensor

    return [to_tensor(load_rgb(p)).unsqueeze(0) for p in list_images(kodak)[:2]]


@pytest.fixture(scope="session")
def trained_tiny(photos):
    """hpcm-tiny trained for a short while on photos-train (128 px crops, high lambda) - ~1 min on 2 cores.

    Returned in eval mode with updated entropy-coder tables.
    """
    from torch.utils.data import DataLoader, RandomSampler

    from finetune_kit.seeding import seed_everything
    from finetune_kit.tasks.compression.data import RandomCropDataset, list_images
    from finetune_kit.tasks.compression.training import RateDistortion, build_optimizers, train_one_epoch
    from finetune_kit.tasks.compression.models.zoo import build_model

    seed_everything(0)
    ds = RandomCropDataset(list_images(photos)[:20], 128)
    loader = DataLoader(ds, batch_size=8, sampler=RandomSampler(ds, replacement=True, num_samples=8 * 120))
    model = build_model("hpcm-tiny")
    opt, aux = build_optimizers(model, lr=5e-4, aux_lr=1e-3)
    train_one_epoch(model, loader, opt, aux, RateDistortion(0.0483), clip_max_norm=1.0)
    model.eval()
    model.update(force=True)
    return model
