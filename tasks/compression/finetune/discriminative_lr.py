"""Discriminative LR schedule: a warm-up length per layer group and a shared step decay.

In the spirit of fastai's discriminative learning rates (Howard & Ruder, ULMFiT, 2018): groups
that should move carefully (the context model of a trained HPCM) warm up over more epochs.

For a layer group ``g`` with warm-up ``W_g`` epochs, at (fractional) epoch ``t = step / steps_per_epoch``::

    lr_g(t) = base_lr * lr_scale_g * warm_g(t) * decay_rate ** floor(t / decay_every)
    warm_g(t) = warmup_start + (1 - warmup_start) * min(1, t / W_g)      (1 when W_g = 0)

``lr_scale_g`` is the group's scale as set by the fine-tuning strategy (its LR multiplier times
any strategy factor, and 0 while frozen), so frozen groups get LR 0 and progressive unfreezing's
own warm-up composes with this one. The schedule has the same ``apply(step)`` interface as
:class:`finetune_kit.schedulers.StepwiseLR`, so a loop can use either.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from finetune_kit.keys import KeyMatcher

__all__ = ["DiscriminativeLR", "parse_warmups", "DEFAULT_GROUP_ORDER"]

#: the layer-group order a bare list of warm-ups (``"10,10,20,20,50"``) refers to
DEFAULT_GROUP_ORDER = ("g_a", "g_s", "h_a", "h_s", "context")


def parse_warmups(spec: str | Sequence[int] | Mapping[str, int] | None,
                  order: Sequence[str] = DEFAULT_GROUP_ORDER) -> dict[str, int]:
    """``"10,10,20,20,50"`` (in ``order``: g_a, g_s, h_a, h_s, context), ``"g_a:10,context:50"`` or a
    dict -> ``{group key: warm-up epochs}``.

    Raises:
        ValueError: more values than ``order`` names, a negative or non-integer value.
    """
    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping):
        items = {str(k): v for k, v in spec.items()}
    elif isinstance(spec, str) and ":" in spec:
        items = dict(part.strip().rsplit(":", 1) for part in spec.split(",") if part.strip())
    else:
        values = [v for v in (spec.split(",") if isinstance(spec, str) else spec) if str(v).strip()]
        if len(values) > len(order):
            raise ValueError(f"warm-up list {spec!r} has {len(values)} values for {len(order)} groups "
                             f"({', '.join(order)}): drop values or write 'group:epochs' pairs")
        items = dict(zip(order, values))
    out = {}
    for k, v in items.items():
        try:
            n = int(str(v).strip())
        except ValueError:
            raise ValueError(f"warm-up of {k!r} is {v!r}: give whole epochs, e.g. '10,10,20,20,50'") from None
        if n < 0:
            raise ValueError(f"warm-up of {k!r} is {n}: must be >= 0 epochs")
        out[k.strip()] = n
    return out


class DiscriminativeLR:
    """Per-group warm-up plus step decay, written into the optimizer's groups each step.

    Args:
        optimizer: groups carry ``group_name`` and ``lr_scale`` (from ``build_param_groups``).
        base_lr: peak LR before ``lr_scale`` (e.g. ``--learning-rate 1e-5``).
        steps_per_epoch: optimizer steps per epoch (>= 1).
        warmups: per-group warm-up epochs (see :func:`parse_warmups`); groups without an entry
            warm up over ``default_warmup`` epochs. Keys match group names as in
            :mod:`finetune_kit.keys` (module prefix or ``re:REGEX``, longest wins).
        decay_rate: factor applied every ``decay_every`` epochs (1.0 = no decay). Default 0.5.
        decay_every: epochs between decays (>= 1). Default 100.
        warmup_start: LR fraction at the start of a warm-up (0..1). Default 0.1.
        default_warmup: warm-up epochs of groups not in ``warmups``. Default 0.

    Raises:
        ValueError: bad ``steps_per_epoch``, ``decay_rate`` outside (0, 1], ``decay_every`` < 1,
            ``warmup_start`` outside [0, 1], a malformed ``re:`` key in ``warmups``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, base_lr: float, steps_per_epoch: int,
                 warmups: str | Sequence[int] | Mapping[str, int] | None = "10,10,20,20,50",
                 decay_rate: float = 0.5, decay_every: int = 100, warmup_start: float = 0.1,
                 default_warmup: int = 0) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch={steps_per_epoch}: must be >= 1")
        if not 0 < decay_rate <= 1:
            raise ValueError(f"decay_rate={decay_rate}: must be in (0, 1] (1 disables the decay)")
        if decay_every < 1:
            raise ValueError(f"decay_every={decay_every}: must be >= 1 epoch")
        if not 0 <= warmup_start <= 1:
            raise ValueError(f"warmup_start={warmup_start}: must be in [0, 1]")
        self.optimizer, self.base_lr, self.steps_per_epoch = optimizer, float(base_lr), int(steps_per_epoch)
        self.warmups = parse_warmups(warmups)
        self._warmup_keys = KeyMatcher(self.warmups)
        self.decay_rate, self.decay_every = float(decay_rate), int(decay_every)
        self.warmup_start, self.default_warmup = float(warmup_start), int(default_warmup)

    def warmup_of(self, group_name: str) -> int:
        """Warm-up epochs of a layer group (longest matching key, else ``default_warmup``)."""
        key = self._warmup_keys.match(group_name)
        return self.warmups[key] if key else self.default_warmup

    def factor(self, group_name: str, epoch: float) -> float:
        """LR factor (before ``lr_scale``) of ``group_name`` at fractional ``epoch``."""
        w = self.warmup_of(group_name)
        warm = 1.0 if w == 0 else self.warmup_start + (1 - self.warmup_start) * min(1.0, epoch / w)
        return warm * self.decay_rate ** math.floor(epoch / self.decay_every)

    def lr_of(self, group: Mapping, epoch: float) -> float:
        """Absolute LR of an optimizer group at ``epoch`` (0 when its ``lr_scale`` is 0, i.e. frozen)."""
        return self.base_lr * float(group.get("lr_scale", 1.0)) * self.factor(group.get("group_name", ""), epoch)

    def apply(self, step: int) -> None:
        """Write every group's LR for optimizer update number ``step`` (0-based)."""
        epoch = step / self.steps_per_epoch
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_of(g, epoch)

    def state_dict(self) -> dict:
        """Stateless apart from its options (recorded for the checkpoint)."""
        return {"warmups": dict(self.warmups), "decay_rate": self.decay_rate, "decay_every": self.decay_every,
                "warmup_start": self.warmup_start, "base_lr": self.base_lr}

    def load_state_dict(self, state: Mapping) -> None:
        """Nothing to restore (the LR is a pure function of the step); accepted for symmetry."""
