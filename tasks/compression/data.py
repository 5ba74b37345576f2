"""Image-folder datasets for training and evaluating compression models.

Images are read with Pillow; anything that is not 8-bit RGB (grey, palette, RGBA, CMYK,
16-bit) is converted to RGB with an :class:`ImageModeWarning` naming the file. Tensors are
``float32 [3, H, W]`` in [0, 1].
"""
from __future__ import annotations

import math
import random
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["IMAGE_EXTENSIONS", "ImageModeWarning", "list_images", "load_rgb", "split_train_val",
           "RandomCropDataset", "FullImageDataset", "build_loaders"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm"})


class ImageModeWarning(UserWarning):
    """An image was converted to RGB (it was grey, palette, RGBA, CMYK or 16-bit)."""


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files directly inside ``folder`` (extensions in :data:`IMAGE_EXTENSIONS`, any case).

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: it holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist: pass a folder of PNG/JPEG images")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise ValueError(f"no images in {folder}: expected files ending in {', '.join(sorted(IMAGE_EXTENSIONS))}")
    return paths


def load_rgb(path: str | Path) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image, converting (with an :class:`ImageModeWarning`) if needed.

    Raises:
        ValueError: the file is not a readable image.
    """
    path = Path(path)
    try:
        img = Image.open(path)
        img.load()
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{path} is not a readable image ({exc}); remove it from the folder") from exc
    if img.mode != "RGB":
        warnings.warn(f"{path.name}: mode {img.mode} converted to RGB", ImageModeWarning, stacklevel=2)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float64)
            img = Image.fromarray(np.clip(arr / (65535.0 if arr.max() > 255 else 255.0) * 255 + 0.5, 0, 255)
                                  .astype(np.uint8)).convert("RGB")
        else:
            img = img.convert("RGBA").convert("RGB") if img.mode == "P" else img.convert("RGB")
    return img


def to_tensor(img: Image.Image) -> Tensor:
    """RGB PIL image -> ``float32 [3, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)


def split_train_val(paths: Sequence[Path], val_fraction: float, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Shuffle ``paths`` with ``seed`` and hold out ``ceil(val_fraction * n)`` (at least 1) for validation.

    Raises:
        ValueError: fewer than 2 images, or ``val_fraction`` outside (0, 1).
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction}: must be between 0 and 1 (exclusive)")
    if len(paths) < 2:
        raise ValueError(f"{len(paths)} image(s): need at least 2 to hold one out for validation, or pass --val-data")
    order = list(paths)
    random.Random(seed).shuffle(order)
    n_val = min(len(order) - 1, max(1, math.ceil(val_fraction * len(order))))
    return sorted(order[n_val:]), sorted(order[:n_val])


class RandomCropDataset(Dataset):
    """Square crops of ``patch_size`` px, random with horizontal/vertical flips (``train=True``)
    or centred without flips (``train=False``, for validation).

    Args:
        paths: image files.
        patch_size: crop side in pixels.
        train: random crops and flips (p = 0.5 each) vs centre crops.
        cache: decode every image once and keep it in memory (uint8), default True.

    Raises:
        ValueError: an image is smaller than ``patch_size`` on a side (names it and the fix).
    """

    def __init__(self, paths: Sequence[Path], patch_size: int, *, train: bool = True, cache: bool = True) -> None:
        self.paths, self.patch_size, self.train = list(paths), int(patch_size), train
        for p in self.paths:
            with Image.open(p) as im:
                w, h = im.size
            if min(w, h) < patch_size:
                raise ValueError(f"{p} is {w}x{h} px, smaller than the {patch_size} px crop: "
                                 "pass a smaller --patch-size or remove the image")
        self._cache = [np.array(load_rgb(p), dtype=np.uint8) for p in self.paths] if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def _array(self, i: int) -> np.ndarray:
        return self._cache[i] if self._cache is not None else np.array(load_rgb(self.paths[i]), dtype=np.uint8)

    def __getitem__(self, i: int) -> Tensor:
        a = self._array(i)
        h, w = a.shape[:2]
        p = self.patch_size
        if self.train:
            top = int(torch.randint(0, h - p + 1, ()).item())
            left = int(torch.randint(0, w - p + 1, ()).item())
        else:
            top, left = (h - p) // 2, (w - p) // 2
        x = torch.from_numpy(np.ascontiguousarray(a[top:top + p, left:left + p])).permute(2, 0, 1).float().div_(255)
        if self.train:
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            if torch.rand(()) < 0.5:
                x = x.flip(-2)
        return x


class FullImageDataset(Dataset):
    """Whole images (for evaluation): item ``i`` is ``(tensor [3, H, W], path)``."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, Path]:
        return to_tensor(load_rgb(self.paths[i])), self.paths[i]


def build_loaders(cfg: Any) -> tuple[Any, Any]:
    """``(train_loader, val_loader)`` of a compression run config (``compress train`` and ``finetune``).

    Images come from ``cfg.data``; validation images from ``cfg.val_data`` when given, else
    ``cfg.val_fraction`` of ``cfg.data`` held out with ``cfg.seed`` (:func:`split_train_val`).
    Training batches are ``[batch_size, 3, patch_size, patch_size]`` random crops with flips,
    shuffled, or ``steps_per_epoch * batch_size`` crops drawn with replacement when
    ``steps_per_epoch`` is set (an epoch is then that many steps); the last partial batch is
    dropped when there are at least ``batch_size`` images. Validation batches are centre crops of
    ``val_patch_size`` px, ``min(batch_size, #val images)`` per batch. ``num_workers`` loader
    processes; ``cache_images`` keeps decoded images in memory.

    Raises:
        FileNotFoundError / ValueError: from :func:`list_images`, :func:`split_train_val` and
            :class:`RandomCropDataset` (missing folder, too few or too small images).
    """
    from torch.utils.data import DataLoader, RandomSampler

    paths = list_images(cfg.data)
    if cfg.val_data is not None:
        train_paths, val_paths = paths, list_images(cfg.val_data)
    else:
        train_paths, val_paths = split_train_val(paths, cfg.val_fraction, cfg.seed)
    train_ds = RandomCropDataset(train_paths, cfg.patch_size, train=True, cache=cfg.cache_images)
    val_ds = RandomCropDataset(val_paths, cfg.val_patch_size, train=False, cache=cfg.cache_images)
    sampler = None
    if cfg.steps_per_epoch is not None:
        sampler = RandomSampler(train_ds, replacement=True, num_samples=cfg.steps_per_epoch * cfg.batch_size)
    train = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                       num_workers=cfg.num_workers, drop_last=len(train_ds) >= cfg.batch_size)
    val = DataLoader(val_ds, batch_size=min(cfg.batch_size, len(val_ds)), num_workers=cfg.num_workers)
    return train, val
