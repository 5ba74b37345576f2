"""The classification task as the sweep and ``analyze`` see it (pure data: imports nothing heavy).

``finetune-kit classify`` writes ``val_auroc`` to every ``metrics.jsonl`` record and
``test_auroc`` (``test.auroc``) to ``metrics.json``; a report ranks by the test value first.
"""
from __future__ import annotations

from finetune_kit.experiments.profiles import TaskProfile

__all__ = ["CLASSIFICATION"]

CLASSIFICATION = TaskProfile(
    name="classification",
    command=("classify",),
    output_flag="--output_dir",
    name_flag="--experiment_tag",
    metric="val_auroc",
    mode="max",
    rank_metrics=("test_auroc", "val_auroc"),
    description="fine-tune a timm classifier (finetune-kit classify)",
)
