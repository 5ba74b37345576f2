"""Fine-tuning strategy registry and the hooks a training loop calls.

A strategy decides which layer groups train, and with what LR factor, over the course of
a run. It never owns the loop; the loop calls its hooks::

    groups = resolve_layer_groups(model)
    strategy = get_strategy("gradual", gradual_patience=3)
    optimizer = torch.optim.AdamW(strategy.build_param_groups(groups, weight_decay=0.05), lr=base_lr)
    schedule = build_lr_scheduler(optimizer, epochs=E, steps_per_epoch=S)
    for epoch in range(start_epoch, E):
        events = strategy.on_epoch_start(epoch, optimizer)      # scheduled unfreezing
        strategy.train_mode(model)                              # model.train() + frozen BN in eval
        for step, batch in ...: schedule.apply(global_step); ... optimizer.step()
        events += strategy.on_validation_end(epoch, val_metric, optimizer)  # plateau unfreezing

Epochs: the hooks take the loop's 0-based epoch *index* (``epoch`` 0 is the first epoch), and
:class:`UnfreezeEvent` ``.epoch`` is that index; whatever a person reads (console, logged records,
checkpoint names, figures) counts epochs from 1, so loops log :meth:`UnfreezeEvent.record`
(``epoch + 1``). A scheduled unfreeze at ``N`` (``progressive``'s ``unfreeze_schedule``) happens
at index ``N``: after ``N`` completed epochs, so the groups train from epoch ``N + 1``.

Unfreezing switches ``requires_grad`` and the groups' ``lr_scale``; it never adds groups
to the optimizer. Under DDP, the set of parameters that need gradients is fixed when the
model is wrapped: re-wrap the model after a hook returns events (the loop's job).
Strategy state (stage, patience counters, events) round-trips via ``state_dict``.

Options are the strategy's own: :func:`get_strategy` refuses any option the chosen strategy does
not accept (:class:`StrategyOptionError`, a TypeError naming the accepted ones), and
:func:`strategy_options` lists them, so a caller holding options for several strategies passes
each only its own.
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from typing import Callable, ClassVar, Iterable, Mapping, Sequence

import torch
from torch import nn

from finetune_kit.freezing import freeze_batchnorm_stats
from finetune_kit.layer_groups import LayerGroups
from finetune_kit.param_groups import build_param_groups, parse_multipliers

__all__ = [
    "FineTuneStrategy",
    "UnfreezeEvent",
    "register_strategy",
    "get_strategy",
    "list_strategies",
    "strategy_aliases",
    "strategy_class",
    "UnknownStrategyError",
    "StrategyOptionError",
    "strategy_options",
]


class UnknownStrategyError(KeyError):
    """No strategy registered under that name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it one readable line
        return str(self.args[0])


class StrategyOptionError(TypeError):
    """An option the chosen strategy does not accept; the one-line message names the strategy,
    the option and the options it accepts."""


@dataclass
class UnfreezeEvent:
    """What a hook changed: from epoch index ``epoch`` (0-based, the hooks' convention) the
    ``groups`` train (stage ``stage``), leaving ``trainable_params`` scalar parameters trainable.

    Logs and files meant for people count epochs from 1: write :meth:`record`, whose ``epoch``
    is ``epoch + 1``, the first epoch (counted from 1) in which the groups train.
    """

    epoch: int
    stage: int
    groups: list[str]
    trainable_params: int
    reason: str = ""

    def record(self) -> dict:
        """The event as a dict for logs and files: ``{"epoch": epoch + 1 (counted from 1),
        "stage", "groups", "trainable_params", "reason"}``."""
        return {**asdict(self), "epoch": self.epoch + 1}


