"""The compression tasks as the sweep and ``analyze`` see them (pure data: imports nothing heavy).

Objectives: ``val_loss`` for ``compress train`` (the R-D loss of ``training.evaluate``) and
``val_rd`` for ``compress finetune`` (the R-D cost of ``finetune.objective.validate``, logged
beside ``val_mse``, ``val_bpp``, ``val_psnr``, ``val_aux_loss``); both are in every
``metrics.jsonl`` record and, as the last epoch's value, in ``metrics.json``. Runs without an
R-D cost (evaluations) are ranked by PSNR, after every task's own metric because PSNR ignores
the rate.
"""
from __future__ import annotations

from finetune_kit.experiments.profiles import TaskProfile

__all__ = ["COMPRESSION_FINETUNE", "COMPRESSION_TRAIN", "PROFILES"]

_FALLBACK = ("val_psnr", "psnr", "loss")

COMPRESSION_TRAIN = TaskProfile(
    name="compression-train",
    command=("compress", "train"),
    output_flag="--output-dir",
    name_flag="--name",
    metric="val_loss",
    mode="min",
    fallback_metrics=_FALLBACK,
    description="train a learned image compression model (finetune-kit compress train)",
)

COMPRESSION_FINETUNE = TaskProfile(
    name="compression-finetune",
    command=("compress", "finetune"),
    output_flag="--output_dir",
    name_flag="--name",
    metric="val_rd",
    mode="min",
    fallback_metrics=_FALLBACK,
    description="fine-tune a trained compression checkpoint (finetune-kit compress finetune)",
)

#: In order of preference for ``analyze``: a fine-tuning run's R-D cost before a training run's loss.
PROFILES = (COMPRESSION_FINETUNE, COMPRESSION_TRAIN)
