"""Layer-wise learning rates, freezing, weight decay and gradient clipping for compression models.

A thin layer over :mod:`finetune_kit.param_groups` (not a parallel mechanism): this module
turns the fine-tuning options (``--context_lr_ratio``, ``--freeze_entropy``, per-group weight
decay and clipping) into the ``lr_mults`` / ``weight_decay_map`` / ``freeze_patterns`` that a
registered strategy hands to :func:`finetune_kit.param_groups.build_param_groups`, then reports
the resulting optimizer groups as a table and clips gradients per layer group.

Defaults (the user's guides): LR multipliers ``g_a:1.0, g_s:1.0, h_a:0.5, h_s:0.5, context:0.1``
(keys are module prefixes such as ``g_a`` or finer ``g_a.0``, or ``re:REGEX``; the longest
matching key wins). ``--freeze_entropy`` freezes the entropy bottleneck (its density model *and*
its ``quantiles``) and the Gaussian conditional (which has no parameters in CompressAI, only
buffers): the z prior and the aux loss then stop training.

The entropy bottleneck's ``quantiles`` are trained only by the aux loss (CompressAI's separate
aux optimizer); they are kept out of the main optimizer (:func:`split_aux_groups`, defined in
:mod:`finetune_kit.tasks.compression.engine` and shared with ``compress train``) so weight decay
or a stray gradient never moves them.

CompressAI zoo models keep some groups' modules under other names (cheng2020's ``context``
group is ``context_prediction.*`` and ``entropy_parameters.*``; ELIC's ``h_a`` is
``latent_codec.hyper.h_a.*``): :func:`group_keys_to_patterns` turns such a group-name key into
the layer preset's pattern, so ``context:0.1`` reaches every context parameter of every model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
from rich.console import Console
from rich.table import Table

from finetune_kit.keys import KeyMatcher
from finetune_kit.layer_groups import LayerGroups
from finetune_kit.param_groups import parse_multipliers
from finetune_kit.tasks.compression.engine import AUX_GROUP, split_aux_groups  # the one aux split (re-exported)
from finetune_kit.tasks.compression.finetune.config import DEFAULT_LR_MULTS

__all__ = ["DEFAULT_LR_MULTS", "ENTROPY_FREEZE_PATTERNS", "AUX_GROUP", "LayerLRConfig", "LRTableRow",
           "group_keys_to_patterns", "split_aux_groups", "lr_table", "print_lr_table", "clip_grad_norms"]


#: what ``--freeze_entropy`` freezes (regexes searched in parameter names): the entropy
#: bottleneck (density model + quantiles) and the Gaussian conditional, top-level or inside a
#: CompressAI latent codec (ELIC: ``latent_codec.hyper.entropy_bottleneck``)
ENTROPY_FREEZE_PATTERNS = (r"(?:^|\.)entropy_bottleneck\.", r"(?:^|\.)gaussian_conditional\.")


@dataclass
class LayerLRConfig:
    """Layer-wise LR options, resolved into strategy options by :meth:`strategy_options`.

    Attributes:
        lr_mults: ``"g_a:1.0,context:0.1"`` or a dict; default :data:`DEFAULT_LR_MULTS`.
        context_lr_ratio: overrides the ``context`` multiplier when set (guides: 0.1).
        freeze_entropy: freeze :data:`ENTROPY_FREEZE_PATTERNS` (entropy bottleneck incl. quantiles,
            Gaussian conditional).
        freeze_patterns: extra regexes of parameters that never train.
        weight_decay: global weight decay (default 0: CompressAI trains with plain Adam).
        weight_decay_map: per-key weight decay (``"context:1e-4"``), same key rules as ``lr_mults``.
        clip_map: per-key gradient-norm limit for a layer group (``"context:0.5"``); groups with no
            key use ``clip_max_norm``. 0 disables clipping for that group.
        clip_max_norm: gradient-norm limit over *all* trainable parameters (paper: 1.0; 0 disables).
    """

    lr_mults: str | Mapping[str, float] | None = DEFAULT_LR_MULTS
    context_lr_ratio: float | None = None
    freeze_entropy: bool = False
    freeze_patterns: Sequence[str] = ()
    weight_decay: float = 0.0
    weight_decay_map: str | Mapping[str, float] | None = None
    clip_map: str | Mapping[str, float] | None = None
    clip_max_norm: float = 1.0
    _mults: dict[str, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._mults = parse_multipliers(self.lr_mults)
        if self.context_lr_ratio is not None:
            if self.context_lr_ratio < 0:
                raise ValueError(f"context_lr_ratio={self.context_lr_ratio}: must be >= 0 (guides use 0.1)")
            self._mults["context"] = float(self.context_lr_ratio)
        if self.weight_decay < 0 or self.clip_max_norm < 0:
            raise ValueError(f"weight_decay={self.weight_decay}, clip_max_norm={self.clip_max_norm}: must be >= 0")

    @property
    def mults(self) -> dict[str, float]:
        """The resolved LR multipliers (``context_lr_ratio`` applied)."""
        return dict(self._mults)

    @property
    def all_freeze_patterns(self) -> list[str]:
        """User freeze patterns plus :data:`ENTROPY_FREEZE_PATTERNS` when ``freeze_entropy``."""
        return list(self.freeze_patterns) + (list(ENTROPY_FREEZE_PATTERNS) if self.freeze_entropy else [])

    def strategy_options(self, groups: LayerGroups | None = None) -> dict:
        """Keyword options for :func:`finetune_kit.strategy.get_strategy` (every strategy accepts them).

        With the model's ``groups``, keys naming a group whose parameters live under other module
        names become the preset's pattern (:func:`group_keys_to_patterns`)."""
        mults, wd = self.mults, parse_multipliers(self.weight_decay_map)
        if groups is not None:
            mults, wd = group_keys_to_patterns(mults, groups), group_keys_to_patterns(wd, groups)
        return {"lr_mults": mults, "weight_decay_map": wd, "freeze_patterns": self.all_freeze_patterns}


