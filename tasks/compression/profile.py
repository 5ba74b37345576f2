"""The compression tasks as the sweep and ``analyze`` see them (pure data: imports nothing heavy).

Objective: ``val_rd``, the validation R-D cost of the one compression run
(:mod:`finetune_kit.tasks.compression.run`), logged beside ``val_mse``, ``val_bpp``,
``val_psnr``, ``val_aux_loss`` by ``compress train`` and ``compress finetune`` alike; it is in
every ``metrics.jsonl`` record and, as the last epoch's value, in ``metrics.json``. Runs without an
R-D cost (evaluations) are ranked by PSNR, after every task's own metric because PSNR ignores
the rate.

``compress train`` runs written before the two commands became one run logged other names;
:data:`OLD_METRIC_NAMES` maps them to today's (the profiles hand it to ``analyze`` as
``metric_renames``), so ``analyze`` reads old and new run folders in one table.
"""
from __future__ import annotations

from typing import Mapping

from finetune_kit.experiments.profiles import TaskProfile

__all__ = ["COMPRESSION_FINETUNE", "COMPRESSION_TRAIN", "METRIC_MODES", "PROFILES", "OLD_METRIC_NAMES"]

#: Directions of every metric the compression runs write (train_/val_ R-D cost, its parts and
#: per-scale parts ``_s1`` ..., PSNR/MS-SSIM, the aux loss, seconds), by name or fnmatch pattern.
METRIC_MODES = {"*loss": "min", "*loss_s[0-9]*": "min", "*rd": "min", "*rd_s[0-9]*": "min", "*bpp": "min",
                "*bpp_s[0-9]*": "min", "*mse": "min", "*mse_s[0-9]*": "min", "*psnr*": "max", "*ms_ssim": "max",
                "*seconds": "min", "*bd_rate*": "min"}

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



def _profile(command: str, description: str) -> TaskProfile:
    """A ``compress COMMAND`` task: run named by ``--name``, R-D cost minimised, PSNR as fallback."""
    return TaskProfile(name=f"compression-{command}", command=("compress", command), output_flag="--output-dir",
                       name_flag="--name", metric="val_rd", mode="min",
                       fallback_metrics=("val_loss", "val_psnr", "psnr", "loss"), metric_modes=METRIC_MODES,
                       metric_renames=OLD_METRIC_NAMES, config_keys=("lmbda",),
                       description=f"{description} (finetune-kit compress {command})")


COMPRESSION_TRAIN = _profile("train", "train a learned image compression model")
COMPRESSION_FINETUNE = _profile("finetune", "fine-tune a trained compression checkpoint")

#: In order of preference for ``analyze``.
PROFILES = (COMPRESSION_FINETUNE, COMPRESSION_TRAIN)
