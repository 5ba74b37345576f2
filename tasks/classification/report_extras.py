"""Extras of a run's report: the OOD detector on penultimate features and the logistic-regression
reference on the frozen backbone's features (:func:`ood_and_reference`)."""
from __future__ import annotations

import numpy as np

from finetune_kit.tasks.classification.feature_cache import extract_features
from finetune_kit.tasks.classification.linear_probe import logistic_reference
from finetune_kit.tasks.classification.loop import prepare_inputs
from finetune_kit.tasks.classification.metrics import auroc
from finetune_kit.tasks.classification.ood import OOD_FILE, fit_ood
from finetune_kit.tasks.classification.setup import image_loader

__all__ = ["ood_and_reference"]


def _train_features(state) -> tuple[np.ndarray, np.ndarray]:
    """Training-split features of the evaluated module (best epoch loaded): the cache when the
    backbone never trained, else one eval-mode pass; under DDP the features every rank gathered
    (:func:`~finetune_kit.tasks.classification.report.predict_best`)."""

    if "best_train" in state.features:
        return state.features["best_train"]
    if state.strategy.head_only and "train" in state.features:
        f, y = state.features["train"]
    else:
        f, y = extract_features(state.eval_model, image_loader(state, state.data.train, state.data.tf.eval),
                                prepare_inputs(state), state.device, state.amp.autocast)
    return f.numpy(), y.numpy()


def ood_and_reference(state, logits: dict) -> dict:
    """With ``--ood`` (default) and a timm model: fit :class:`~finetune_kit.tasks.classification.ood.MahalanobisOOD`
    on the training features, threshold it on validation, save ``RUN/ood.npz`` and report the test
    fraction flagged. For a head-only strategy (the features are the pretrained backbone's) also the
    reference: scikit-learn ``LogisticRegression()`` defaults on those features, test AUROC/accuracy.

    Returns:
        ``{"ood": {...}}`` and/or ``{"reference_logreg": {...}}`` (empty when neither applies).
    """

    out: dict = {}
    if "best_val" not in state.features or not (state.cfg.calibration.ood or state.strategy.head_only):
        return out
    ft, yt = _train_features(state)
    fv, ftest = state.features["best_val"], state.features["best_test"]
    if state.cfg.calibration.ood:
        det = fit_ood(ft, yt, fv)
        det.save(state.run.path / OOD_FILE)
        flagged = float(np.mean(~det.flags(ftest)[1])) if len(ftest) else float("nan")
        out["ood"] = {"method": "mahalanobis (shared Ledoit-Wolf covariance)", "threshold": det.threshold,
                      "quantile": det.quantile, "test_fraction_flagged": flagged}
        state.console.print(f"OOD detector (Mahalanobis on penultimate features): threshold {det.threshold:.1f} "
                            f"(val {det.quantile:.0%} quantile); {flagged:.1%} of test images flagged")
    if state.strategy.head_only and len(ftest) and len(np.unique(yt)) > 1:
        p = logistic_reference(ft, yt, ftest, class_weight=state.opt.class_weights)
        ty = logits["test_labels"]
        np.savez(state.run.path / "reference_logreg.npz", test_probs=p, test_labels=ty)
        out["reference_logreg"] = {"test_auroc": auroc(ty, p), "test_accuracy": float(np.mean(p.argmax(1) == ty)),
                                   "model": "sklearn LogisticRegression() on standardised frozen features"}
    return out
