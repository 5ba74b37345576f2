"""Exact linear probe: the head solved as L2-regularised logistic regression on cached features.

A linear probe on frozen features is a convex problem. Instead of training the head for a
guessed number of epochs at a guessed learning rate, :func:`fit_linear_probe` solves
(multinomial) logistic regression to convergence with L-BFGS (scikit-learn
``LogisticRegression(solver="lbfgs")``) for each L2 strength ``C`` of a log grid and keeps the one
with the lowest validation NLL (ties: higher validation AUROC), the protocol of Kornblith, Shlens &
Le, "Do Better ImageNet Models Transfer Better?" (CVPR 2019) and Radford et al., CLIP (ICML 2021).
Features are standardised for the solver; the scaling is folded back into the head's weights, so
the result is a plain ``nn.Linear`` ``W x + b`` on the raw pooled features.

:func:`solve_run` is the ``linear`` strategy's whole training in a run (one "epoch" record: the
solve) and :func:`probe_head` the first step of LP-FT (Kumar et al., ICLR 2022) and of
``--probe-init``.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from finetune_kit.tasks.classification.engine import val_loss
from finetune_kit.tasks.classification.loop import cache_features, end_epoch, validation_record
from finetune_kit.tasks.classification.memory import PeakMemory
from finetune_kit.tasks.classification.metrics import auroc
from finetune_kit.tasks.classification.multilabel_loss import masked_bce
from finetune_kit.tasks.classification.multilabel_probe import fit_ovr_probe
from finetune_kit.tasks.classification.probe_result import LinearProbeResult

__all__ = ["LinearProbeResult", "fit_linear_probe", "logistic_reference", "load_into_head", "probe_head",
           "solve_run", "C_GRID"]

#: Inverse L2 strengths tried (scikit-learn ``C``, on standardised features): 1e-4 .. 1e2.
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 13))


def _as_head(clf, mean: np.ndarray, scale: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` on raw features from a classifier fitted on ``(x - mean) / scale``; binary
    ``z = w.x + b`` becomes the two logits ``(-z/2, z/2)`` (same softmax as ``sigmoid(z)``)."""
    w = clf.coef_ / scale
    b = clf.intercept_ - w @ mean
    if n_classes == 2 and w.shape[0] == 1:
        w = np.vstack([-w / 2, w / 2])
        b = np.array([-b[0] / 2, b[0] / 2])
    return w.astype(np.float64), b.astype(np.float64)


def fit_linear_probe(train_x, train_y, val_x, val_y, *, grid=C_GRID, max_iter: int = 2000,
                     n_classes: int | None = None, class_weight=None) -> LinearProbeResult:
    """Solve the linear probe and choose its L2 strength on validation.

    Args:
        train_x, val_x: pooled features ``(N, D)`` (float). train_y, val_y: labels ``(N,)``.
        grid: inverse L2 strengths ``C`` (default :data:`C_GRID`, 1e-4 .. 1e2 on a log grid).
        max_iter: L-BFGS iterations per fit (default 2000; a warning-free convergence on ACRIMA
            takes < 200).
        n_classes: number of classes (default: ``max(label) + 1``).
        class_weight: ``(K,)`` class weights (``--class-weights``) or None: scikit-learn's
            ``class_weight``, and the validation NLL that chooses ``C`` is weighted the same way.

    Returns:
        :class:`LinearProbeResult` (the fit with the lowest validation NLL).

    Raises:
        ValueError: empty or mismatched arrays, or a training split with one class only.
    """


    t0 = time.perf_counter()
    xt, yt = np.asarray(train_x, np.float64), np.asarray(train_y).astype(int)
    xv, yv = np.asarray(val_x, np.float64), np.asarray(val_y).astype(int)
    if xt.ndim != 2 or len(xt) != len(yt) or len(xv) != len(yv) or not len(xt) or not len(xv):
        raise ValueError(f"fit_linear_probe needs features (N, D) with labels (N,) for train and val, got "
                         f"{xt.shape}/{yt.shape} and {xv.shape}/{yv.shape}")
    if len(np.unique(yt)) < 2:
        raise ValueError("fit_linear_probe: the training split has one class only; the probe needs both")
    k = int(n_classes or max(yt.max(), yv.max()) + 1)
    mean, scale = xt.mean(axis=0), xt.std(axis=0)
    scale[scale < 1e-8] = 1.0
    zt, zv = (xt - mean) / scale, (xv - mean) / scale
    cw = None if class_weight is None else {c: float(w) for c, w in enumerate(class_weight)}
    sw = None if class_weight is None else np.asarray(class_weight, np.float64)[yv]
    best, rows = None, []
    for c in grid:
        clf = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter, tol=1e-6, class_weight=cw)
        clf.fit(zt, yt)
        w, b = _as_head(clf, mean, scale, k)
        lv = xv @ w.T + b
        p = torch.softmax(torch.from_numpy(lv), 1).numpy()
        row = {"C": float(c), "val_nll": float(log_loss(yv, p, labels=list(range(k)), sample_weight=sw)),
               "val_auroc": auroc(yv, p)}
        rows.append(row)
        key = (row["val_nll"], -np.nan_to_num(row["val_auroc"]))
        if best is None or key < best[0]:
            best = (key, w, b, row)
    _, w, b, row = best
    return LinearProbeResult(weight=w, bias=b, C=row["C"], val_nll=row["val_nll"], val_auroc=row["val_auroc"],
                             grid=rows, seconds=time.perf_counter() - t0)


