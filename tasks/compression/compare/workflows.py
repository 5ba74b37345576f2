"""The five workflows of ``compress compare`` as ``compress finetune`` options.

Every workflow gets the same step budget (``epochs`` x ``steps_per_epoch`` optimizer steps of
``batch_size`` crops), seed, data, validation split and target lambda; they differ only in what
the user's guides (and the two honest baselines) change:

``finetune-all``
    baseline (a): every parameter trains at one LR (``--lr-mults`` 1 for every group), plain
    ``lambda * 255^2 * MSE + bpp``.
``wf1-basic``
    the guides' workflow 1: ``--freeze-entropy --context-lr-ratio 0.1`` (and the default
    multipliers h_a/h_s 0.5).
``wf2-hierarchical``
    workflow 2: ``--use-hierarchical --scale-modulation guides --scale-early-stopping
    --progressive-unfreeze``, with the guides' 500-epoch numbers scaled to the budget: unfreeze
    after 20 % and 40 % of the epochs (guides: 100, 200 of 500), patience 10 % of the epochs
    (guides 50; at least 2), the unfreeze LR ramp 1 % (guides 5; at least 0).
``wf3-balanced``
    workflow 3: ``--use-balanced --gamma-strategy hpcm --gamma 0.003 --gamma-final 0.001 --w-lr 0.025``.
``scratch``
    baseline (e): the same model trained from random weights at the target lambda, every group at
    ``scratch_learning_rate`` (default 1e-4, the paper's and ``compress train``'s LR).
"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["WORKFLOWS", "ALL_LR_MULTS", "workflow_options"]

#: workflow names in table order (``finetune-all`` first: the others are compared with it)
WORKFLOWS = ("finetune-all", "wf1-basic", "wf2-hierarchical", "wf3-balanced", "scratch")
#: one LR for every layer group (baseline a and from-scratch)
ALL_LR_MULTS = "g_a:1.0,g_s:1.0,h_a:1.0,h_s:1.0,context:1.0"


def workflow_options(name: str, epochs: int) -> dict[str, Any]:
    """The ``FinetuneConfig`` options that make workflow ``name`` (on top of the shared ones).

    Raises:
        ValueError: an unknown workflow name (lists the known ones).
    """
    if name == "finetune-all":
        return {"lr_mults": ALL_LR_MULTS}
    if name == "wf1-basic":
        return {"freeze_entropy": True, "context_lr_ratio": 0.1}
    if name == "wf2-hierarchical":
        first = max(1, round(0.2 * epochs))
        second = min(max(first + 1, round(0.4 * epochs)), max(first + 1, epochs - 1))
        return {"use_hierarchical": True, "scale_modulation": "guides", "scale_early_stopping": True,
                "early_stopping_patience": max(2, round(0.1 * epochs)), "progressive_unfreeze": True,
                "unfreeze_schedule": f"{first},{second}", "unfreeze_warmup_epochs": max(0, round(0.01 * epochs))}
    if name == "wf3-balanced":
        return {"use_balanced": True, "gamma_strategy": "hpcm", "gamma": 0.003, "gamma_final": 0.001, "w_lr": 0.025}
    if name == "scratch":
        return {"lr_mults": ALL_LR_MULTS}
    raise ValueError(f"unknown workflow {name!r}: use some of {', '.join(WORKFLOWS)}")


def describe(options: Mapping[str, Any]) -> str:
    """The options as a ``compress finetune`` command-line fragment (for the report)."""
    parts = []
    for k, v in options.items():
        flag = "--" + k.replace("_", "-")
        parts.append(flag if v is True else f"{flag} {v}")
    return " ".join(parts)
