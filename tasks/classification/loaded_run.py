"""A finished classification run as a Python object: ``finetune_kit.load_run(path)``.

The notebook user's way to use a run that ``finetune-kit classify`` / ``compare`` (or
:func:`finetune_kit.run_training`) wrote::

    import finetune_kit as fk

    run = fk.load_run("runs/RUN_FOLDER")
    table = run.predict(["new_images/"])          # pandas DataFrame: path, predicted, p_<class>...
    probs = run.predict_tensor(batch)             # (B, C) calibrated probabilities of a tensor batch
    metrics = run.evaluate("external_set/")       # metrics on a labelled folder, the run's label rule

Everything goes through the same code as the ``predict`` and ``evaluate`` commands: the run's
``checkpoints/best.pt`` (EMA weights when the run used EMA, LoRA merged), its calibrator from
``metrics.json`` and its out-of-distribution detector ``ood.npz`` when it has one.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from finetune_kit.calibration import Calibrator
from finetune_kit.device import resolve_auto_device
from finetune_kit.tasks.classification.config import ClassificationConfig, DataConfig
from finetune_kit.tasks.classification.evaluate import evaluate_run, load_calibrator, load_trained, run_logits
from finetune_kit.tasks.classification.predict import expand_inputs
from finetune_kit.tasks.classification.transforms import (
    CachedImageDataset,
    DataTransforms,
    ImageCache,
    normalize_batch,
)

__all__ = ["Run", "load_run"]

#: the label options of a run's data section that ``Run.evaluate`` reuses for new data
_LABEL_RULE = ("layout", "label_regex", "label_preset", "positive_class", "negative_class", "extensions")


@dataclasses.dataclass
class Run:
    """A finished classification run loaded for inference (made by :func:`load_run`).

    Attributes:
        path: the run folder.
        model: the trained timm model, in eval mode, on ``device``.
        config: the run's resolved :class:`ClassificationConfig` (its ``config.json``).
        class_names: class names in label order (``probabilities[:, i]`` is ``class_names[i]``).
        calibrator: the calibrator chosen on validation (identity when none was kept).
        transforms: the run's evaluation transforms (image size, normalisation).
        device: where the model lives (``"cpu"``, ``"cuda"`` ...).
    """

    path: Path
    model: torch.nn.Module
    config: ClassificationConfig
    class_names: list[str]
    calibrator: Calibrator
    transforms: DataTransforms
    device: str

    @property
    def img_size(self) -> int:
        """Side of the square images the model sees, px (``--img-size`` of the run)."""
        return self.transforms.img_size

    def predict(self, images: str | Path | Sequence[str | Path], *, batch_size: int = 32,
                skip_corrupt: bool = False) -> pd.DataFrame:
        """Calibrated class probabilities of image files and/or folders (searched recursively).

        Images are decoded, resized and centre-cropped exactly as the run's test images were.

        Args:
            images: one path or a list of paths (files or folders).
            batch_size: images per forward pass (default 32).
            skip_corrupt: drop unreadable images (listed with ``predicted == "CORRUPT"``) instead of raising.

        Returns:
            One row per image: ``path`` (absolute), ``predicted`` (class name), ``p_<class>`` for every
            class (rows sum to 1); with the run's OOD detector also ``ood_score`` (squared Mahalanobis
            distance of the penultimate features) and ``in_distribution`` (bool).

        Raises:
            FileNotFoundError: a path that does not exist, or no image at all.
            CorruptImageError: an unreadable image (unless ``skip_corrupt``).
        """
        items = [images] if isinstance(images, (str, Path)) else list(images)
        paths = expand_inputs(items, self.config.data.extensions)
        cache = ImageCache(self.transforms.cache_size)
        bad = set(cache.load(paths, skip_corrupt=skip_corrupt))
        paths = [p for p in paths if p not in bad]
        ds = CachedImageDataset(cache, paths, [0] * len(paths), self.transforms.eval)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size)
        logits, _, ood = run_logits(self.path, self.model, loader, self.transforms, self.device)
        probs = self.calibrator.probs(logits) if paths else np.zeros((0, len(self.class_names)))
        table = pd.DataFrame({"path": paths, "predicted": [self.class_names[int(i)] for i in probs.argmax(1)]})
        for i, name in enumerate(self.class_names):
            table[f"p_{name}"] = probs[:, i]
        if ood:
            table["ood_score"] = ood["ood_score"]
            table["in_distribution"] = np.asarray(ood["in_distribution"], bool)
        if bad:
            table = pd.concat([table, pd.DataFrame({"path": sorted(bad), "predicted": "CORRUPT"})], ignore_index=True)
        return table

    @torch.no_grad()
    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities of an image batch already at the model's input size.

        Args:
            x: ``(B, 3, H, W)`` RGB with ``H == W == run.img_size``; float in [0, 1] or uint8 in
                [0, 255]. It is normalised with the model's mean/std, as in training (no resizing:
                for image files use :meth:`predict`, which resizes and crops as the run did).

        Returns:
            ``(B, C)`` float32 probabilities on the CPU, columns in ``class_names`` order.

        Raises:
            ValueError: ``x`` is not ``(B, 3, img_size, img_size)``.
        """
        s = self.img_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s):
            raise ValueError(f"predict_tensor: got shape {tuple(x.shape)}; give (B, 3, {s}, {s}) RGB (the run's "
                             "--img-size), or pass image files to run.predict(...)")
        pixels = x.detach().cpu()
        pixels = pixels.float() if pixels.dtype == torch.uint8 else pixels.float() * 255.0
        batch = normalize_batch(pixels.permute(0, 2, 3, 1), self.transforms.mean, self.transforms.std)
        logits = self.model(batch.to(self.device)).float().cpu().numpy()
        return torch.from_numpy(self.calibrator.probs(logits).astype(np.float32))

    def evaluate(self, data: str | Path, *, name: str = "external", **data_options: Any) -> dict:
        """Metrics of the run on every image of a labelled set, with the run's calibrator.

        The labels are read with the run's own rule (``label_preset``, ``label_regex``, class names,
        layout) unless ``data_options`` overrides it (any :class:`DataConfig` field, e.g.
        ``label_preset=None, layout="imagefolder"``). Writes ``RUN/eval-NAME/`` (``metrics.json``,
        ``roc.png``, ``reliability.png``), like ``finetune-kit evaluate RUN --data DATA``.

        Returns:
            ``{"n_images", "metrics": {"auroc", "accuracy", "ece_calibrated", ...}, "calibration", ...}``.

        Raises:
            DataError / FileNotFoundError: bad data. ValueError: its classes differ from the run's.
        """
        rule = {k: v for k, v in self.config.data.model_dump().items() if k in _LABEL_RULE}
        data_cfg = DataConfig.model_validate({**rule, **data_options, "data": str(data)})
        return evaluate_run(self.path, data_cfg, name=name, device=self.device)


def load_run(path: str | Path, *, device: str = "auto") -> Run:
    """Load a finished classification run folder for inference (``checkpoints/best.pt``, calibrator, OOD).

    Args:
        path: a run folder written by ``finetune-kit classify`` / ``compare`` or
            :func:`finetune_kit.run_training` (its ``result["run_dir"]``).
        device: ``"auto"`` (default: CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...

    Raises:
        FileNotFoundError: not a run folder, or a run without a checkpoint yet (the message says the fix).
    """
    device = resolve_auto_device(device)
    model, cfg, class_names, temperature, tf = load_trained(path, device)
    return Run(Path(path).resolve(), model, cfg, list(class_names), load_calibrator(path, temperature), tf, device)
