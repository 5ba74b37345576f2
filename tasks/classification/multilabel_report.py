"""Step 3 of a multi-label run (``--task multilabel``): calibrate per label, choose thresholds on
validation, report test metrics with bootstrap intervals, the OOD detector and the reference.

:func:`multilabel_report` replaces :func:`~finetune_kit.tasks.classification.report.report` for
multi-label runs. On the best checkpoint's validation and test logits (``RUN/logits.npz``; targets
``(N, L)`` with NaN = not graded) it fits one temperature per label on validation
(:func:`~finetune_kit.tasks.classification.multilabel_metrics.fit_label_temperatures`), chooses one
threshold per label on the calibrated validation probabilities (Youden's J or
``--operating-point``), and computes the test metrics of
:func:`~finetune_kit.tasks.classification.multilabel_metrics.multilabel_metrics`. ``metrics.json``
keeps ``temperatures`` and ``thresholds`` for ``predict`` and ``evaluate``. With ``--ood`` the
Mahalanobis detector is fitted on the training features with the label combination as its class;
for a head-only strategy, the reference is scikit-learn ``LogisticRegression()`` per label on the
frozen features (:func:`~finetune_kit.tasks.classification.multilabel_probe.ovr_reference`).
"""
from __future__ import annotations

import time

import numpy as np

from finetune_kit.distributed import broadcast_object, is_distributed
from finetune_kit.tasks.classification.feature_cache import extract_features
from finetune_kit.tasks.classification.loop import prepare_inputs
from finetune_kit.tasks.classification.multilabel_data import targets_of
from finetune_kit.tasks.classification.multilabel_loss import masked_bce
from finetune_kit.tasks.classification.multilabel_metrics import (choose_thresholds, fit_label_temperatures,
                                                                  multilabel_metrics, multilabel_summary,
                                                                  multilabel_validation, sigmoid)
from finetune_kit.tasks.classification.multilabel_probe import ovr_reference
from finetune_kit.tasks.classification.ood import OOD_FILE, fit_ood
from finetune_kit.tasks.classification.classes_config import parse_operating_point
from finetune_kit.tasks.classification.report import predict_best
from finetune_kit.tasks.classification.setup import TrainingRun, image_loader

__all__ = ["multilabel_report", "calibrate_and_score"]


