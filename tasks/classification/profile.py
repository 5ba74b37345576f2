"""The classification task as the sweep and ``analyze`` see it (pure data: imports nothing heavy).

``finetune-kit classify`` writes ``val_auroc`` to every ``metrics.jsonl`` record and
``test_auroc`` (``test.auroc``) to ``metrics.json``; a report ranks by the test value first.
The directions of the other metrics it writes are declared in ``metric_modes``.
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
    # every metric metrics.jsonl / metrics.json hold (val_x, test_x, test.x_calibrated ...), by name or pattern
    metric_modes={"*auroc*": "max", "*accuracy*": "max", "*kappa*": "max", "*f1*": "max", "*sensitivity*": "max",
                  "*specificity*": "max", "*_loss": "min", "*ece*": "min", "*nll*": "min", "*brier*": "min",
                  "*_time_s": "min", "*images_per_s*": "max", "peak_memory*_mb": "min"},
    description="fine-tune a timm classifier (finetune-kit classify)",
)
