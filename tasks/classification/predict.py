"""Inference with a finished run: calibrated class probabilities per image, as CSV."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from finetune_kit.runs.checkpoint import atomic_write_text
from finetune_kit.tasks.classification.class_report import apply_operating_point
from finetune_kit.tasks.classification.config import DataConfig
from finetune_kit.tasks.classification.data import list_images
from finetune_kit.tasks.classification.evaluate import load_calibrator, load_trained, run_logits
from finetune_kit.tasks.classification.multilabel_inference import multilabel_prediction_csv
from finetune_kit.tasks.classification.saliency import explain_images
from finetune_kit.tasks.classification.transforms import CachedImageDataset, ImageCache

__all__ = ["predict_images", "expand_inputs", "ood_line", "operating_point_decisions"]


def expand_inputs(inputs: Sequence[str | Path], extensions: Sequence[str]) -> list[str]:
    """Files as given plus the images inside given folders (recursive, case-insensitive extensions).

    Raises:
        FileNotFoundError: a path that does not exist, or no image found at all (names it).
    """

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
                   batch_size: int = 32, skip_corrupt: bool = False, device: str = "cpu",
                   explain: bool = False) -> Path:
    """Write ``path,predicted,p_<class>...`` rows (probabilities after the run's calibrator) for every
    image in ``inputs`` to ``output`` (default ``RUN/predictions.csv``); returns the path. With the
    run's OOD detector (``RUN/ood.npz``) each row adds ``ood_score`` (squared Mahalanobis distance)
    and ``in_distribution`` (``true``/``false``), and ``predictions.ood.json`` beside the CSV gives
    the fraction flagged. With ``explain``, a Grad-CAM overlay PNG per image of the predicted class goes
    to ``<CSV stem>-explain/`` beside the CSV (:func:`~finetune_kit.tasks.classification.saliency.explain_images`).
    A run trained with ``--operating-point`` adds the ``decision`` column
    (:func:`operating_point_decisions`).

    Raises:
        FileNotFoundError: bad run folder or inputs. CorruptImageError: unreadable image
            (unless ``skip_corrupt``).
    """


    model, cfg, class_names, temperature, tf = load_trained(run_path, device)
    paths = expand_inputs(inputs, DataConfig().extensions)
    cache = ImageCache(tf.cache_size)
    bad = set(cache.load(paths, skip_corrupt=skip_corrupt))
    paths = [p for p in paths if p not in bad]
    ds = CachedImageDataset(cache, paths, [0] * len(paths), tf.eval)
    logits, _, ood = run_logits(run_path, model, torch.utils.data.DataLoader(ds, batch_size=batch_size), tf, device)
    if cfg.data.task == "multilabel":  # one probability and one decision per label
        text = multilabel_prediction_csv(run_path, paths, logits, class_names, sorted(bad), ood)
        return _write(text, run_path, output, paths, ood)
    probs = load_calibrator(run_path, temperature).probs(logits) if len(paths) else np.zeros((0, len(class_names)))
    decisions = operating_point_decisions(run_path, probs, class_names)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "predicted"] + [f"p_{c}" for c in class_names] + (["ood_score", "in_distribution"] if ood else [])
               + (["decision"] if decisions is not None else []))
    for i, (p, row) in enumerate(zip(paths, probs)):
        extra = [f"{ood['ood_score'][i]:.3f}", str(bool(ood["in_distribution"][i])).lower()] if ood else []
        extra += [decisions[i]] if decisions is not None else []
        w.writerow([p, class_names[int(row.argmax())]] + [f"{v:.6f}" for v in row] + extra)
    for p in sorted(bad):
        w.writerow([p, "CORRUPT"] + [""] * (len(class_names) + (2 if ood else 0) + (decisions is not None)))
    path = _write(buf.getvalue(), run_path, output, paths, ood)
    if explain:
        explain_images(model, ds, tf, probs, class_names, path.with_name(f"{path.stem}-explain"))
    return path


def _write(text: str, run_path, output, paths: list[str], ood: dict) -> Path:
    """Write the predictions CSV (default ``RUN/predictions.csv``) and, with OOD, its ``.ood.json``."""
    out = Path(output) if output else Path(run_path) / "predictions.csv"
    path = atomic_write_text(text, out)
    if ood:
        summary = {"n": len(paths), "fraction_flagged": float(np.mean(~ood["in_distribution"])),
                   "threshold": ood["threshold"], "predictions": str(path)}
        atomic_write_text(json.dumps(summary, indent=2), path.with_suffix(".ood.json"))
    return path


def operating_point_decisions(run_path: str | Path, probs: np.ndarray, class_names: Sequence[str]) -> list[str] | None:
    """The ``decision`` column at the run's operating point (``metrics.json`` ``test.operating_point``,
    thresholds chosen on validation): binary, the positive class's name when its probability reaches
    the threshold, else the negative class's; multi-class, the classes whose probability reaches
    their own one-vs-rest threshold, joined by ``;`` (empty: none). None when the run has no
    operating point."""
    m = Path(run_path) / "metrics.json"
    op = (json.loads(m.read_text()).get("test") or {}).get("operating_point") if m.is_file() else None
    if not op:
        return None
    hits = apply_operating_point(probs, class_names, op)
    if len(class_names) == 2:
        return [class_names[1] if h else class_names[0] for h in hits[class_names[1]]]
    return [";".join(c for c in class_names if c in hits and hits[c][i]) for i in range(len(probs))]


def ood_line(summary_json: str | Path) -> str:
    """The one-line console summary of ``predictions.ood.json``: the fraction of images flagged."""
    ood = json.loads(Path(summary_json).read_text())
    return (f"out-of-distribution: {ood['fraction_flagged']:.1%} of {ood['n']} images flagged (in_distribution "
            "false: unlike the training images; do not trust their probabilities)")
