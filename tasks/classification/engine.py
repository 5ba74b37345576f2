"""One training epoch and batched inference, shared by the image and feature-cache paths.

The loop body follows the strategy contract of :mod:`finetune_kit.strategy`: the caller
runs ``strategy.on_epoch_start`` and ``train_mode`` before :func:`train_one_epoch`; here
the LR schedule is applied per optimizer step (``schedule.apply(global_step)``) before
each step, so ``lr_scale`` changes made by the strategy act at once.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from finetune_kit.tasks.classification.accumulation import micro_batches, sync_context

__all__ = ["EpochStats", "train_one_epoch", "predict_logits", "NonFiniteLossError", "label_array"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf; the message suggests a lower LR."""


@dataclass
class EpochStats:
    """Mean training loss, images seen, wall seconds and images per second of one epoch."""

    loss: float
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        """Training throughput of the epoch, images per second (NaN for an empty epoch)."""
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def train_one_epoch(*, forward: Callable[[torch.Tensor], torch.Tensor], batches: Iterable, prepare: Callable,
                    criterion: nn.Module, optimizer: torch.optim.Optimizer, schedule, global_step: int,
                    amp, scaler, grad_clip: float | None, mixup=None, ema=None, ema_model: nn.Module | None = None,
                    params: list[torch.Tensor] | None = None, on_batch: Callable[[], None] | None = None,
                    device: torch.device = torch.device("cpu"), accum_steps: int = 1,
                    no_sync: Callable | None = None) -> tuple[EpochStats, int]:
    """Run one epoch of optimizer steps.

    Args:
        forward: inputs ``(B, ...)`` -> logits ``(B, C)`` (the model, or the head on cached features).
        batches: yields ``(x, y)``; ``prepare(x)`` gives the float input.
        criterion: loss on ``(logits, targets)`` (soft targets when ``mixup`` is set).
        schedule: :class:`finetune_kit.schedulers.StepwiseLR`; ``apply(step)`` before each step.
        global_step: optimizer steps done before this epoch.
        amp: :class:`finetune_kit.amp.AmpSettings`; scaler its GradScaler.
        grad_clip: max global L2 norm of the gradients (None: no clipping).
        mixup: a ``timm.data.Mixup`` (needs even batch sizes) or None.
        ema: a ``timm.utils.ModelEmaV3`` updated after each step (with ``ema_model``) or None.
        params: parameters to clip (default: all of the optimizer's).
        accum_steps: micro-batches per optimizer step (:mod:`~finetune_kit.tasks.classification.accumulation`);
            ``global_step`` and the schedule count optimizer steps.
        no_sync: the DDP wrapper's ``no_sync`` (skips the all-reduce on non-final micro-batches).

    Returns:
        ``(EpochStats, global_step after the epoch)``.

    Raises:
        NonFiniteLossError: NaN/inf loss.
    """
    t0 = time.perf_counter()
    total, seen = 0.0, 0
    clip_params = params if params is not None else [p for g in optimizer.param_groups for p in g["params"]]
    for x, y, first, last, group in micro_batches(batches, accum_steps):
        x = prepare(x).to(device, non_blocking=True)
        y = torch.as_tensor(y).to(device)
        target = y
        if mixup is not None:
            x, target = mixup(x, y)
        if first:
            schedule.apply(global_step)
            optimizer.zero_grad(set_to_none=True)
        with sync_context(no_sync, last):
            with amp.autocast():
                logits = forward(x)
                loss = criterion(logits.float(), target)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"training loss is {loss.item()} at step {global_step}: lower "
                                         "--learning_rate or keep --grad_clip on")
            scaler.scale(loss / group).backward()
        total += float(loss.detach()) * len(y)
        seen += len(y)
        if on_batch is not None:
            on_batch()
        if not last:
            continue
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in clip_params if p.grad is not None], grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update(ema_model, step=global_step)
        global_step += 1
    return EpochStats(total / max(seen, 1), seen, time.perf_counter() - t0), global_step


@torch.inference_mode()
def predict_logits(forward: Callable[[torch.Tensor], torch.Tensor], batches: Iterable, prepare: Callable,
                   amp=None, device: torch.device = torch.device("cpu")) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(N, C)`` float32 and labels ``(N,)`` of every batch (caller sets eval mode)."""

    outs, labels = [], []
    for x, y in batches:
        with amp.autocast() if amp is not None else nullcontext():
            outs.append(forward(prepare(x).to(device)).float().cpu())
        labels.append(torch.as_tensor(y))
    if not outs:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return torch.cat(outs).numpy(), label_array(labels)


def label_array(labels: list[torch.Tensor]) -> np.ndarray:
    """Concatenated batch labels: int64 class indices ``(N,)``, or float32 multi-label targets ``(N, L)``."""
    y = torch.cat(labels)
    return y.numpy().astype(np.float32) if y.is_floating_point() else y.numpy().astype(np.int64)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, C)`` logits (float64)."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def val_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Cross-entropy (nats, no smoothing) of ``(N, C)`` logits."""
    if len(labels) == 0:
        return math.nan
    return float(torch.nn.functional.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(labels)))