def group_keys_to_patterns(mapping: Mapping[str, float], groups: LayerGroups) -> dict[str, float]:
    """``mapping`` with each key that names a layer group of ``groups`` whose parameters are not all
    under that module prefix replaced by ``re:`` + the group's preset pattern.

    Parameter-name keys (:mod:`finetune_kit.keys`) then reach the whole group:
    ``context`` on cheng2020 covers ``context_prediction.*`` and ``entropy_parameters.*``, ``h_a`` on
    ELIC covers ``latent_codec.hyper.h_a.*``. HPCM's keys are module prefixes already and pass
    unchanged, as do keys that name no group (``g_a.0``, ``re:...``). Values are kept.
    """
    matcher = groups.preset.matcher if groups.preset is not None else {}
    out: dict[str, float] = {}
    for key, value in mapping.items():
        pattern = matcher.get(key) if key in groups.names else None
        if isinstance(pattern, str):
            under_key = KeyMatcher([key])
            if any(under_key.match(n) is None for n in groups.by_name(key).param_names):
                out[f"re:{pattern}"] = value
                continue
        out[key] = value
    return out


@dataclass
class LRTableRow:
    """One optimizer parameter group: layer group, LR key, LR (absolute, this step), multiplier,
    current ``lr_scale``, weight decay, frozen, parameter count (scalars), clip limit."""

    group: str
    lr_key: str | None
    lr: float
    lr_mult: float
    lr_scale: float
    weight_decay: float
    frozen: bool
    params: int
    clip: float | None


def _clip_for(group_name: str, clip_map: Mapping[str, float], default: float,
              keys: KeyMatcher | None = None) -> float | None:
    key = (keys if keys is not None else KeyMatcher(clip_map)).match(group_name)
    value = clip_map[key] if key else default
    return float(value) if value > 0 else None


