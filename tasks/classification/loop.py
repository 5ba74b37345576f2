"""Step 2 of a classification run: restore a resumed run, then the epochs.

Per epoch (:func:`fit_one_epoch`): reseed every RNG from ``(seed, epoch)`` (sampler order,
augmentation, mixup, dropout), ``strategy.on_epoch_start``, ``strategy.train_mode`` (frozen
BatchNorm stays in eval), one epoch of AdamW steps under the warm-up + cosine schedule,
:func:`validate`, then ``strategy.on_validation_end`` (plateau unfreezing). :func:`end_epoch`
logs the record, steps early stopping and writes the ``last`` and (when the monitored metric
improves) ``best`` checkpoints atomically; a run resumed by :func:`restore` from ``last.pt``
therefore repeats exactly what an uninterrupted run would have done.

Epochs are counted from 1 wherever a person reads them: the console line, the ``epoch`` of
``metrics.jsonl`` records, checkpoint files (``epoch_0001.pt`` holds the first epoch; its
``"epoch"`` is the number of completed epochs), ``best_epoch`` and the unfreeze events logged
(:meth:`~finetune_kit.strategy.UnfreezeEvent.record`). The loop's own index, passed to the
strategy hooks and the seeds, is 0-based (``epoch`` index ``i`` is epoch ``i + 1``).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.nn.modules.batchnorm import _BatchNorm

from finetune_kit.distributed import dist_info, gather_shards, reduce_epoch_stats, shard_indices
from finetune_kit.runs.checkpoint import load_resume_checkpoint
from finetune_kit.seeding import rng_state, seed_everything, set_rng_state
from finetune_kit.tasks.classification.engine import (
    NonFiniteLossError,
    predict_logits,
    softmax,
    train_one_epoch,
    val_loss,
)
from finetune_kit.tasks.classification.feature_cache import extract_features, head_forward
from finetune_kit.tasks.classification.forgetting_run import epoch_terms
from finetune_kit.tasks.classification.imbalance import balanced_sampler
from finetune_kit.tasks.classification.memory import PeakMemory
from finetune_kit.tasks.classification.metrics import classification_metrics
from finetune_kit.tasks.classification.multilabel_metrics import multilabel_validation
from finetune_kit.tasks.classification.setup import TrainingRun, epoch_seed, image_loader
from finetune_kit.tasks.classification.transforms import normalize_batch

__all__ = ["restore", "fit_one_epoch", "validate", "predict_sharded", "end_epoch", "train_epochs", "prepare_inputs",
           "validation_record"]


def _identity(x):
    return x


def prepare_inputs(state: TrainingRun) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function that turns a batch of uint8 images (N, C, H, W) into the model's normalised float input."""
    tf = state.data.tf
    return lambda x: normalize_batch(x, tf.mean, tf.std)


