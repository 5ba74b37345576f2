"""One epoch of a compression run: train (:func:`fit_one_epoch`), validate (:func:`validate`),
early-stopping decision (:func:`early_stop_step`).

Training goes through the shared engine's epoch loop
(:func:`~finetune_kit.tasks.compression.engine.train_one_epoch`) with the run's
:class:`~finetune_kit.tasks.compression.objectives.objective.RunObjective`. Balanced steps
re-evaluate the same batch after the model step with the same random quantization noise, so
``delta`` measures the parameter change only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TextIO

from finetune_kit.distributed import broadcast_object, is_main
from finetune_kit.runs.logger import RunLogger
from finetune_kit.tasks.compression.data import set_loader_epoch
from finetune_kit.tasks.compression.engine import evaluate, train_one_epoch
from finetune_kit.tasks.compression.run.build import RunParts

__all__ = ["Progress", "fit_one_epoch", "validate", "early_stop_step", "TRAIN_KEYS"]

#: the training means of an epoch, logged as ``train_<key>``
TRAIN_KEYS = ("loss", "rd", "bpp", "mse")


@dataclass
class Progress:
    """The epoch to start at and the validation histories (R-D cost per epoch, per scale)."""

    start_epoch: int = 0
    history: list = field(default_factory=list)
    scale_hist: dict = field(default_factory=lambda: {"s1": [], "s2": [], "s3": []})


def fit_one_epoch(parts: RunParts, loader: Any, epoch: int, progress: Progress, steps_log: TextIO,
                  logger: RunLogger) -> tuple[dict[str, float], dict[str, float]]:
    """One epoch (``epoch`` 0-based): progressive unfreezing and the gamma of ``epoch`` first, the
    per-step LR before each step, one ``steps.jsonl`` line per step (loss, R-D cost, gradient
    norm, balanced weights, aux loss).

    Returns ``(train means {train_loss, train_rd, train_bpp, train_mse}, gamma log)``.

    Raises:
        FloatingPointError: the loss became NaN/inf (names the epoch and step).
    """
    parts.last_events = []
    for ev in parts.strategy.on_epoch_start(epoch, parts.optimizer):
        parts.last_events.append(ev.record())  # -> metrics.jsonl (epoch_log_values)
        # pinned groups (--freeze_entropy, --freeze_pattern) are not in ev.groups
        print(f"epoch {ev.record()['epoch']}: unfroze {', '.join(ev.groups)} ({ev.trainable_params:,} trainable "
              "parameters)")
    gamma_log = parts.objective.set_epoch_gamma(epoch, progress.history, progress.scale_hist)
    first = epoch * parts.steps_per_epoch

    def on_step(done: int, values: dict) -> None:
        rec = {"epoch": epoch + 1, "step": first + done - 1,
               **{k: float(v) for k, v in values.items() if k not in ("bpp", "mse")}}
        steps_log.write(json.dumps(rec) + "\n")
        logger.log(rec, to_file=False)

    set_loader_epoch(loader, epoch)
    # torchrun: the DDP wrapper, re-made when this epoch's unfreezing changed the trainable set
    model = parts.ddp.model() if parts.ddp is not None else parts.model

    def train_mode(m) -> None:
        m.train()
        parts.strategy.train_mode(parts.model)  # frozen groups' normalisation back to eval

    res = train_one_epoch(model, loader, parts.optimizer, parts.aux_opt, parts.objective,
                          before_step=lambda i: parts.scheduler.apply(first + i), on_step=on_step,
                          train_mode=train_mode, average=TRAIN_KEYS, epoch=epoch)
    steps_log.flush()
    return {f"train_{k}": res[k] for k in TRAIN_KEYS if k in res}, gamma_log


def validate(parts: RunParts, loader: Any, max_batches: int | None, progress: Progress) -> dict[str, float]:
    """The shared :func:`~finetune_kit.tasks.compression.engine.evaluate` with the objective (``rd``,
    ``mse``, ``bpp``, ``psnr`` dB, ``rd_s1`` ...; at most ``max_batches`` batches); appends the R-D
    costs to the histories. Under torchrun the values are rank 0's (summed over the ranks' shards),
    broadcast, so every rank's early-stopping and gamma decisions are rank 0's."""
    va = broadcast_object(evaluate(parts.model, loader, parts.objective, max_batches=max_batches))
    progress.history.append(va["rd"])
    for s in progress.scale_hist:
        if f"rd_{s}" in va:
            progress.scale_hist[s].append(va[f"rd_{s}"])
    return va


def early_stop_step(parts: RunParts, va: dict, epoch: int, record: dict) -> bool:
    """Feed the validation costs to the early stopper (per-scale signals go into ``record``);
    True when training should stop (rank 0's decision, broadcast, under torchrun)."""
    stop = False
    if parts.ses is not None:
        keep = (lambda: {k: v.detach().cpu().clone() for k, v in parts.model.state_dict().items()}) if is_main() else None
        signals = parts.ses.step({s: va[f"rd_{s}"] for s in ("s1", "s2", "s3")}, epoch, state_fn=keep)
        record.update({f"es_{s}": sig for s, sig in signals.items()})
        stop = parts.ses.should_stop
    elif parts.es is not None:
        parts.es.step(va["rd"], epoch)
        stop = parts.es.should_stop
    return bool(broadcast_object(stop))