def lr_table(optimizer: torch.optim.Optimizer, *, base_lr: float | None = None,
             clip_map: str | Mapping[str, float] | None = None,
             aux_params: Iterable[torch.nn.Parameter] = (), aux_lr: float | None = None) -> list[LRTableRow]:
    """One :class:`LRTableRow` per optimizer group (plus one for the aux parameters).

    ``lr`` is ``base_lr * lr_scale`` when ``base_lr`` is given (the LR the schedule will write at
    its peak), else the group's current ``lr``. A group is *frozen* when none of its parameters
    requires grad or its ``lr_scale`` is 0. ``clip`` is the group's own limit from ``clip_map``
    (None: only the global clip applies).
    """
    cmap = parse_multipliers(clip_map)
    ckeys = KeyMatcher(cmap)
    rows = []
    for g in optimizer.param_groups:
        scale = float(g.get("lr_scale", 1.0))
        frozen = not any(p.requires_grad for p in g["params"]) or scale == 0.0
        lr = base_lr * scale if base_lr is not None else float(g["lr"])
        rows.append(LRTableRow(g.get("group_name", "?"), g.get("lr_key"), 0.0 if frozen else lr,
                               float(g.get("lr_mult", 1.0)), scale, float(g.get("weight_decay", 0.0)), frozen,
                               sum(p.numel() for p in g["params"]), _clip_for(g.get("group_name", ""), cmap, 0.0, ckeys)))
    aux = list(aux_params)
    if aux:
        frozen = not any(p.requires_grad for p in aux)
        rows.append(LRTableRow(f"{AUX_GROUP} (aux loss)", None, 0.0 if frozen else float(aux_lr or 0.0), 1.0, 1.0,
                               0.0, frozen, sum(p.numel() for p in aux), None))
    return rows


def print_lr_table(rows: Sequence[LRTableRow], title: str = "layer-wise learning rates", console=None,
                   caption: str | None = None) -> None:
    """Print ``rows`` as a rich table (group, key, LR, mult, weight decay, frozen, params, group clip)."""

    table = Table(title=title, caption=caption)
    for col in ("group", "LR key", "LR", "mult", "weight decay", "frozen", "params", "group clip"):
        table.add_column(col, justify="left" if col in ("group", "LR key") else "right")
    for r in rows:
        table.add_row(r.group, r.lr_key or "-", f"{r.lr:.3g}", f"{r.lr_mult:g}", f"{r.weight_decay:g}",
                      "yes" if r.frozen else "no", f"{r.params:,}", "-" if r.clip is None else f"{r.clip:g}")
    (console or Console(width=max(Console().width, 110))).print(table)


def clip_grad_norms(param_groups: Sequence[dict], *, clip_map: str | Mapping[str, float] | None = None,
                    clip_max_norm: float = 1.0) -> dict[str, float]:
    """Clip gradient norms: first per layer group (``clip_map``), then over everything (``clip_max_norm``).

    Per-group clipping scales the gradients of a layer group whose L2 norm exceeds its limit
    (``torch.nn.utils.clip_grad_norm_`` on that group's parameters); the global clip then bounds
    the norm over all trainable parameters (the paper's 1.0).

    Returns:
        ``{layer group: gradient L2 norm before clipping}`` plus ``"total"`` (norm before the
        global clip), for logging. NaN/inf norms are returned as they are.
    """
    cmap = parse_multipliers(clip_map)
    ckeys = KeyMatcher(cmap)
    by_group: dict[str, list[torch.Tensor]] = {}
    for g in param_groups:
        ps = [p for p in g["params"] if p.grad is not None]
        if ps:
            by_group.setdefault(g.get("group_name", "?"), []).extend(ps)
    norms: dict[str, float] = {}
    for name, ps in by_group.items():
        limit = _clip_for(name, cmap, 0.0, ckeys) if cmap else None
        if limit:
            norms[name] = float(torch.nn.utils.clip_grad_norm_(ps, limit))
        else:
            norms[name] = float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in ps])))
    everything = [p for ps in by_group.values() for p in ps]
    if everything:
        total = (torch.nn.utils.clip_grad_norm_(everything, clip_max_norm) if clip_max_norm > 0 else
                 torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in everything])))
        norms["total"] = float(total)
    else:
        norms["total"] = 0.0
    return {k: (v if math.isfinite(v) else float("nan")) for k, v in norms.items()}
