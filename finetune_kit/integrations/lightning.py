"""Drive any registered fine-tuning strategy from a PyTorch Lightning ``Trainer``.

Needs the optional extra: ``pip install 'finetune-kit[lightning]'`` (``lightning>=2.2``).
Lightning is imported when this module is; the rest of finetune-kit never imports it.

Usage::

    from finetune_kit.integrations.lightning import StrategyCallback

    callback = StrategyCallback("progressive", unfreeze_schedule="1,2", monitor="val_auroc",
                                lr_schedule=dict(warmup_epochs=0.5, min_lr=1e-6))

    class Module(L.LightningModule):
        def configure_optimizers(self):
            return torch.optim.AdamW(callback.param_groups(self.model, weight_decay=0.05), lr=3e-4)

    L.Trainer(max_epochs=10, callbacks=[callback]).fit(Module(), train_loader, val_loader)

How it differs from Lightning's own ``BackboneFinetuning`` (which adds parameter groups to a live
optimizer when it unfreezes): every optimizer group is made up front by
:meth:`StrategyCallback.param_groups` (one per layer group, see :mod:`finetune_kit.param_groups`),
and unfreezing only switches ``requires_grad`` and each group's ``lr_scale``, exactly as in
finetune-kit's own loops, so the optimizer state and the LR schedule never see a group appear.

Hook order (Lightning 2.x; the hooks below are the callback's):

* ``on_train_start``: checks the optimizer holds the groups of :meth:`param_groups` and builds the
  LR schedule (:func:`finetune_kit.schedulers.build_lr_scheduler`, which honours ``lr_scale``)
  over ``trainer.max_epochs`` x optimizer steps per epoch.
* ``on_train_epoch_start`` (Lightning has already put the module in train mode):
  ``strategy.on_epoch_start(trainer.current_epoch, optimizer)``, then ``strategy.train_mode``
  (``model.train()`` and frozen BatchNorm layers back to eval, so their statistics stay fixed).
* ``on_train_batch_start``: the schedule writes every group's LR for ``trainer.global_step``.
* ``on_validation_end`` (not during the sanity check): reads ``trainer.callback_metrics[monitor]``.
* ``on_train_epoch_end`` (after the epoch's validation): ``strategy.on_validation_end(epoch,
  metric, optimizer)`` with that metric, once per epoch (plateau unfreezing, e.g. ``gradual``).

Epochs: the hooks get Lightning's 0-based ``current_epoch``, finetune-kit's convention for
strategy hooks; :attr:`StrategyCallback.events` and the log lines count epochs from 1
(:meth:`finetune_kit.strategy.UnfreezeEvent.record`).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping

import torch

try:
    import lightning.pytorch as pl
except ImportError as exc:  # the optional extra
    raise ImportError("finetune_kit.integrations.lightning needs PyTorch Lightning: "
                      "pip install 'finetune-kit[lightning]' (lightning>=2.2)") from exc

from finetune_kit.layer_groups import resolve_layer_groups
from finetune_kit.strategy import FineTuneStrategy, get_strategy

__all__ = ["StrategyCallback", "CONSTANT"]

log = logging.getLogger(__name__)

#: The default ``lr_schedule``: the optimizer's LR, constant, times each group's ``lr_scale``.
CONSTANT = {"kind": "constant", "warmup_epochs": 0.0}


class StrategyCallback(pl.Callback):
    """A Lightning callback that runs a finetune-kit strategy (see the module docstring).

    Args:
        strategy: a registered name (``"linear"``, ``"gradual"``, ``"full"``, ``"progressive"``,
            plugins) built with ``**options``, or a :class:`FineTuneStrategy` instance.
        groups_fn: ``model -> LayerGroups``; default :func:`resolve_layer_groups`.
        monitor: the ``trainer.callback_metrics`` key passed to ``strategy.on_validation_end``
            (log it in validation, e.g. ``self.log("val_auroc", ...)``). Default ``"val_auroc"``.
        lr_schedule: keyword arguments of :func:`~finetune_kit.schedulers.build_lr_scheduler`
            (``warmup_epochs``, ``min_lr``, ``kind``...; ``epochs`` defaults to
            ``trainer.max_epochs``). Default :data:`CONSTANT`: the optimizer's LR times each
            group's ``lr_scale``. None leaves the LRs to the user (a scheduler of your own), but
            then ``lr_scale`` (LLRD, warm-up of new groups) is not applied.
            Return no LR scheduler from ``configure_optimizers`` when this is set.
        **options: the strategy's options (only with a name), e.g. ``gradual_patience=1``.

    Raises:
        UnknownStrategyError, StrategyOptionError: unknown name or option (at construction).
        TypeError: options given with a strategy instance.
    """

    def __init__(self, strategy: str | FineTuneStrategy, *, groups_fn: Callable[..., Any] = resolve_layer_groups,
                 monitor: str = "val_auroc", lr_schedule: Mapping[str, Any] | None = CONSTANT, **options: Any) -> None:
        super().__init__()
        if isinstance(strategy, FineTuneStrategy):
            if options:
                raise TypeError(f"options {sorted(options)} given with a strategy instance; pass them when building it")
            self.strategy = strategy
        else:
            self.strategy = get_strategy(strategy, **options)
        self.groups_fn = groups_fn
        self.monitor = monitor
        self.lr_schedule = None if lr_schedule is None else dict(lr_schedule)
        self.schedule = None
        #: unfreeze events as logged (:meth:`UnfreezeEvent.record`: epochs counted from 1)
        self.events: list[dict] = []
        self._metric: dict[int, float] = {}

    # -- what the LightningModule calls ------------------------------------------------
    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The strategy's :meth:`~finetune_kit.strategy.FineTuneStrategy.prepare_model` (``lora``: PEFT
        adapters injected in place); call it on the network in the LightningModule's ``__init__``,
        before :meth:`param_groups`. Returns the model to train."""
        return self.strategy.prepare_model(model)

    def param_groups(self, model: torch.nn.Module, *, weight_decay: float = 0.05, **group_options: Any) -> list[dict]:
        """All optimizer parameter groups of ``model`` (the network, e.g. ``self.model`` of the
        LightningModule) for the optimizer of ``configure_optimizers``, with ``requires_grad`` and
        ``lr_scale`` set for the strategy's first stage. ``group_options`` go to ``groups_fn``
        (e.g. ``preset=``, ``patterns=``). Returns a list of dicts (``params``, ``group_name``,
        ``lr_scale``, ``weight_decay``...)."""
        return self.strategy.build_param_groups(self.groups_fn(model, **group_options), weight_decay=weight_decay)

    # -- Lightning hooks -------------------------------------------------------------------
    def _optimizer(self, trainer: pl.Trainer) -> torch.optim.Optimizer:
        if len(trainer.optimizers) != 1:
            raise RuntimeError(f"StrategyCallback drives one optimizer; configure_optimizers returned "
                               f"{len(trainer.optimizers)}")
        return trainer.optimizers[0]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the optimizer was built from :meth:`param_groups`; build the LR schedule."""
        opt = self._optimizer(trainer)
        if self.strategy.groups is None or not all("group_name" in g for g in opt.param_groups):
            raise RuntimeError("StrategyCallback: build the optimizer in configure_optimizers from "
                               "callback.param_groups(model), e.g. torch.optim.AdamW(callback.param_groups(self.model), "
                               "lr=3e-4)")
        if self.lr_schedule is not None:
            from finetune_kit.schedulers import build_lr_scheduler

            kw = dict(self.lr_schedule)
            epochs = kw.pop("epochs", None) or trainer.max_epochs
            if not epochs or epochs < 1:
                raise ValueError("StrategyCallback: set Trainer(max_epochs=...) or lr_schedule={'epochs': N}")
            steps = max(1, math.ceil(trainer.num_training_batches / max(1, trainer.accumulate_grad_batches)))
            self.schedule = build_lr_scheduler(opt, epochs=int(epochs), steps_per_epoch=steps, **kw)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Scheduled unfreezing for ``trainer.current_epoch`` (0-based), then train mode with
        frozen BatchNorm layers in eval."""
        events = self.strategy.on_epoch_start(trainer.current_epoch, self._optimizer(trainer))
        self.strategy.train_mode(pl_module)
        self._log(events, pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """Write every group's LR (base schedule x ``lr_scale``) for the next optimizer step."""
        if self.schedule is not None:
            self.schedule.apply(trainer.global_step)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Keep the monitored metric of this epoch's validation (not the sanity check's)."""
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(f"StrategyCallback: monitor {self.monitor!r} not in trainer.callback_metrics "
                           f"({', '.join(sorted(trainer.callback_metrics)) or 'none'}); log it in validation")
        self._metric[trainer.current_epoch] = float(value)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Plateau unfreezing: ``strategy.on_validation_end`` with the epoch's metric (skipped for
        an epoch without validation)."""
        epoch = trainer.current_epoch
        if epoch in self._metric:
            events = self.strategy.on_validation_end(epoch, self._metric.pop(epoch), self._optimizer(trainer))
            self._log(events, pl_module)

    def _log(self, events, pl_module: pl.LightningModule) -> None:
        for e in events:
            rec = e.record()
            self.events.append(rec)
            log.info("epoch %d: unfroze %s (%s trainable parameters)", rec["epoch"], ", ".join(rec["groups"]),
                     f"{rec['trainable_params']:,}")
        if events:
            pl_module.log("trainable_params", float(self.strategy.trainable_params()), on_step=False, on_epoch=True)

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The strategy's state, the logged events and the schedule's state (Lightning saves it)."""
        return {"strategy": self.strategy.state_dict(), "events": list(self.events),
                "schedule": self.schedule.state_dict() if self.schedule is not None else None}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the next epoch start re-applies ``requires_grad``/``lr_scale``."""
        self.strategy.load_state_dict(state_dict["strategy"])
        self.events = list(state_dict.get("events", []))
