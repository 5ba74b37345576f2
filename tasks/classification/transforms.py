"""Decoding, the decode/resize cache, the fundus augmentation preset and the eval transform.

On 2 CPU cores a JPEG decode + resize of a ~1000 px fundus photograph costs more than a
small model's forward pass, so every image is decoded once (OpenCV), cropped to its field of
view, resized to ``cache_size`` (= ``img_size / crop_pct`` of the model's timm data config)
and kept in memory as uint8 (about 200 kB per image at 256 px). Per-epoch work is only the
albumentations augmentation on the small cached image; normalisation (mean/std of the
model's timm data config) runs batched in torch (:func:`normalize_batch`).
"""
from __future__ import annotations

import io
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import albumentations as A
import cv2
import numpy as np
import timm
import torch
from PIL import Image
from timm.data import resolve_data_config

__all__ = ["CorruptImageError", "ImageTooSmallError", "MIN_IMAGE_SIDE", "MAX_IMAGE_PIXELS", "check_image_size",
           "decode_image", "crop_to_fov", "ImageCache", "DataTransforms", "build_transforms", "cache_size_for", "normalize_batch", "CachedImageDataset"]

log = logging.getLogger(__name__)


class CorruptImageError(ValueError):
    """An image file could not be decoded; the message names the path and the fix."""


class ImageTooSmallError(ValueError):
    """A valid image below the minimum size; the message names its size and the minimum."""


#: Smallest accepted image side in pixels: smaller images would be upscaled into training
#: (mostly interpolation, no detail). Default 32.
MIN_IMAGE_SIDE = 32
#: largest image accepted, in pixels (10000 x 10000): a header claiming more (a decompression bomb,
#: which would make the decoder allocate gigabytes) is refused before decoding
MAX_IMAGE_PIXELS = 100_000_000


def check_image_size(img: np.ndarray, path: str, min_side: int = MIN_IMAGE_SIDE) -> np.ndarray:
    """Return ``img`` (``(H, W, 3)``) when both sides are at least ``min_side`` pixels.

    Raises:
        ImageTooSmallError: a side below ``min_side`` (names the size, the minimum and the fix).
    """
    h, w = img.shape[:2]
    if min(h, w) < min_side:
        raise ImageTooSmallError(f"image {path} is {w}x{h} px, below the minimum of {min_side}x{min_side} px (it "
                                 "would be upscaled into training); remove it from the data or replace it with a "
                                 "larger original")
    return img


def decode_image(path: str) -> np.ndarray:
    """Read ``path`` as RGB uint8, shape ``(H, W, 3)``.

    Raises:
        CorruptImageError: unreadable, truncated or not an image (names the path and
            ``--skip_corrupt``), or its header claims more than :data:`MAX_IMAGE_PIXELS` pixels
            (refused before decoding, so a decompression bomb costs no memory).
    """

    data = np.fromfile(path, dtype=np.uint8) if path else None
    if data is not None and data.size:
        _check_pixel_count(data, path)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if img is None or img.ndim != 3 or min(img.shape[:2]) < 1:  # a valid 1x1 image decodes (size: check_image_size)
        raise CorruptImageError(f"cannot decode image {path}: the file is corrupt or not an image; replace or delete it, "
                                "or pass --skip_corrupt to skip such files with a warning")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _check_pixel_count(data: np.ndarray, path: str) -> None:
    """Refuse an image whose header claims more than :data:`MAX_IMAGE_PIXELS` pixels (read by PIL from
    the header alone; a format PIL does not know is left to the decoder)."""
    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:
            claimed = f"{im.size[0]}x{im.size[1]} px"
            pixels = im.size[0] * im.size[1]
    except Image.DecompressionBombError as exc:  # PIL's own limit (2 x 89 Mpx), hit while reading the header
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else MAX_IMAGE_PIXELS + 1
        claimed = f"{pixels:,} px"
    except Exception:  # noqa: BLE001 - not a format PIL reads from its header: the decoder decides
        return
    if pixels > MAX_IMAGE_PIXELS:
        raise CorruptImageError(f"image {path} claims {claimed}, above the limit of {MAX_IMAGE_PIXELS // 10**6} "
                                "million pixels (a decompression bomb or a damaged header); downscale or delete it, or "
                                "pass --skip_corrupt to skip such files with a warning")


def crop_to_fov(img: np.ndarray, threshold: int = 12, min_fraction: float = 0.2) -> np.ndarray:
    """Crop a fundus photograph to the bounding box of its field of view (the bright disc on
    a dark background). Pixels brighter than ``threshold`` (0-255, max over RGB) are inside.
    Returns ``img`` unchanged when the box would keep less than ``min_fraction`` of either side
    (an image that is not a fundus photograph, or already cropped)."""
    mask = img.max(axis=2) > threshold
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return img
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    if (r1 - r0) < min_fraction * img.shape[0] or (c1 - c0) < min_fraction * img.shape[1]:
        return img
    return img[r0:r1, c0:c1]


