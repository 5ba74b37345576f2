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
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from finetune_kit.distributed import dist_info, per_rank_batch, sample_seed, shard_indices

__all__ = ["IMAGE_EXTENSIONS", "ImageModeWarning", "list_images", "load_rgb", "split_train_val",
           "RandomCropDataset", "EpochPositions", "SeededCrops", "build_loaders",
           "set_loader_epoch"]

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


class EpochPositions(torch.utils.data.Sampler):
    """This rank's share of one epoch's one-process order, as ``(epoch, position, index)`` triples.

    The one-process order of epoch ``e`` is drawn from ``torch.Generator().manual_seed(seed_e)``
    (``seed_e`` = :func:`~finetune_kit.tasks.classification.setup.epoch_seed` ``(seed, e)``):
    ``draws`` indices with replacement (``--steps-per-epoch`` x global batch) or a permutation of
    the ``n`` images. It is cut to whole global batches (padded with its first entries to a
    multiple of the world size when shorter than one batch); rank ``r`` takes positions
    ``r, r + W, ...``, so the union of the ranks' ``k``-th batches of ``B / W`` is the ``k``-th
    global batch of ``B``. Call :meth:`set_epoch` before each epoch (:func:`set_loader_epoch`).

    Args:
        n: images in the dataset. batch_size: the *global* batch. seed: the run's seed.
        draws: items per epoch drawn with replacement (None: one permutation).
    """

    def __init__(self, n: int, batch_size: int, seed: int, *, draws: Optional[int] = None) -> None:
        info = dist_info()
        self.n, self.batch_size, self.seed, self.draws = int(n), int(batch_size), int(seed), draws
        self.rank, self.world = info.rank, info.world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the order of ``epoch`` (0-based)."""
        self.epoch = int(epoch)

    def _order(self) -> list[int]:
        from finetune_kit.tasks.classification.setup import epoch_seed  # local: classification.setup imports timm (start-up time)

        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = (torch.randint(self.n, (self.draws,), generator=g) if self.draws is not None
                 else torch.randperm(self.n, generator=g)).tolist()
        if len(order) >= self.batch_size:
            return order[: len(order) // self.batch_size * self.batch_size]
        return order + order[: -len(order) % self.world]

    def __iter__(self):
        order = self._order()
        return iter((self.epoch, pos, order[pos]) for pos in range(self.rank, len(order), self.world))

    def __len__(self) -> int:
        total = self.draws if self.draws is not None else self.n
        kept = total // self.batch_size * self.batch_size if total >= self.batch_size else total + (-total % self.world)
        return len(range(self.rank, kept, self.world))


class SeededCrops(Dataset):
    """Items of ``dataset`` addressed by :class:`EpochPositions` triples ``(epoch, position, index)``:
    the crop and flips of a position come from the torch RNG seeded
    :func:`~finetune_kit.distributed.sample_seed` ``(seed, epoch, position)``, whichever rank reads
    it; the item is ``(image [3, p, p], that seed)``, and the seed also keys the position's
    quantization noise (:func:`~finetune_kit.tasks.compression.models.training_noise.per_sample_noise`)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
        epoch, pos, index = item
        seed = sample_seed(self.seed, epoch, pos)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x = self.dataset[index]
        return x, torch.tensor(seed, dtype=torch.int64)


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """Tell a training loader's :class:`EpochPositions` sampler the epoch (0-based; no-op for others)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, EpochPositions):
        sampler.set_epoch(epoch)


def _distributed_loaders(cfg: Any, seed: int, train_ds: Dataset, val_ds: Dataset) -> tuple[Any, Any]:
    """The torchrun loaders: per-position seeded crops over this rank's share of each epoch (batch
    ``--batch-size / W``), and this rank's shard of the validation images (``sharded = True``:
    :func:`~finetune_kit.tasks.compression.engine.evaluate` sums over the ranks); with fewer
    validation images than ranks every rank validates on all of them."""
    local = per_rank_batch(cfg.batch_size)
    draws = cfg.steps_per_epoch * cfg.batch_size if cfg.steps_per_epoch is not None else None
    sampler = EpochPositions(len(train_ds), cfg.batch_size, seed, draws=draws)
    train = DataLoader(SeededCrops(train_ds, seed), batch_size=local, sampler=sampler, num_workers=cfg.num_workers)
    sharded = len(val_ds) >= dist_info().world_size
    shard = Subset(val_ds, list(shard_indices(len(val_ds)))) if sharded else val_ds
    val = DataLoader(shard, batch_size=max(1, min(local, len(shard))), num_workers=cfg.num_workers)
    val.sharded = sharded
    return train, val


def build_loaders(cfg: Any, seed: int) -> tuple[Any, Any]:
    """``(train_loader, val_loader)`` of the ``data`` section of a compression run config
    (:class:`~finetune_kit.tasks.compression.run.config.DataConfig`; ``compress train`` and ``finetune``).

    Images come from ``cfg.data``; validation images from ``cfg.val_data`` when given, else
    ``cfg.val_fraction`` of ``cfg.data`` held out with ``seed`` (:func:`split_train_val`).
    Training batches are ``[batch_size, 3, patch_size, patch_size]`` random crops with flips,
    shuffled, or ``steps_per_epoch * batch_size`` crops drawn with replacement when
    ``steps_per_epoch`` is set (an epoch is then that many steps); the last partial batch is
    dropped when there are at least ``batch_size`` images. Validation batches are centre crops of
    ``val_patch_size`` px, ``min(batch_size, #val images)`` per batch. ``num_workers`` loader
    processes; ``cache_images`` keeps decoded images in memory.

    Under ``torchrun`` (any world size) ``batch_size`` is the global batch and the loaders are
    :func:`_distributed_loaders`' (:class:`EpochPositions` + :class:`SeededCrops`; batches are
    ``(images, per-sample seeds)``); call :func:`set_loader_epoch` before each epoch.

    Raises:
        FileNotFoundError / ValueError: from :func:`list_images`, :func:`split_train_val` and
            :class:`RandomCropDataset` (missing folder, too few or too small images).
    """
    paths = list_images(cfg.data)
    if cfg.val_data is not None:
        train_paths, val_paths = paths, list_images(cfg.val_data)
    else:
        train_paths, val_paths = split_train_val(paths, cfg.val_fraction, seed)
    train_ds = RandomCropDataset(train_paths, cfg.patch_size, train=True, cache=cfg.cache_images)
    val_ds = RandomCropDataset(val_paths, cfg.val_patch_size, train=False, cache=cfg.cache_images)
    if dist_info().launched:
        return _distributed_loaders(cfg, seed, train_ds, val_ds)
    sampler = None
    if cfg.steps_per_epoch is not None:
        sampler = RandomSampler(train_ds, replacement=True, num_samples=cfg.steps_per_epoch * cfg.batch_size)
    train = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                       num_workers=cfg.num_workers, drop_last=len(train_ds) >= cfg.batch_size)
    val = DataLoader(val_ds, batch_size=min(cfg.batch_size, len(val_ds)), num_workers=cfg.num_workers)
    return train, val