def logistic_reference(train_x, train_y, test_x, class_weight=None) -> np.ndarray:
    """The simplest reference: scikit-learn ``LogisticRegression()`` with its defaults (C = 1,
    L-BFGS) on standardised training features, with ``class_weight`` (``(K,)``, the run's
    ``--class-weights``) when given; returns test probabilities ``(N, K)``."""

    cw = None if class_weight is None else {c: float(w) for c, w in enumerate(class_weight)}
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight=cw))
    clf.fit(np.asarray(train_x, np.float64), np.asarray(train_y).astype(int))
    return clf.predict_proba(np.asarray(test_x, np.float64))


def load_into_head(model: torch.nn.Module, result: LinearProbeResult) -> None:
    """Copy the solved ``(W, b)`` into ``model.get_classifier()`` (an ``nn.Linear`` of shape ``(K, D)``).

    Raises:
        ValueError: the head is not a linear layer of that shape.
    """
    head = model.get_classifier()
    if not isinstance(head, torch.nn.Linear) or tuple(head.weight.shape) != result.weight.shape:
        raise ValueError(f"the model's classifier head ({type(head).__name__}) is not an nn.Linear of shape "
                         f"{result.weight.shape}; the exact linear probe needs one (use --no-feature-cache)")
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(result.weight).to(head.weight))
        head.bias.copy_(torch.from_numpy(result.bias).to(head.bias))


def _features(state) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train and validation features of the frozen backbone (extracted once into ``state.features``)."""

    cache_features(state)
    (xt, yt), (xv, yv) = state.features["train"], state.features["val"]
    return xt, yt, xv, yv


def probe_head(state) -> LinearProbeResult:
    """Solve the exact linear probe on the run's frozen-backbone features and load it into the head
    (LP-FT's first step; ``--probe-init``). Prints one line with the chosen ``C``."""
    xt, yt, xv, yv = _features(state)
    if yt.ndim == 2:  # multi-label targets: one-vs-rest on each label's graded rows
        res = fit_ovr_probe(xt.numpy(), yt.numpy(), xv.numpy(), yv.numpy())
    else:
        res = fit_linear_probe(xt.numpy(), yt.numpy(), xv.numpy(), yv.numpy(),
                               n_classes=len(state.data.images.class_names), class_weight=state.opt.class_weights)
    load_into_head(state.model, res)
    if state.ema is not None:
        load_into_head(state.ema.module, res)
    state.console.print(f"linear probe solved (L-BFGS logistic regression): C={res.C:g} val_nll {res.val_nll:.4f} "
                        f"val_auroc {res.val_auroc:.4f} in {res.seconds:.2f} s")
    return res


def solve_run(state) -> None:
    """The ``linear`` strategy's training with the feature cache: :func:`probe_head`, then one record
    (``epoch`` 1, ``solver: "lbfgs"``, the chosen ``C`` and grid) logged and checkpointed through
    :func:`~finetune_kit.tasks.classification.loop.end_epoch`, so the report, ``--resume`` and
    ``analyze`` read it like any epoch. No epochs or learning rate are used."""

    with PeakMemory(state.device) as mem:
        t0 = time.perf_counter()
        res = probe_head(state)
        xt, yt, xv, yv = _features(state)
        tl, vl = res.logits(xt.numpy()).astype(np.float32), res.logits(xv.numpy()).astype(np.float32)
        trainable = state.strategy.trainable_params()
        seconds = time.perf_counter() - t0
        train_loss = masked_bce(tl, yt.numpy()) if yt.ndim == 2 else val_loss(tl, yt.numpy())
        record = {"epoch": 1, "train_loss": train_loss, **validation_record(vl, yv.numpy()), "lr": 0.0,
                  "trainable_params": trainable, "trainable_fraction": trainable / state.total_params,
                  "epoch_time_s": res.seconds, "train_images_per_s": len(yt) / max(seconds, 1e-9),
                  "global_step": 0, "feature_cache": True, "unfrozen": [], "solver": "lbfgs", "C": res.C,
                  "c_grid": res.grid}
        state.global_step = 0
        end_epoch(state, record)
        state.peak_memory = (mem.read(), mem.increase_mb)


def exact_probe_applies(state) -> bool:
    """Whether the run is a linear probe solved exactly: the ``linear`` strategy (head only) with
    the feature cache usable and ``--linear-probe-solver lbfgs`` (the default)."""
    return state.strategy.head_only and state.use_feature_cache and state.cfg.exact_linear_probe