class FineTuneStrategy:
    """Base class of strategies. Subclasses set ``name``/``description`` and override
    :meth:`initial_trainable`, and optionally :meth:`lr_factor`, :meth:`on_epoch_start`,
    :meth:`on_validation_end` and the state methods.

    Common options (every strategy):
        lr_mults: per-key LR multipliers, ``"g_a:1.0,context:0.1"`` or a dict (longest key wins).
        weight_decay_map: per-key weight decay overriding the global one.
        freeze_patterns: regexes of parameters that never train.
        layer_stages: unfreezing stages as lists of group keys (override the family default).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: whether a run should solve the head as an exact linear probe before the first epoch (a
    #: classification run does so; it then calls :meth:`on_head_probed`)
    probe_first: ClassVar[bool] = False
    #: the probe is part of the method (``lp_ft``): it runs whatever the run's ``probe_init`` says
    probe_required: ClassVar[bool] = False

    def __init__(self, *, lr_mults: str | Mapping[str, float] | None = None,
                 weight_decay_map: str | Mapping[str, float] | None = None,
                 freeze_patterns: Sequence[str] = (), layer_stages: Sequence[Sequence[str]] | None = None) -> None:
        self.lr_mults = parse_multipliers(lr_mults)
        self.weight_decay_map = parse_multipliers(weight_decay_map)
        self.freeze_patterns = list(freeze_patterns)
        self.layer_stages = [list(s) for s in layer_stages] if layer_stages else None
        self.groups: LayerGroups | None = None
        self.trainable: set[str] = set()
        self.events: list[UnfreezeEvent] = []

    # -- what subclasses decide --------------------------------------------------------
    def initial_trainable(self, groups: LayerGroups) -> Iterable[str]:
        """Names of the layer groups trainable at the start."""
        raise NotImplementedError

    def lr_factor(self, group_name: str, epoch: int) -> float:
        """Extra LR factor of a trainable group at ``epoch`` (LLRD, warm-up). Default 1."""
        return 1.0

    def on_epoch_start(self, epoch: int, optimizer: torch.optim.Optimizer) -> list[UnfreezeEvent]:
        """Called before each epoch (0-based). Returns what it unfroze (may be empty)."""
        self.apply(optimizer, epoch)
        return []

    def on_validation_end(self, epoch: int, metric: float, optimizer: torch.optim.Optimizer) -> list[UnfreezeEvent]:
        """Called after validation with the monitored metric. Returns what it unfroze."""
        return []

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Called once by the run on the freshly built model, before the layer groups and the optimizer
        are made; returns the model to train. Default: ``model`` unchanged (``lora`` injects adapters)."""
        return model

    def on_head_probed(self) -> None:
        """Called once, before epoch 0, when the run has solved the head as an exact linear probe.
        Default: nothing (``gradual`` skips its head-only stage)."""

    # -- shared machinery ---------------------------------------------------------------
    def stages(self, groups: LayerGroups) -> list[list[str]]:
        """Cumulative unfreezing stages: the user's ``layer_stages`` or the family default."""
        if self.layer_stages:
            stages, acc = [], []
            for keys in self.layer_stages:
                acc = acc + [n for n in groups.select(keys) if n not in acc]
                stages.append(list(acc))
            return stages
        return groups.default_stages()

    def build_param_groups(self, groups: LayerGroups, *, weight_decay: float = 0.05,
                           no_weight_decay_names: Iterable[str] = ()) -> list[dict]:
        """Make all optimizer parameter groups (see :mod:`finetune_kit.param_groups`) and set
        ``requires_grad`` / ``lr_scale`` for the initial stage. Pass the result to the optimizer."""
        self.groups = groups
        self.trainable = set(self.initial_trainable(groups))
        unknown = self.trainable - set(groups.names)
        if unknown:
            raise ValueError(f"{self.name}: unknown layer groups {sorted(unknown)}; groups are {groups.names}")
        param_groups = build_param_groups(groups, weight_decay=weight_decay, lr_mults=self.lr_mults,
                                          weight_decay_map=self.weight_decay_map,
                                          freeze_patterns=self.freeze_patterns,
                                          no_weight_decay_names=no_weight_decay_names)
        self._apply_groups(param_groups, epoch=0)
        return param_groups

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        """Write ``requires_grad`` and ``lr_scale`` of every optimizer group for ``epoch``."""
        self._apply_groups(optimizer.param_groups, epoch)

    def _apply_groups(self, param_groups: list[dict], epoch: int) -> None:
        for g in param_groups:
            on = g["group_name"] in self.trainable and not g.get("pinned_frozen", False)
            for p in g["params"]:
                if p.requires_grad != on:
                    p.requires_grad_(on)
                if not on:
                    p.grad = None  # a frozen parameter must not be stepped by a stale gradient
            g["lr_scale"] = g.get("lr_mult", 1.0) * self.lr_factor(g["group_name"], epoch) if on else 0.0

    def trainable_params(self) -> int:
        """Scalar parameters currently trainable (pinned-frozen ones excluded)."""
        if self.groups is None:
            return 0
        return sum(p.numel() for g in self.groups if g.name in self.trainable for p in g.params if p.requires_grad)

    @property
    def head_only(self) -> bool:
        """True when only the head trains for the whole run (enables the feature cache)."""
        return False

    def train_mode(self, model: nn.Module) -> None:
        """``model.train()``, then frozen BatchNorm layers back to eval (stats stay fixed)."""
        model.train()
        freeze_batchnorm_stats(model)

    def _unfreeze(self, names: Iterable[str], epoch: int, stage: int, reason: str) -> UnfreezeEvent | None:
        new = [n for n in (self.groups.names if self.groups else []) if n in set(names) and n not in self.trainable]
        if not new:
            return None
        self.trainable |= set(new)
        event = UnfreezeEvent(epoch, stage, new, 0, reason)
        self.events.append(event)
        return event

    def _finish_events(self, events: list[UnfreezeEvent], optimizer: torch.optim.Optimizer, epoch: int) -> list[UnfreezeEvent]:
        self.apply(optimizer, epoch)
        for e in events:
            e.trainable_params = self.trainable_params()
        return events

    def state_dict(self) -> dict:
        """Serializable state (trainable groups, events and subclass counters)."""
        return {"name": self.name, "trainable": sorted(self.trainable), "events": [asdict(e) for e in self.events]}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict`; call :meth:`apply` (or a hook) afterwards.

        Raises:
            ValueError: the state belongs to another strategy.
        """
        if state.get("name") != self.name:
            raise ValueError(f"checkpoint holds the state of strategy {state.get('name')!r}, not {self.name!r}: "
                             f"resume with --ft_strategy {state.get('name')}")
        self.trainable = set(state["trainable"])
        self.events = [UnfreezeEvent(**e) for e in state.get("events", [])]


_REGISTRY: dict[str, type[FineTuneStrategy]] = {}
_ALIASES: dict[str, str] = {}


def register_strategy(name: str, *, aliases: Sequence[str] = ()) -> Callable[[type[FineTuneStrategy]], type[FineTuneStrategy]]:
    """Class decorator registering a strategy under ``name`` (and ``aliases``).

    Raises:
        ValueError: the name is taken by another class.
    """

    def deco(cls: type[FineTuneStrategy]) -> type[FineTuneStrategy]:
        for n in (name, *aliases):
            if n in _REGISTRY and _REGISTRY[n] is not cls or n in _ALIASES and _ALIASES[n] != name:
                raise ValueError(f"strategy name {n!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        for a in aliases:
            _ALIASES[a] = name
        return cls

    return deco


_LOADED_ENTRY_POINTS = False


def _ensure_builtin() -> None:
    """Import the modules declared under the ``finetune_kit.strategies`` entry-point group once.

    The built-in strategies are declared there by this distribution itself (``builtin =
    finetune_kit.strategies``) and plugins register the same way, so the core never imports a
    strategy module by name. The composition root (:mod:`finetune_kit.tasks.cli`) also imports
    the built-ins directly, for environments without package metadata.
    """
    global _LOADED_ENTRY_POINTS
    if _LOADED_ENTRY_POINTS:
        return
    _LOADED_ENTRY_POINTS = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="finetune_kit.strategies"):
        ep.load()


def strategy_class(name: str) -> type[FineTuneStrategy]:
    """The class registered under ``name`` (or an alias).

    Raises:
        UnknownStrategyError: lists the registered names.
    """
    _ensure_builtin()
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise UnknownStrategyError(f"unknown fine-tuning strategy {name!r}; registered: "
                                   f"{', '.join(sorted(_REGISTRY))} (aliases: {', '.join(f'{a}={t}' for a, t in sorted(_ALIASES.items()))})")
    return _REGISTRY[key]


def _accepted(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass) and klass is not object:
            names |= {p.name for p in inspect.signature(klass.__init__).parameters.values()
                      if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names


def strategy_options(name: str) -> frozenset[str]:
    """Names of the options the strategy registered under ``name`` (or an alias) accepts: its
    own (e.g. ``llrd_decay`` for ``full``) and the common ones of :class:`FineTuneStrategy`.

    Raises:
        UnknownStrategyError: unknown name (lists the registered ones).
    """
    return frozenset(_accepted(strategy_class(name)))


def get_strategy(name: str, **options) -> FineTuneStrategy:
    """Build the strategy registered under ``name`` (or an alias) with ``options``.

    Every option must be one the strategy accepts (see :func:`strategy_options`); nothing is
    dropped silently. A caller holding options for several strategies (e.g. one set of CLI
    flags for a comparison) passes each strategy only its own.

    Raises:
        UnknownStrategyError: unknown name (lists the registered ones).
        StrategyOptionError: an option the strategy does not accept (names the strategy, the
            option and the options it accepts); a TypeError.
        ValueError: an accepted option with a bad value (raised by the strategy).
    """
    cls = strategy_class(name)
    mine = _accepted(cls)
    unknown = [k for k in options if k not in mine]
    if unknown:
        raise StrategyOptionError(f"strategy {cls.name!r} has no option{'s' if len(unknown) > 1 else ''} "
                                  f"{', '.join(repr(k) for k in unknown)}; its options: {', '.join(sorted(mine))}")
    return cls(**options)


def list_strategies() -> dict[str, str]:
    """``{name: one-line description}`` of the registered strategies (aliases not repeated)."""
    _ensure_builtin()
    return {n: c.description for n, c in sorted(_REGISTRY.items())}


def strategy_aliases() -> dict[str, str]:
    """``{alias: registered name}`` (e.g. ``{"llrd": "full"}``)."""
    _ensure_builtin()
    return dict(sorted(_ALIASES.items()))
