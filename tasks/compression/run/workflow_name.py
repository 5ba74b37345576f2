"""A short tag of what a compression run changes, for run names, figure titles and R-D curve names.

The guides' three ``compress finetune`` workflows differ in their options, not in model or lambda,
so a name built from those two alone is the same for all three. :func:`workflow_tag` names the
options that make a workflow, in a fixed order:

- ``frozen-entropy`` (``--freeze-entropy``), ``ctx<r>`` (``--context-lr-ratio r``);
- ``hierarchical`` (``--use-hierarchical``), ``scale-es`` (``--scale-early-stopping``);
- ``progressive`` (``--progressive-unfreeze``);
- ``balanced-<gamma strategy>`` (``--use-balanced``, with the gamma schedule in effect);
- ``all`` when none of them is set (every group trains, plain R-D loss).

Example: workflow 1 (``--freeze-entropy --context-lr-ratio 0.1``) is ``frozen-entropy-ctx0.1``;
workflow 2 is ``hierarchical-scale-es-progressive``; workflow 3 is ``balanced-hpcm``.
"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["workflow_tag", "workflow_tag_of_flat"]


def workflow_tag_of_flat(values: Mapping[str, Any]) -> str:
    """The tag of a flat option dict (a run's ``config.json`` or a checkpoint's ``config``).

    Missing keys count as unset, so any config (even an old one) gets a tag.
    """
    parts = []
    if values.get("freeze_entropy"):
        parts.append("frozen-entropy")
    if values.get("context_lr_ratio") is not None:
        parts.append(f"ctx{values['context_lr_ratio']:g}")
    if values.get("use_hierarchical"):
        parts.append("hierarchical")
    if values.get("scale_early_stopping"):
        parts.append("scale-es")
    if values.get("progressive_unfreeze"):
        parts.append("progressive")
    if values.get("use_balanced"):
        parts.append(f"balanced-{values.get('gamma_strategy') or 'constant'}")
    return "-".join(parts) or "all"


def workflow_tag(cfg: Any) -> str:
    """The tag of a run config (:class:`~finetune_kit.tasks.compression.run.config.RunConfig`),
    with the gamma schedule in effect (``cfg.gamma_strategy``)."""
    return workflow_tag_of_flat({**cfg.flat(), "gamma_strategy": cfg.gamma_strategy})
