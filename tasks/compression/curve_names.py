"""One R-D curve per model family in ``compress eval``: which checkpoints belong on one curve.

Checkpoints of one model trained the same way at several lambdas make one R-D curve; a base
checkpoint and a fine-tune of it are two models, so they get two curves. The family of a
checkpoint is read from its recorded ``config``:

- made by ``compress finetune`` (``command == "finetune"`` or a source ``checkpoint`` recorded):
  ``MODEL fine-tuned (WORKFLOW)``, WORKFLOW from
  :func:`~finetune_kit.tasks.compression.run.workflow_name.workflow_tag_of_flat`
  (e.g. ``hpcm-tiny fine-tuned (balanced-hpcm)``);
- anything else (``compress train``, converted official checkpoints, bare state dicts): ``MODEL``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from finetune_kit.tasks.compression.run.workflow_name import workflow_tag_of_flat

__all__ = ["checkpoint_family", "group_by_family"]


def checkpoint_family(ckpt: Mapping[str, Any], model_name: str) -> str:
    """The curve name of checkpoint dict ``ckpt`` (see the module docstring) of model ``model_name``."""
    cfg = ckpt.get("config") or {}
    if cfg.get("command") == "finetune" or cfg.get("checkpoint"):
        return f"{model_name} fine-tuned ({workflow_tag_of_flat(cfg)})"
    return model_name


def group_by_family(families: Sequence[str]) -> dict[str, list[int]]:
    """``{family: [indexes]}`` in order of first appearance (the order of the checkpoints given)."""
    out: dict[str, list[int]] = {}
    for i, f in enumerate(families):
        out.setdefault(f, []).append(i)
    return out