@dataclass
class ImageCache:
    """Decoded, FOV-cropped images resized to ``size`` x ``size`` pixels, uint8 RGB ``(size, size, 3)``.

    Shared between runs of one process (``compare`` decodes ACRIMA once for all strategies).
    :meth:`load` decodes missing paths with ``threads`` OpenCV threads.
    """

    size: int
    threads: int = 2
    images: dict[str, np.ndarray] = field(default_factory=dict)
    min_side: int = MIN_IMAGE_SIDE

    def load(self, paths: Iterable[str], *, skip_corrupt: bool = False) -> list[str]:
        """Decode and cache ``paths``; returns the paths skipped as corrupt.

        Raises:
            CorruptImageError: the first corrupt file, unless ``skip_corrupt``.
            ImageTooSmallError: an image with a side below ``min_side`` pixels (also with
                ``skip_corrupt``: it is not corrupt, and silently dropping it would change the data).
        """

        todo = [p for p in dict.fromkeys(paths) if p not in self.images]

        def work(p: str):
            try:
                img = crop_to_fov(check_image_size(decode_image(p), p, self.min_side))
            except (CorruptImageError, ImageTooSmallError) as exc:
                return p, exc
            return p, cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA)

        bad: list[str] = []
        with ThreadPoolExecutor(max_workers=max(1, self.threads)) as pool:
            for p, out in pool.map(work, todo):
                if isinstance(out, Exception):
                    if not skip_corrupt or isinstance(out, ImageTooSmallError):
                        raise out
                    log.warning("skipping corrupt image %s", p)
                    bad.append(p)
                else:
                    self.images[p] = out
        return bad

    def get(self, path: str) -> np.ndarray:
        """The cached image of ``path`` (call :meth:`load` first)."""
        return self.images[path]


@dataclass
class DataTransforms:
    """Transforms and normalisation resolved from a model's timm data config.

    Attributes:
        img_size: network input side in pixels.
        cache_size: side of the cached images (``img_size / crop_pct``).
        mean, std: per-channel normalisation (0-1 scale).
        train: albumentations pipeline for training (random), or the eval one when ``augment='none'``.
        eval: deterministic pipeline (center crop).
        random_train: whether ``train`` is random (disables the linear-probe feature cache).
    """

    img_size: int
    cache_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train: object
    eval: object
    random_train: bool


def build_transforms(model: torch.nn.Module, img_size: int, *, augment: str = "fundus", clahe: bool = False,
                     seed: int = 0) -> DataTransforms:
    """Build the fundus training preset and the eval transform for ``model`` at ``img_size`` px.

    Fundus preset (on the cached, FOV-cropped image): random resized crop (scale 0.7-1,
    aspect 0.9-1.1), horizontal and vertical flips, rotation within +-15 degrees (p=0.5),
    brightness/contrast +-0.15 (p=0.5), optional CLAHE (p=0.3, ``clahe=True``). Eval: center
    crop of ``img_size`` from the ``img_size / crop_pct`` cached image (timm's eval recipe).

    Raises:
        ValueError: unknown ``augment`` (use ``fundus`` or ``none``).
    """

    dc = resolve_data_config({}, model=model)
    crop_pct = float(dc.get("crop_pct") or 0.875)
    cache_size = max(img_size, int(round(img_size / crop_pct)))
    ev = A.Compose([A.CenterCrop(img_size, img_size)])
    if augment == "none":
        train, random_train = ev, False
    elif augment == "fundus":
        ops = [A.RandomResizedCrop((img_size, img_size), scale=(0.7, 1.0), ratio=(0.9, 1.1)),
               A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5),
               A.Affine(rotate=(-15, 15), p=0.5),
               A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5)]
        if clahe:
            ops.append(A.CLAHE(clip_limit=2.0, p=0.3))
        train, random_train = A.Compose(ops, seed=seed), True
    else:
        raise ValueError(f"augment={augment!r}: use 'fundus' (training preset) or 'none'")
    return DataTransforms(img_size, cache_size, tuple(dc["mean"]), tuple(dc["std"]), train, ev, random_train)


def cache_size_for(model_name: str, img_size: int) -> int:
    """Side of the cached images for ``model_name`` at ``img_size`` px (``img_size / crop_pct``)."""

    dc = resolve_data_config({}, model=timm.create_model(model_name, pretrained=False, num_classes=2))
    return max(img_size, int(round(img_size / float(dc.get("crop_pct") or 0.875))))


def normalize_batch(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images ``(N, H, W, 3)`` -> normalised float32 ``(N, 3, H, W)`` (contiguous)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return ((x.permute(0, 3, 1, 2).float() - m) / s).contiguous()


class CachedImageDataset(torch.utils.data.Dataset):
    """Dataset over cached images: item ``i`` is ``(uint8 array (S, S, 3), label int)``.

    Args:
        cache: the :class:`ImageCache` holding every path.
        paths, labels: the samples (same length).
        transform: an albumentations ``Compose`` applied to the cached image.
    """

    def __init__(self, cache: ImageCache, paths: Sequence[str], labels: Sequence[int], transform) -> None:
        self.cache, self.paths, self.transform = cache, list(paths), transform
        # class indices, or float target arrays (L,) of multi-label samples (NaN = not graded)
        self.labels = [v if isinstance(v, np.ndarray) else int(v) for v in labels]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = self.transform(image=self.cache.get(self.paths[i]))["image"]
        return np.ascontiguousarray(img), self.labels[i]
