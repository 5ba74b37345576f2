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
    from finetune_kit.tasks.compression.objectives.rate_distortion import RateDistortionLoss
    from finetune_kit.tasks.compression.engine import build_optimizers, train_one_epoch
    from finetune_kit.tasks.compression.models.zoo import build_model

    seed_everything(0)
    ds = RandomCropDataset(list_images(photos)[:20], 128)
    loader = DataLoader(ds, batch_size=8, sampler=RandomSampler(ds, replacement=True, num_samples=8 * 120))
    model = build_model("hpcm-tiny")
    opt, aux = build_optimizers(model, lr=5e-4, aux_lr=1e-3)
    train_one_epoch(model, loader, opt, aux, RateDistortionLoss(0.0483), clip_max_norm=1.0)
    model.eval()
    model.update(force=True)
    return model


@pytest.fixture(scope="session")
def tiny_base_checkpoint(few_photos, tmp_path_factory) -> Path:
    """A ``compress train`` checkpoint of hpcm-tiny (2 steps of 2 x 64 px crops at lambda 0.0067, a few s)."""
    from finetune_kit.tasks.compression.run.config import TrainConfig
    from finetune_kit.tasks.compression.run.loop import run as train

    out = tmp_path_factory.mktemp("tiny_base")
    final = train(TrainConfig(data=few_photos, model="hpcm-tiny", epochs=1, steps_per_epoch=2, batch_size=2,
                              patch_size=64, val_fraction=0.2, wandb="disabled", progress=False, threads=1,
                              output_dir=out, name="base"))
    return Path(final["checkpoint"])


@pytest.fixture(scope="session")
def kodak_crops(kodak, tmp_path_factory) -> Path:
    """The first two Kodak images, centre 256 x 256 crops (real images; a full 768 x 512 image costs
    several seconds per model to code on 2 cores)."""
    from PIL import Image

    from finetune_kit.tasks.compression.data import list_images

    d = tmp_path_factory.mktemp("kodak_crops")
    for p in list_images(kodak)[:2]:
        im = Image.open(p).convert("RGB")
        w, h = im.size
        im.crop(((w - 256) // 2, (h - 256) // 2, (w + 256) // 2, (h + 256) // 2)).save(d / Path(p).name)
    return d