def _set_bn_eval(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.eval()


def restore(state: TrainingRun) -> int:
    """Load ``RUN/checkpoints/last.pt`` into the run: model, optimizer, strategy, AMP scaler, EMA,
    early stopping, RNG state, skipped files and feature-extraction time; drop ``metrics.jsonl``
    records from the resumed epoch on.

    Returns:
        The epoch to continue at (also ``state.start_epoch``).

    Raises:
        FileNotFoundError: no ``last.pt``; ValueError: the checkpoint is of another strategy.
    """

    ck, _, note = load_resume_checkpoint(state.run.checkpoints)  # last.pt, else the newest loadable epoch file
    if note:
        state.console.print(note)
    state.model.load_state_dict(ck["model"])
    state.opt.optimizer.load_state_dict(ck["optimizer"])
    state.strategy.load_state_dict(ck["strategy"])
    state.opt.scaler.load_state_dict(ck["scaler"])
    if state.ema is not None and ck.get("ema") is not None:
        state.ema.module.load_state_dict(ck["ema"])
    if state.opt.early is not None and ck.get("early"):
        state.opt.early.load_state_dict(ck["early"])
    set_rng_state(ck["rng"])
    state.data.skipped = list(ck.get("skipped", state.data.skipped))
    state.feature_s = float(ck.get("feature_s", 0.0))
    # ck["epoch"]: the last completed epoch, counted from 1 (= the 0-based index of the next one);
    # checkpoints written before the 1-based convention (no "epoch_base") count from 0
    done = int(ck["epoch"]) + (0 if ck.get("epoch_base", 0) == 1 else 1)
    state.start_epoch, state.global_step = done, int(ck["global_step"])
    state.run.truncate_history(done + 1)
    state.console.print(f"resuming {state.run.path} at epoch {done + 1}")
    return state.start_epoch


def cache_features(state: TrainingRun) -> bool:
    """Pass the train and validation images once through the frozen backbone into
    ``state.features["train"|"val"]`` (``(N, D)`` features, ``(N,)`` labels), unless already there.

    Returns:
        True when the features were extracted by this call (time added to ``state.feature_s``).
    """

    if "train" in state.features:
        return False
    t0 = time.perf_counter()
    d = state.data
    for name, part in (("train", d.train), ("val", d.val)):
        state.features[name] = extract_features(state.model, image_loader(state, part, d.tf.eval),
                                                prepare_inputs(state), state.device, state.amp.autocast)
    state.feature_s += time.perf_counter() - t0
    return True


def _cached_epoch(state: TrainingRun) -> bool:
    """Whether this epoch trains only the head on cached features (extracted on first use)."""
    head_names = {g.name for g in state.opt.groups.head}
    if not (state.use_feature_cache and head_names and set(state.strategy.trainable) <= head_names):
        return False
    if cache_features(state):
        d = state.data
        state.console.print(f"feature cache: {len(d.train) + len(d.val)} images through the frozen backbone once "
                            f"({state.feature_s:.1f} s); the head trains on cached features while only it trains")
    return True


def _train_batches(state: TrainingRun, epoch: int, use_cache: bool):
    if use_cache:
        g = torch.Generator().manual_seed(epoch_seed(state.cfg.runtime.seed, epoch))
        ds = torch.utils.data.TensorDataset(*state.features["train"])
        if state.cfg.classes.sampler == "balanced":  # --sampler balanced on cached features too
            sampler = balanced_sampler(state.features["train"][1].numpy(), epoch_seed(state.cfg.runtime.seed, epoch))
            return torch.utils.data.DataLoader(ds, batch_size=state.cfg.optim.batch_size, sampler=sampler)
        return torch.utils.data.DataLoader(ds, batch_size=state.cfg.optim.batch_size, shuffle=True, generator=g)
    return image_loader(state, state.data.train, state.data.tf.train, epoch=epoch, drop_last=state.opt.mixup is not None)


def validate(state: TrainingRun, use_cache: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Validation logits ``(N, C)`` and labels ``(N,)`` of the evaluated module (EMA with ``--ema``)
    in eval mode; on cached features when ``use_cache`` (they must have been extracted)."""

    mod = state.eval_model
    mod.eval()
    if use_cache:
        vb = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*state.features["val"]), batch_size=256)
        return _finite(state, predict_logits(lambda f: head_forward(mod, f), vb, _identity, state.amp, state.device))
    return _finite(state, predict_sharded(state, mod, state.data.val))


def _finite(state: TrainingRun, out: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stop with the step when the weights diverged (NaN/inf logits) before this epoch is checkpointed."""

    if not np.isfinite(out[0]).all():
        raise NonFiniteLossError(f"validation logits are NaN/inf after step {state.global_step} (the weights "
                                 "diverged): lower --learning_rate or keep --grad_clip on; the last good checkpoint "
                                 "is kept")
    return out


def predict_sharded(state: TrainingRun, mod: torch.nn.Module, samples: list) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(N, C)`` and labels ``(N,)`` of ``samples`` in order (eval transform); under DDP each
    rank predicts its share (:func:`~finetune_kit.distributed.shard_indices`) and every rank gets all
    of them (:func:`~finetune_kit.distributed.gather_shards`), so metrics equal one process's."""

    part = [samples[i] for i in shard_indices(len(samples))]
    logits, labels = predict_logits(mod, image_loader(state, part, state.data.tf.eval), prepare_inputs(state),
                                    state.amp, state.device)
    if len(part) == 0:
        logits = logits.reshape(0, len(state.data.images.class_names))
    return gather_shards(logits, len(samples)), gather_shards(labels, len(samples))


def fit_one_epoch(state: TrainingRun, epoch: int, on_batch: Callable[[], None] | None = None) -> dict:
    """Train the epoch of 0-based index ``epoch`` and validate; the strategy's hooks run around it
    (they take the 0-based index; the record is counted from 1, see the module docstring).

    Writes nothing: :func:`end_epoch` logs and checkpoints the returned record.

    Returns:
        The epoch's record: ``epoch`` (counted from 1: ``epoch + 1``), ``train_loss``, ``val_loss``, ``val_auroc``, ``val_accuracy``,
        ``val_balanced_accuracy``, ``val_ece``, ``lr``, ``trainable_params``, ``trainable_fraction``,
        ``epoch_time_s``, ``train_images_per_s``, ``global_step``, ``feature_cache`` and ``unfrozen``
        (the strategy's unfreeze events of this epoch, as :meth:`UnfreezeEvent.record` dicts: their
        ``epoch`` is the first epoch, counted from 1, in which the groups train).

    Raises:
        NonFiniteLossError: the training loss became NaN/inf.
    """

    cfg, model, strategy, opt = state.cfg, state.model, state.strategy, state.opt
    rank = dist_info().rank  # per-rank dropout/augmentation seeds; rank 0 = one process
    seed_everything(epoch_seed(cfg.runtime.seed, epoch) + rank)
    if state.data.tf.random_train:
        state.data.tf.train.set_random_seed(epoch_seed(cfg.runtime.seed, epoch) + rank)
    events = list(strategy.on_epoch_start(epoch, opt.optimizer))
    for ev in events:  # said before the epoch it applies to
        state.console.print(f"epoch {epoch + 1}/{cfg.epochs}: unfroze {', '.join(ev.groups)} "
                            f"({ev.trainable_params:,} trainable parameters from this epoch)")
    strategy.train_mode(model)
    if state.bn_frozen:
        _set_bn_eval(model)
    trainable = strategy.trainable_params()
    use_cache = _cached_epoch(state)
    forward = state.ddp.model() if state.ddp is not None else model  # DDP: re-wrapped when the trainable set changed
    stats, state.global_step = train_one_epoch(
        forward=(lambda f: head_forward(model, f)) if use_cache else forward, batches=_train_batches(state, epoch, use_cache),
        prepare=_identity if use_cache else prepare_inputs(state), criterion=opt.criterion, optimizer=opt.optimizer,
        schedule=opt.schedule, global_step=state.global_step, amp=state.amp, scaler=opt.scaler,
        grad_clip=cfg.optim.grad_clip, mixup=opt.mixup, ema=state.ema, ema_model=model, device=state.device,
        on_batch=on_batch, accum_steps=cfg.optim.accum_steps, no_sync=getattr(forward, "no_sync", None))
    stats = reduce_epoch_stats(stats)  # DDP: mean loss and images/s over every rank's images
    vl, vy = validate(state, use_cache)
    record = {"epoch": epoch + 1, "train_loss": stats.loss, **validation_record(vl, vy),
              "lr": max(g["lr"] for g in opt.optimizer.param_groups),
              "trainable_params": trainable, "trainable_fraction": trainable / state.total_params,
              "epoch_time_s": stats.seconds, "train_images_per_s": stats.images_per_s,
              "global_step": state.global_step, "feature_cache": use_cache}
    record.update(epoch_terms(state))  # L2-SP terms, with forgetting.l2_sp
    events += strategy.on_validation_end(epoch, record[opt.monitor], opt.optimizer)
    record["unfrozen"] = [e.record() for e in events]
    return record


def validation_record(logits: np.ndarray, labels: np.ndarray) -> dict:
    """``val_loss``, ``val_auroc``, ``val_accuracy``, ``val_balanced_accuracy``, ``val_ece`` of validation
    logits ``(N, C)`` and labels ``(N,)``, or multi-label targets ``(N, L)`` (graded entries only)."""
    if labels.ndim == 2:
        return multilabel_validation(logits, labels)
    vm = classification_metrics(labels, softmax(logits), logits)
    return {"val_loss": val_loss(logits, labels), "val_auroc": vm["auroc"], "val_accuracy": vm["accuracy"],
            "val_balanced_accuracy": vm["balanced_accuracy"], "val_ece": vm["ece"]}


def end_epoch(state: TrainingRun, record: dict) -> None:
    """Log ``record`` (``metrics.jsonl``, wandb), step early stopping, then write the checkpoints
    (``last``; ``best`` when the monitored metric improved; a NaN metric is never the best) and
    print the epoch's line. Early stopping steps first, so a resumed run has this epoch's patience."""

    epoch, opt, cfg = record["epoch"], state.opt, state.cfg  # counted from 1
    metric = record[opt.monitor]
    state.logger.log(record, step=epoch)
    if opt.early is not None:
        opt.early.step(metric, epoch)
    ema = state.ema
    ck = {"epoch": epoch, "epoch_base": 1, "global_step": state.global_step, "model": state.model.state_dict(),
          "ema": ema.module.state_dict() if ema is not None else None,
          "optimizer": opt.optimizer.state_dict(), "scaler": opt.scaler.state_dict(),
          "scheduler": opt.schedule.state_dict(), "strategy": state.strategy.state_dict(),
          "early": opt.early.state_dict() if opt.early is not None else None, "rng": rng_state(),
          "skipped": state.data.skipped, "feature_s": state.feature_s,
          "class_names": state.data.images.class_names, "config": cfg.model_dump()}
    worst = -math.inf if opt.mode == "max" else math.inf
    if state.run.enabled:  # DDP: rank 0 alone writes checkpoints
        state.checkpoints.save(ck, epoch, metrics={opt.monitor: metric if metric == metric else worst})
    # events of the epoch's start were printed before it; a plateau unfreezes for the next epoch
    ev = "; ".join(f"unfreezes {', '.join(e['groups'])} from epoch {e['epoch']}" for e in record["unfrozen"]
                   if e["epoch"] > epoch)
    state.console.print(f"epoch {epoch}/{cfg.epochs} loss {record['train_loss']:.4f} val_loss "
                        f"{record['val_loss']:.4f} val_auroc {record['val_auroc']:.4f} val_acc "
                        f"{record['val_accuracy']:.3f} {record['train_images_per_s']:.1f} img/s"
                        + (f" | {ev}" if ev else ""))


def train_epochs(state: TrainingRun) -> int | None:
    """Epochs ``state.start_epoch`` .. ``epochs - 1`` (:func:`fit_one_epoch` + :func:`end_epoch`)
    with progress bars, measuring peak memory into ``state.peak_memory``; stops early on
    ``--early_stopping_patience``.

    Returns:
        The epoch (counted from 1) after which ``stop_after_epoch`` stopped the run (to be
        resumed), else None. ``stop_after_epoch`` N stops after the N-th epoch (0 acts as 1).
    """


    cfg, early, epochs = state.cfg, state.opt.early, state.cfg.epochs
    stopped = None
    with PeakMemory(state.device) as mem, Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                                   TimeElapsedColumn(), TimeRemainingColumn(), console=state.console,
                                                   disable=not cfg.runtime.progress, transient=True) as bar:
        ep_task = bar.add_task(f"{cfg.strategy.ft_strategy} epochs", total=epochs, completed=state.start_epoch)
        b_task = bar.add_task("batches", total=state.opt.steps)
        for epoch in range(state.start_epoch, epochs):
            bar.reset(b_task, total=state.opt.steps)
            end_epoch(state, fit_one_epoch(state, epoch, on_batch=lambda: bar.advance(b_task)))
            bar.advance(ep_task)
            stop_after = cfg.runtime.stop_after_epoch
            if stop_after is not None and epoch + 1 >= stop_after and epoch + 1 < epochs:
                stopped = epoch + 1
                break
            if early is not None and early.should_stop:
                state.console.print(f"early stopping: {state.opt.monitor} did not improve for {early.patience} epochs")
                break
        state.peak_memory = (mem.read(), mem.increase_mb)
    return stopped
