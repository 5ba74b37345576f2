"""Step 3 of a classification run: the best epoch, calibrated on validation, reported on test.

:func:`report` reloads the best checkpoint (the last one when no epoch was ever the best),
predicts validation and test logits (``RUN/logits.npz``), fits the temperature on validation
and computes the test metrics and plots (:func:`~finetune_kit.tasks.classification.evaluate.calibrated_report`),
then writes ``RUN/metrics.json``.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from finetune_kit.distributed import broadcast_module, broadcast_object, gather_shards, is_distributed, shard_indices
from finetune_kit.runs.checkpoint import load_checkpoint
from finetune_kit.tasks.classification.class_report import class_lines
from finetune_kit.tasks.classification.config import resolved_bn_stats
from finetune_kit.tasks.classification.engine import predict_logits
from finetune_kit.tasks.classification.evaluate import calibrated_report
from finetune_kit.tasks.classification.forgetting_report import finish_forgetting
from finetune_kit.tasks.classification.forgetting_run import measure_forgetting
from finetune_kit.tasks.classification.loop import predict_sharded, prepare_inputs
from finetune_kit.tasks.classification.ood import predict_with_features
from finetune_kit.tasks.classification.plots import dataset_label
from finetune_kit.tasks.classification.report_extras import ood_and_reference
from finetune_kit.tasks.classification.setup import TrainingRun, image_loader
from finetune_kit.tasks.classification.transforms import normalize_batch
from finetune_kit.tasks.classification.weights_check import constant_outputs_warning, random_init_warning

__all__ = ["report", "predict_best"]


def predict_best(state: TrainingRun) -> tuple[dict, dict[str, np.ndarray]]:
    """Load the best checkpoint into the evaluated module (EMA with ``--ema``) and predict the
    validation and test sets; the logits and labels are also written to ``RUN/logits.npz``.

    Returns:
        ``(checkpoint, {"val_logits", "val_labels", "test_logits", "test_labels"})``.

    Raises:
        FileNotFoundError: the run has no checkpoint.
    """


    model = state.eval_model
    if is_distributed():  # DDP: rank 0 reads the best checkpoint and sends its weights; ranks share the predictions
        ck = load_checkpoint(state.checkpoints.best() or state.checkpoints.last()) if state.run.enabled else None
        if ck is not None:
            model.load_state_dict(ck["ema"] if state.ema is not None else ck["model"])
        broadcast_module(model)
        ck = broadcast_object({k: v for k, v in ck.items() if k in ("epoch", "global_step")} if ck else None)
        model.eval()
        if _has_features(model) and (state.cfg.calibration.ood or state.strategy.head_only):
            # the OOD detector and the logistic reference need features: each rank predicts its share, all gathered
            vl, state.features["best_val"], vy = _sharded_with_features(state, model, state.data.val)
            tl, state.features["best_test"], ty = _sharded_with_features(state, model, state.data.test)
            state.features["best_train"] = _sharded_with_features(state, model, state.data.train)[1:]
        else:
            vl, vy = predict_sharded(state, model, state.data.val)
            tl, ty = predict_sharded(state, model, state.data.test)
        logits = {"val_logits": vl, "val_labels": vy, "test_logits": tl, "test_labels": ty}
        if state.run.enabled:
            np.savez(state.run.path / "logits.npz", **logits)
        return ck, logits
    tf = state.data.tf
    best_path = state.checkpoints.best() or state.checkpoints.last()
    ck = load_checkpoint(best_path)
    model.load_state_dict(ck["ema"] if state.ema is not None else ck["model"])
    model.eval()
    prepare = lambda x: normalize_batch(x, tf.mean, tf.std)  # noqa: E731
    if _has_features(model):

        vl, vf, vy = predict_with_features(model, image_loader(state, state.data.val, tf.eval), prepare, state.amp,
                                           state.device)
        tl, tf_, ty = predict_with_features(model, image_loader(state, state.data.test, tf.eval), prepare, state.amp,
                                            state.device)
        state.features["best_val"], state.features["best_test"] = vf, tf_
    else:
        vl, vy = predict_logits(model, image_loader(state, state.data.val, tf.eval), prepare, state.amp, state.device)
        tl, ty = predict_logits(model, image_loader(state, state.data.test, tf.eval), prepare, state.amp, state.device)
    logits = {"val_logits": vl, "val_labels": vy, "test_logits": tl, "test_labels": ty}
    np.savez(state.run.path / "logits.npz", **logits)
    return ck, logits


def _has_features(model) -> bool:
    """Whether ``model`` gives pooled features (a timm model: ``forward_head`` and ``get_classifier``)."""
    return callable(getattr(model, "forward_head", None)) and callable(getattr(model, "get_classifier", None))


def _sharded_with_features(state: TrainingRun, model, samples: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits ``(N, C)``, features ``(N, D)`` and labels ``(N,)`` of ``samples`` in order; under DDP each rank
    predicts its share (:func:`~finetune_kit.distributed.shard_indices`) and every rank gets all of them."""
    part = [samples[i] for i in shard_indices(len(samples))]
    out = predict_with_features(model, image_loader(state, part, state.data.tf.eval), prepare_inputs(state),
                                state.amp, state.device)
    return tuple(gather_shards(a, len(samples)) for a in out)


