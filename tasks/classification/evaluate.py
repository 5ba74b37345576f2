"""Test metrics with temperature scaling, plots, and evaluation of a finished run on any
labelled image set (``finetune-kit evaluate RUN_DIR --data ...``)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from finetune_kit.calibration import Calibrator, choose_calibrator, fit_calibrator
from finetune_kit.runs.checkpoint import load_checkpoint
from finetune_kit.runs.run_dir import RunDir, child_path
from finetune_kit.tasks.classification.bootstrap import bootstrap_auroc_ci, bootstrap_metrics
from finetune_kit.tasks.classification.class_report import class_report
from finetune_kit.tasks.classification.config import ClassificationConfig
from finetune_kit.tasks.classification.data import discover
from finetune_kit.tasks.classification.engine import predict_logits, softmax
from finetune_kit.tasks.classification.evaluation_data import write_per_image_csv
from finetune_kit.tasks.classification.forgetting_run import load_run_weights
from finetune_kit.tasks.classification.foundation_weights import match_pooling
from finetune_kit.tasks.classification.metrics import classification_metrics
from finetune_kit.tasks.classification.model import build_model
from finetune_kit.tasks.classification.operating_point import operating_point_at
from finetune_kit.tasks.classification.multilabel_inference import evaluate_multilabel
from finetune_kit.tasks.classification.ood import OOD_FILE, MahalanobisOOD, predict_with_features
from finetune_kit.tasks.classification.plots import dataset_label, plot_reliability, plot_roc, plot_training_curves
from finetune_kit.tasks.classification.saliency import write_case_grid
from finetune_kit.tasks.classification.transforms import (
    CachedImageDataset,
    ImageCache,
    build_transforms,
    normalize_batch,
)

__all__ = ["calibrated_report", "evaluate_run", "load_trained", "load_calibrator", "run_logits"]


def calibrated_report(out_dir: Path, *, val_logits: np.ndarray, val_labels: np.ndarray, test_logits: np.ndarray,
                      test_labels: np.ndarray, history: Sequence[Mapping] = (), temperature: float | None = None,
                      prefix: str = "", class_names: Sequence[str] | None = None, run_name: str = "",
                      dataset: str = "", n_boot: int = 1000, seed: int = 0, calibration: str = "auto",
                      calibrator=None, split: str = "test", ordinal_classes: str | None = None,
                      operating_point: str | None = None) -> dict:
    """Fit the calibrator on the validation logits ``(Nv, C)`` (``calibration``: ``auto`` = chosen
    on validation by :func:`finetune_kit.calibration.choose_calibrator`, or one method; a given
    ``calibrator`` or ``temperature`` is used as it is), compute test metrics before/after it, and write ``roc.png``, ``reliability.png`` and
    (with ``history``) ``training_curves.png`` into ``out_dir``.

    The test AUROC gets a 95 % confidence interval, ``auroc_ci95 = [low, high]`` (None when a
    class is missing), from ``n_boot`` (default 1000) stratified bootstrap resamples seeded with
    ``seed`` (:func:`~finetune_kit.tasks.classification.bootstrap.bootstrap_auroc_ci`); the ROC
    legend shows it with the class names (``class_names``) and counts. ``run_name`` and
    ``dataset`` title the training curves; ``split`` names the evaluated set in the ROC title
    (default ``test``; ``evaluate`` gives the data set's name).

    ECE before and after calibration get 95 % bootstrap intervals too (``ece_ci95``,
    ``ece_calibrated_ci95``, same resamples).

    The class-level report on the calibrated probabilities
    (:func:`~finetune_kit.tasks.classification.class_report.class_report`: ``per_class`` for K > 2,
    ``ordinal_kappa`` with ``ordinal_classes``, ``operating_point`` with ``operating_point``
    chosen on validation, ``confusion.png``) goes into ``test``.

    Returns:
        ``{"temperature" (1.0 unless temperature scaling was kept), "calibration" (method, params,
        reason, candidates), "val": {...}, "test": {... , "auroc_ci95", "ece_calibrated",
        "nll_calibrated", "ece_ci95", "ece_calibrated_ci95"}}``; ``test`` is empty without test images.
    """


    if calibrator is None and temperature is not None:
        calibrator = Calibrator("temperature", {"T": float(temperature)})
    if calibrator is None:
        if not len(val_labels) or calibration == "none":
            calibrator = Calibrator()
        elif calibration == "auto":
            calibrator = choose_calibrator(val_logits, val_labels, seed=seed)
        else:
            calibrator = fit_calibrator(calibration, val_logits, val_labels)
    temperature = calibrator.temperature
    out: dict = {"temperature": float(temperature), "calibration": calibrator.to_dict()}
    if len(val_labels):
        out["val"] = classification_metrics(val_labels, softmax(val_logits), val_logits)
        out["val"]["nll_calibrated"] = classification_metrics(val_labels, calibrator.probs(val_logits))["nll"]
    out["test"] = {}
    if len(test_labels):
        before = softmax(test_logits)
        after = calibrator.probs(test_logits)
        test = classification_metrics(test_labels, before, test_logits)
        cal = classification_metrics(test_labels, after)
        test["ece_calibrated"] = cal["ece"]
        test["nll_calibrated"] = cal["nll"]
        test["ece_ci95"] = bootstrap_metrics(test_labels, before, metrics=("ece",), n_boot=n_boot, seed=seed)["ece"]["ci95"]
        test["ece_calibrated_ci95"] = bootstrap_metrics(test_labels, after, metrics=("ece",), n_boot=n_boot,
                                                        seed=seed)["ece"]["ci95"]
        ci = bootstrap_auroc_ci(test_labels, after, n_boot=n_boot, seed=seed)
        test["auroc_ci95"] = list(ci) if ci else None
        test.update(class_report(out_dir, val_labels=val_labels, val_probs=calibrator.probs(val_logits) if len(val_labels)
                                 else np.zeros((0, after.shape[1])), test_labels=test_labels, test_probs=after,
                                 class_names=class_names or [str(i) for i in range(after.shape[1])],
                                 ordinal_classes=ordinal_classes, operating_point=operating_point, n_boot=n_boot,
                                 seed=seed, prefix=prefix))
        out["test"] = test
        roc_ci = {1: ci} if after.shape[1] == 2 else None
        plot_roc(test_labels, after, out_dir / f"{prefix}roc.png", class_names=class_names, ci=roc_ci,
                 title=f"ROC ({split})" + "".join(f" - {t}" for t in (run_name, dataset) if t and t != split))
        plot_reliability(test_labels, before, after, out_dir / f"{prefix}reliability.png", temperature,
                         class_names=class_names)
    if history:
        plot_training_curves(history, out_dir / f"{prefix}training_curves.png", run_name=run_name, dataset=dataset)
    return out


def load_trained(run_path: str | Path, device: str = "cpu"):
    """Load a finished run: ``(model in eval mode, config, class_names, temperature, transforms)``.

    Uses ``RUN/checkpoints/best.pt`` (EMA weights when the run used EMA) and the temperature
    from ``RUN/metrics.json``.

    Raises:
        FileNotFoundError: not a finished run folder (names the missing file and the fix).
    """


    run = RunDir(run_path)
    if not (run.path / "config.json").is_file():
        raise FileNotFoundError(f"{run.path}: no config.json; pass a run folder written by finetune-kit classify")
    best = run.checkpoints / "best.pt"
    if not best.exists():
        raise FileNotFoundError(f"{best} not found: the run has no checkpoint yet; finish it with --resume {run.path}")
    cfg = ClassificationConfig.model_validate(run.read_json("config.json"))
    ck = load_checkpoint(best)
    class_names = ck["class_names"]
    model, _ = build_model(cfg.model.model_name, len(class_names), pretrained=False, drop_rate=cfg.model.drop_rate,
                           img_size=cfg.transforms.img_size)
    weights = ck["ema"] if ck.get("ema") is not None else ck["model"]
    model = load_run_weights(match_pooling(model, weights), cfg, weights)  # RETFound fc_norm pooling; LoRA: merged
    model.to(device).eval()
    temperature = 1.0
    if (run.path / "metrics.json").is_file():
        temperature = float(run.read_json("metrics.json").get("temperature") or 1.0)
    tf = build_transforms(model, cfg.transforms.img_size, augment="none")
    return model, cfg, class_names, temperature, tf


def load_calibrator(run_path: str | Path, temperature: float = 1.0):
    """The run's fitted :class:`~finetune_kit.calibration.Calibrator` (``metrics.json`` ``calibration``;
    runs written before it: temperature scaling by ``temperature``)."""


    m = Path(run_path) / "metrics.json"
    d = json.loads(m.read_text()).get("calibration") if m.is_file() else None
    return Calibrator.from_dict(d, temperature)


def run_logits(run_path: str | Path, model, loader, tf, device: str = "cpu") -> tuple[np.ndarray, np.ndarray, dict]:
    """Logits ``(N, C)`` and labels ``(N,)`` of ``loader`` through the run's model, plus the OOD
    columns ``{"ood_score" (N,), "in_distribution" (N,) bool}`` when the run has ``ood.npz`` (else {})."""


    prepare = lambda x: normalize_batch(x, tf.mean, tf.std)  # noqa: E731
    det = MahalanobisOOD.load(Path(run_path) / OOD_FILE)
    if det is None or not callable(getattr(model, "forward_head", None)):
        logits, labels = predict_logits(model, loader, prepare, device=torch.device(device))
        return logits, labels, {}
    logits, feats, labels = predict_with_features(model, loader, prepare, device=torch.device(device))
    if not len(labels):
        return logits, labels, {}
    score, ind = det.flags(feats)
    return logits, labels, {"ood_score": score, "in_distribution": ind, "threshold": det.threshold}


def evaluate_run(run_path: str | Path, data_cfg, *, name: str = "external", batch_size: int = 32,
                 device: str = "cpu") -> dict:
    """Evaluate a finished run on every image of ``data_cfg`` (a :class:`DataConfig`; same label
    options as training) with the run's fitted calibrator (and its operating point's thresholds, when
    it has one); with the run's ``ood.npz``, also each image's
    ``ood_score`` / ``in_distribution`` and the ``fraction_flagged`` (under ``"ood"``). Writes ``RUN/eval-NAME/metrics.json``,
    ``predictions.csv`` (one row per image: path, label, calibrated probabilities, decision, OOD
    columns; :func:`~finetune_kit.tasks.classification.evaluation_data.write_per_image_csv`), ``roc.png``
    (titled by the data set's name), ``reliability.png`` and ``saliency_grid.png`` (Grad-CAM of the most
    confident correct, most confident wrong and borderline images,
    :func:`~finetune_kit.tasks.classification.saliency.write_case_grid`); returns the metrics.
    ``batch_size``: images per forward pass (default 32).

    The data are found and checked before the model loads, so bad data fails at once.

    Raises:
        DataError / CorruptImageError / FileNotFoundError: bad data or run folder.
        ValueError: the data's classes differ from the run's.
    """


    if not (Path(run_path) / "config.json").is_file():
        raise FileNotFoundError(f"{run_path}: no config.json; pass a run folder written by finetune-kit classify")
    if ClassificationConfig.model_validate(RunDir(run_path).read_json("config.json")).data.task == "multilabel":
        # the run's label columns, per-label temperatures and thresholds
        model, cfg, class_names, temperature, tf = load_trained(run_path, device)
        return evaluate_multilabel(run_path, (model, cfg, class_names, tf), data_cfg, logits_of=run_logits, name=name,
                                   batch_size=batch_size, device=device)
    images = discover(data_cfg)
    model, cfg, class_names, temperature, tf = load_trained(run_path, device)
    if images.class_names != class_names:  # same classes up to case/order (Glaucoma/ vs glaucoma): relabel
        index = {c.lower(): i for i, c in enumerate(class_names)}
        if sorted(index) != sorted(c.lower() for c in images.class_names):
            raise ValueError(f"--data classes {images.class_names} differ from the run's {class_names}; relabel the "
                             "data or use matching --positive_class/--negative_class")
        remap = [index[c.lower()] for c in images.class_names]
        images.samples = [dataclasses.replace(s, label=remap[s.label]) for s in images.samples]
    cache = ImageCache(tf.cache_size)
    skipped = set(cache.load([s.path for s in images.samples], skip_corrupt=data_cfg.skip_corrupt))
    samples = [s for s in images.samples if s.path not in skipped]
    ds = CachedImageDataset(cache, [s.path for s in samples], [s.label for s in samples], tf.eval)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    logits, labels, ood = run_logits(run_path, model, loader, tf, device)

    out_dir = child_path(RunDir(run_path).path, name, what="--name", prefix="eval-")  # stays inside the run

    calibrator = load_calibrator(run_path, temperature)
    dataset = dataset_label(data_cfg.data, data_cfg.label_preset)
    rep = calibrated_report(out_dir, val_logits=np.zeros((0, len(class_names))), val_labels=np.zeros(0, int),
                            test_logits=logits, test_labels=labels, calibrator=calibrator,
                            class_names=class_names, dataset=dataset, split=dataset or name,
                            ordinal_classes=cfg.classes.ordinal_classes)
    write_per_image_csv(out_dir / "predictions.csv", [s.path for s in samples], labels, calibrator.probs(logits),
                        class_names, ood)
    op = (RunDir(run_path).read_json("metrics.json").get("test") or {}).get("operating_point") \
        if (RunDir(run_path).path / "metrics.json").is_file() else None
    if op and len(labels):  # the run's thresholds (chosen on its validation set) applied to this set
        rep["test"]["operating_point"] = operating_point_at(op, labels, calibrator.probs(logits), class_names)
    result = {"data": data_cfg.model_dump(), "n_images": len(samples), "skipped_corrupt": len(skipped),
              "temperature": temperature, "calibration": rep["calibration"], "metrics": rep["test"]}
    if ood:
        result["ood"] = {"threshold": ood["threshold"], "fraction_flagged": float(np.mean(~ood["in_distribution"])),
                         "ood_score": [float(v) for v in ood["ood_score"]],
                         "in_distribution": [bool(v) for v in ood["in_distribution"]],
                         "paths": [s.path for s in samples]}
    if len(labels):
        write_case_grid(model, ds, tf, load_calibrator(run_path, temperature).probs(logits), labels, class_names,
                        out_dir / "saliency_grid.png", title=f"Grad-CAM of the predicted class - {name}")
    RunDir(out_dir).write_json("metrics.json", result)
    return result