def calibrate_and_score(val_logits, val_targets, test_logits, test_targets, label_names, *,
                        operating_point: str | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Per-label temperatures and thresholds fitted on validation, then the test metrics.

    Args:
        val_logits, test_logits: ``(N, L)``. val_targets, test_targets: ``(N, L)``, NaN = not graded.
        operating_point: ``"sensitivity=0.9"``-style rule, or None for Youden's J.

    Returns:
        ``{"temperatures", "thresholds", "operating_point", "calibration", "val", "test"}``.
    """
    temps = fit_label_temperatures(val_logits, val_targets)
    vz, tz = np.asarray(val_logits) / temps, np.asarray(test_logits) / temps
    thresholds = choose_thresholds(val_targets, sigmoid(vz), parse_operating_point(operating_point) if operating_point else None)
    test = multilabel_metrics(test_targets, sigmoid(tz), thresholds, label_names, logits=tz, n_boot=n_boot,
                              seed=seed) if len(test_targets) else {}
    cal = {"method": "temperature per label", "temperatures": temps.tolist(),
           "val_nll": masked_bce(val_logits, val_targets), "val_nll_calibrated": masked_bce(vz, val_targets),
           "test_nll": masked_bce(test_logits, test_targets) if len(test_targets) else None,
           "test_nll_calibrated": masked_bce(tz, test_targets) if len(test_targets) else None}
    return {"temperatures": temps.tolist(), "thresholds": thresholds, "operating_point": operating_point or "youden",
            "calibration": cal, "val": multilabel_validation(vz, val_targets), "test": test}


def _ood_and_reference(state: TrainingRun, test_targets: np.ndarray, names: list[str]) -> dict:
    out: dict = {}
    if "best_val" not in state.features or not (state.cfg.calibration.ood or state.strategy.head_only):
        return out
    if state.strategy.head_only and "train" in state.features:
        ft = state.features["train"][0].numpy()
    else:
        ft = extract_features(state.eval_model, image_loader(state, state.data.train, state.data.tf.eval),
                              prepare_inputs(state), state.device, state.amp.autocast)[0].numpy()
    fv, ftest = state.features["best_val"], state.features["best_test"]
    if state.cfg.calibration.ood:
        det = fit_ood(ft, np.array([s.label for s in state.data.train]), fv)  # class = label combination
        det.save(state.run.path / OOD_FILE)
        flagged = float(np.mean(~det.flags(ftest)[1])) if len(ftest) else float("nan")
        out["ood"] = {"method": "mahalanobis (shared Ledoit-Wolf covariance, label combinations as classes)",
                      "threshold": det.threshold, "quantile": det.quantile, "test_fraction_flagged": flagged}
    if state.strategy.head_only and len(ftest):
        p = ovr_reference(ft, targets_of(state.data.train), ftest)
        m = multilabel_metrics(test_targets, p, [0.5] * len(names), names, seed=state.cfg.runtime.seed)
        out["reference_logreg"] = {"model": "sklearn LogisticRegression() per label on standardised frozen features "
                                            "(graded rows only)",
                                   "test_auroc": m["auroc"], "test_accuracy": m["accuracy"],
                                   "test": {"labels": {k: {"auroc": v["auroc"], "ap": v["ap"]}
                                                       for k, v in m["labels"].items()},
                                            "macro": {"auroc": m["macro"]["auroc"], "ap": m["macro"]["ap"]}}}
    return out


def multilabel_report(state: TrainingRun) -> dict:
    """Calibrate the best epoch per label, choose thresholds on validation, report on test and write
    ``RUN/metrics.json``; prints the test line.

    Returns:
        The content of ``metrics.json``: ``status``, ``task``, ``class_names`` (the label columns),
        ``best_epoch``, ``temperatures``, ``thresholds``, ``operating_point``, ``calibration``,
        ``val``, ``test`` (per label and macro/micro, with ``ci95``), ``ood``, ``reference_logreg``,
        split sizes, times and the config (``resumed: true`` for a resumed run).
    """
    ck, logits = predict_best(state)
    if is_distributed() and not state.run.enabled:  # DDP: rank 0 reports; the others return its result
        return broadcast_object(None)
    cfg, d = state.cfg, state.data
    names = list(d.images.class_names)
    history = state.run.history()
    rep = calibrate_and_score(logits["val_logits"], logits["val_labels"], logits["test_logits"],
                              logits["test_labels"], names, operating_point=cfg.classes.operating_point,
                              seed=cfg.runtime.seed)
    result = {"status": "completed", "task": "multilabel", "run_dir": str(state.run.path),
              "model_name": cfg.model.model_name, "ft_strategy": cfg.strategy.ft_strategy, "class_names": names,
              "best_epoch": int(ck["epoch"]), "epochs_run": len(history), "temperature": None, **rep,
              "loss": cfg.classes.loss, "class_weights": cfg.classes.class_weights or "none", "mixup": "off (multilabel)",
              "n_images": {"train": len(d.train), "val": len(d.val), "test": len(d.test)},
              "n_patients": {k: len({s.group for s in part}) for k, part in
                             (("train", d.train), ("val", d.val), ("test", d.test))},
              "train_time_s": state.feature_s + sum(r.get("epoch_time_s", 0.0) for r in history),
              "wall_time_s": time.perf_counter() - state.t_start, "config": cfg.model_dump()}
    result.update(_ood_and_reference(state, logits["test_labels"], names))
    if state.resume:
        result["resumed"] = True
    state.run.write_json("metrics.json", result)
    if rep["test"]:
        state.console.print(f"[bold]test[/]: {multilabel_summary(rep['test'])}  run folder {state.run.path}")
    return broadcast_object(result) if is_distributed() else result
