"""Inference with a finished run: calibrated class probabilities per image, as CSV."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["predict_images", "expand_inputs"]


def expand_inputs(inputs: Sequence[str | Path], extensions: Sequence[str]) -> list[str]:
    """Files as given plus the images inside given folders (recursive, case-insensitive extensions).

    Raises:
        FileNotFoundError: a path that does not exist, or no image found at all (names it).
    """
    from finetune_kit.tasks.classification.data import list_images

    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += [str(x.resolve()) for x in list_images(p, extensions)]
        elif p.is_file():
            out.append(str(p.resolve()))
        else:
            raise FileNotFoundError(f"{p}: no such image file or folder; pass image files or folders")
    if not out:
        raise FileNotFoundError(f"no images with extensions {', '.join(extensions)} in {', '.join(map(str, inputs))}")
    return out


def predict_images(run_path: str | Path, inputs: Sequence[str | Path], *, output: str | Path | None = None,
                   batch_size: int = 32, skip_corrupt: bool = False, device: str = "cpu") -> Path:
    """Write ``path,predicted,p_<class>...`` rows (probabilities after the run's temperature scaling)
    for every image in ``inputs`` to ``output`` (default ``RUN/predictions.csv``); returns the path.

    Raises:
        FileNotFoundError: bad run folder or inputs. CorruptImageError: unreadable image
            (unless ``skip_corrupt``).
    """
    import torch

    from finetune_kit.calibration import apply_temperature
    from finetune_kit.runs.checkpoint import atomic_write_text
    from finetune_kit.tasks.classification.config import DataConfig
    from finetune_kit.tasks.classification.engine import predict_logits
    from finetune_kit.tasks.classification.evaluate import load_trained
    from finetune_kit.tasks.classification.transforms import CachedImageDataset, ImageCache, normalize_batch

    model, cfg, class_names, temperature, tf = load_trained(run_path, device)
    paths = expand_inputs(inputs, DataConfig().extensions)
    cache = ImageCache(tf.cache_size)
    bad = set(cache.load(paths, skip_corrupt=skip_corrupt))
    paths = [p for p in paths if p not in bad]
    ds = CachedImageDataset(cache, paths, [0] * len(paths), tf.eval)
    logits, _ = predict_logits(model, torch.utils.data.DataLoader(ds, batch_size=batch_size),
                               lambda x: normalize_batch(x, tf.mean, tf.std), device=torch.device(device))
    probs = apply_temperature(logits, temperature) if len(paths) else np.zeros((0, len(class_names)))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "predicted"] + [f"p_{c}" for c in class_names])
    for p, row in zip(paths, probs):
        w.writerow([p, class_names[int(row.argmax())]] + [f"{v:.6f}" for v in row])
    for p in sorted(bad):
        w.writerow([p, "CORRUPT"] + [""] * len(class_names))
    out = Path(output) if output else Path(run_path) / "predictions.csv"
    return atomic_write_text(buf.getvalue(), out)
