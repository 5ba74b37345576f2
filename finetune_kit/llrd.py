"""Layer-wise learning-rate decay (LLRD), shared by the strategies that scale a group's LR by
its depth (``full``, ``lp_ft``, ``gradual``; plugins too).

The group at depth ``d`` from the top (the head: ``d = 0``, see
:class:`~finetune_kit.layer_groups.LayerGroup`) gets ``lr * decay**d`` (BEiT, Bao et al. 2022;
ELECTRA, Clark et al. 2020; ULMFiT's discriminative fine-tuning).
"""
from __future__ import annotations

from finetune_kit.layer_groups import LayerGroups

__all__ = ["check_llrd_decay", "llrd_factor"]


def check_llrd_decay(decay: float) -> float:
    """``decay`` as a float.

    Raises:
        ValueError: ``decay`` outside (0, 1] (1 disables the decay).
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"llrd_decay={decay}: must be in (0, 1] (0.9 is a common choice; 1 disables the decay)")
    return float(decay)


def llrd_factor(groups: LayerGroups | None, group_name: str, decay: float) -> float:
    """The LR factor ``decay ** depth`` of the layer group ``group_name``.

    Args:
        groups: the model's layer groups; None before a strategy knows them (factor 1).
        group_name: a group of ``groups`` (the head, depth 0, gets 1).
        decay: per-depth factor in (0, 1] (:func:`check_llrd_decay`).

    Raises:
        KeyError: ``group_name`` is not a group of ``groups``.
    """
    return decay ** groups.by_name(group_name).depth if groups is not None else 1.0