def report(state: TrainingRun) -> dict:
    """Calibrate the best epoch on validation, report it on test, write ``RUN/metrics.json``
    (plus ``roc.png``, ``reliability.png``, ``training_curves.png``) and print the test line.

    Returns:
        The content of ``metrics.json`` (``status``, ``best_epoch``, ``temperature``, ``val``,
        ``test`` metrics, split sizes, trainable fractions, feature-cache use, times, memory,
        weights report, unfreeze events, config; ``resumed: true`` for a resumed run).
    """


    ck, logits = predict_best(state)
    if is_distributed() and not state.run.enabled:  # DDP: rank 0 reports; the others return its result
        return broadcast_object(None)
    history = state.run.history()

    cfg = state.cfg
    rep = calibrated_report(state.run.path, history=history, class_names=state.data.images.class_names,
                            run_name=cfg.tag, dataset=dataset_label(cfg.data.data, cfg.data.label_preset),
                            seed=cfg.runtime.seed, calibration=cfg.calibration.calibration,
                            ordinal_classes=cfg.classes.ordinal_classes, operating_point=cfg.classes.operating_point,
                            **logits)
    result = _metrics(state, rep, history, best_epoch=int(ck["epoch"]))

    m = cfg.model
    constant = constant_outputs_warning(logits["val_logits"])
    if constant:  # the random-init warning was printed when the model was built
        state.console.print(f"[bold yellow]{constant}[/]")
    result["warnings"] = [w for w in (random_init_warning(m.model_name, m.pretrained, m.custom_weights_path),
                                      constant) if w]
    result.update(ood_and_reference(state, logits))
    result.update(measure_forgetting(state))
    state.run.write_json("metrics.json", result)
    result = finish_forgetting(state, result)  # external data and WiSE-FT read the written run
    state.logger.summary({f"test_{k}": v for k, v in rep["test"].items() if isinstance(v, float)})
    t = rep["test"]
    if t:
        cal = rep["calibration"]
        how = f"T={rep['temperature']:.3f}" if cal["method"] == "temperature" else cal["method"]
        state.console.print(f"[bold]test[/]: AUROC {t['auroc']:.4f}  accuracy {t['accuracy']:.4f}  ECE {t['ece']:.4f} "
                            f"-> {t['ece_calibrated']:.4f} ({how})  run folder {state.run.path}")
        state.console.print(f"calibration: {cal.get('reason', cal['method'])}")
        for line in class_lines(t):
            state.console.print(line)
    return broadcast_object(result) if is_distributed() else result


def _metrics(state: TrainingRun, rep: dict, history: list[dict], *, best_epoch: int) -> dict:
    """The ``metrics.json`` dict of :func:`report`."""
    cfg, d, strategy = state.cfg, state.data, state.strategy
    peak, peak_increase = state.peak_memory or (None, None)
    mean = lambda key: float(np.mean([r[key] for r in history])) if history else None  # noqa: E731
    result = {
        "status": "completed", "run_dir": str(state.run.path), "model_name": cfg.model.model_name,
        "ft_strategy": cfg.strategy.ft_strategy, "class_names": d.images.class_names, "best_epoch": best_epoch,
        "epochs_run": len(history), "temperature": rep["temperature"], "calibration": rep.get("calibration"),
        "val": rep.get("val", {}), "test": rep["test"],
        "n_images": {"train": len(d.train), "val": len(d.val), "test": len(d.test)},
        "skipped_corrupt": len(d.skipped), "skipped_files": d.skipped,
        "trainable_fraction_final": strategy.trainable_params() / state.total_params,
        "trainable_fraction_mean": mean("trainable_fraction"),
        "total_params": state.total_params,
        "feature_cache": any(r.get("feature_cache") for r in history),
        "feature_cache_epochs": sum(bool(r.get("feature_cache")) for r in history), "feature_cache_s": state.feature_s,
        "train_time_s": state.feature_s + sum(r.get("epoch_time_s", 0.0) for r in history),
        "bn_stats": resolved_bn_stats(cfg), "amp": {"enabled": state.amp.enabled, "notice": state.amp.notice},
        "train_images_per_s_median": float(np.median([r["train_images_per_s"] for r in history])) if history else None,
        "peak_memory_mb": peak, "peak_memory_increase_mb": peak_increase,
        "wall_time_s": time.perf_counter() - state.t_start,
        "weights": dataclasses.asdict(state.weights_report) if state.weights_report else None,
        "unfreeze_events": [e.record() for e in strategy.events], "config": cfg.model_dump(),
    }
    if state.opt.class_weights is not None:
        result["class_weights"] = [float(w) for w in state.opt.class_weights]
    if state.resume:
        result["resumed"] = True
    return result
