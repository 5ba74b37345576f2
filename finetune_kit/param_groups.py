"""Optimizer parameter groups made once, up front, from layer groups.

Every parameter lands in one optimizer group keyed by (layer group, LR-multiplier key,
weight-decay flag, pinned-frozen flag). Each group dict carries:

- ``group_name``: its layer group (``layer4``, ``blocks.3`` ...); strategies switch it on/off;
- ``lr_key``: the ``lr_mults`` key that gave its multiplier (None: no key matched);
- ``lr_mult``: the user's LR multiplier for it (longest matching key wins, default 1.0);
- ``lr_scale``: what the LR scheduler multiplies its LR by (timm schedulers honour it);
  strategies set it to ``lr_mult * factor`` (LLRD, warm-up) or 0 when frozen;
- ``weight_decay``: 0 for norms, biases, position embeddings and class tokens;
- ``pinned_frozen``: True for parameters matched by a freeze pattern (never trained);
- ``param_names``: the names of its ``params`` (same order).

Keys of ``lr_mults`` and ``weight_decay_map`` follow :mod:`finetune_kit.keys` (module prefix at
a dot boundary or ``re:REGEX``, longest match wins); ``match_key`` is re-exported from there.

All groups exist from the start, so unfreezing never adds groups to a live optimizer and
any LR scheduler stays valid (pytorch#62475, #79888).
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

from torch import nn

from finetune_kit.keys import KeyMatcher, match_key
from finetune_kit.layer_groups import LayerGroups

__all__ = ["build_param_groups", "match_key", "parse_multipliers", "is_no_weight_decay", "NO_DECAY_NAME_PATTERNS"]

NO_DECAY_NAME_PATTERNS = (r"pos_embed", r"cls_token", r"reg_token", r"dist_token", r"mask_token",
                          r"relative_position_bias_table", r"absolute_pos_embed", r"\.bias$")


def parse_multipliers(text: str | Mapping[str, float] | None) -> dict[str, float]:
    """Parse ``"layer4:1.0,layer3:0.5,re:\\.bias$:0"`` into ``{"layer4": 1.0, ...}`` (a dict
    passes through; None or ``""`` give ``{}``). The value is after the last ``:``, so ``re:``
    keys need no quoting (but cannot contain a comma).

    Raises:
        ValueError: an entry that is not ``KEY:FLOAT``, a negative multiplier, or a ``re:`` key
            whose regex does not compile (:class:`finetune_kit.keys.KeyMatcher`).
    """
    if text is None or text == "":
        return {}
    if isinstance(text, Mapping):
        items = dict(text)
    else:
        items = {}
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, value = part.rpartition(":")
            try:
                if not sep or not key:
                    raise ValueError
                items[key.strip()] = float(value)
            except ValueError:
                raise ValueError(f"multiplier entry {part!r} is not KEY:FLOAT (e.g. 'g_a:1.0,context:0.1')") from None
    for k, v in items.items():
        if float(v) < 0:
            raise ValueError(f"multiplier for {k!r} is {v}: must be >= 0")
    KeyMatcher(items)  # a malformed re: key fails here, naming the key
    return {k: float(v) for k, v in items.items()}


def is_no_weight_decay(name: str, param: nn.Parameter, extra: Iterable[str] = ()) -> bool:
    """True for parameters that should not be weight-decayed: 1-D tensors (norm scales,
    biases), position embeddings and class/register tokens, and names in ``extra``
    (e.g. timm's ``model.no_weight_decay()``)."""
    if param.ndim <= 1 or name in set(extra):
        return True
    return any(re.search(p, name) for p in NO_DECAY_NAME_PATTERNS)


def build_param_groups(
    groups: LayerGroups,
    *,
    weight_decay: float = 0.05,
    lr_mults: Mapping[str, float] | None = None,
    weight_decay_map: Mapping[str, float] | None = None,
    freeze_patterns: Sequence[str] = (),
    no_weight_decay_names: Iterable[str] = (),
) -> list[dict]:
    """Make the optimizer's parameter groups from resolved layer groups.

    Args:
        groups: from :func:`finetune_kit.layer_groups.resolve_layer_groups`.
        weight_decay: decoupled weight decay for weights (norms/biases/embeddings get 0).
        lr_mults: ``{key: multiplier}``; keys are module prefixes or ``re:REGEX``, longest
            match wins (:mod:`finetune_kit.keys`); unmatched parameters get 1.0.
        weight_decay_map: per-key weight decay overriding ``weight_decay`` (same keys).
        freeze_patterns: regexes (``re.search`` on parameter names) of parameters that never
            train (``requires_grad=False`` for the whole run).
        no_weight_decay_names: extra parameter names without weight decay.

    Returns:
        A list of dicts for ``torch.optim.*(groups, lr=base_lr)``; see the module docstring.

    Raises:
        ValueError: an invalid regex in ``freeze_patterns`` or in a ``re:`` key.
    """
    lr_mults = dict(lr_mults or {})
    wd_map = dict(weight_decay_map or {})
    lr_keys, wd_keys = KeyMatcher(lr_mults), KeyMatcher(wd_map)
    try:
        frozen_rx = [re.compile(p) for p in freeze_patterns]
    except re.error as exc:
        raise ValueError(f"freeze pattern is not a valid regex: {exc}") from None
    extra = set(no_weight_decay_names)
    buckets: dict[tuple, dict] = {}
    for lg in groups:
        for name, p in zip(lg.param_names, lg.params):
            lr_key = lr_keys.match(name)
            wd_key = wd_keys.match(name)
            no_wd = is_no_weight_decay(name, p, extra)
            wd = 0.0 if no_wd else float(wd_map[wd_key] if wd_key else weight_decay)
            pinned = any(rx.search(name) for rx in frozen_rx)
            key = (lg.name, lr_key, wd, pinned)
            if key not in buckets:
                mult = lr_mults[lr_key] if lr_key else 1.0
                buckets[key] = {"params": [], "param_names": [], "group_name": lg.name, "lr_key": lr_key,
                                "lr_mult": mult, "lr_scale": mult, "weight_decay": wd, "pinned_frozen": pinned}
            buckets[key]["params"].append(p)
            buckets[key]["param_names"].append(name)
    return list(buckets.values())
