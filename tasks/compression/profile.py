"""The compression tasks as the sweep and ``analyze`` see them (pure data: imports nothing heavy).

Objective: ``val_rd``, the validation R-D cost of the one compression run
(:mod:`finetune_kit.tasks.compression.run`), logged beside ``val_mse``, ``val_bpp``,
``val_psnr``, ``val_aux_loss`` by ``compress train`` and ``compress finetune`` alike; it is in
every ``metrics.jsonl`` record and, as the last epoch's value, in ``metrics.json``. Runs without an
R-D cost (evaluations) are ranked by PSNR, after every task's own metric because PSNR ignores
the rate.

``compress train`` runs written before the two commands became one run logged other names;
:data:`OLD_METRIC_NAMES` maps them to today's (:func:`current_metric_names` applies it to a record),
so ``analyze`` reads old and new run folders in one table.
"""
from __future__ import annotations

from typing import Any, Mapping

from finetune_kit.experiments.profiles import TaskProfile

__all__ = ["COMPRESSION_FINETUNE", "COMPRESSION_TRAIN", "PROFILES", "OLD_METRIC_NAMES", "current_metric_names"]

#: ``compress train`` metric names before the merge with ``compress finetune`` -> today's names
#: (the values are the same quantities; ``train_loss``, ``val_psnr``, ``val_aux_loss``, ``val_bpp_y``
#: ... kept their names)
OLD_METRIC_NAMES: Mapping[str, str] = {
    "val_loss": "val_rd",
    "val_bpp_loss": "val_bpp",
    "val_mse_loss": "val_mse",
    "train_bpp_loss": "train_bpp",
    "train_mse_loss": "train_mse",
    "train_seconds": "seconds",
}


def current_metric_names(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` (a ``metrics.jsonl`` line or ``metrics.json``) with :data:`OLD_METRIC_NAMES`
    renamed; a name present in both spellings keeps today's value."""
    out = {OLD_METRIC_NAMES.get(k, k): v for k, v in record.items()}
    out.update({k: v for k, v in record.items() if k in OLD_METRIC_NAMES.values()})
    return out


def _profile(command: str, description: str) -> TaskProfile:
    """A ``compress COMMAND`` task: run named by ``--name``, R-D cost minimised, PSNR as fallback."""
    return TaskProfile(name=f"compression-{command}", command=("compress", command), output_flag="--output-dir",
                       name_flag="--name", metric="val_rd", mode="min",
                       fallback_metrics=("val_loss", "val_psnr", "psnr", "loss"),
                       description=f"{description} (finetune-kit compress {command})")


COMPRESSION_TRAIN = _profile("train", "train a learned image compression model")
COMPRESSION_FINETUNE = _profile("finetune", "fine-tune a trained compression checkpoint")

#: In order of preference for ``analyze``.
PROFILES = (COMPRESSION_FINETUNE, COMPRESSION_TRAIN)
