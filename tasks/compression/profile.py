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

__all__ = ["COMPRESSION_FINETUNE", "COMPRESSION_TRAIN", "METRIC_MODES", "PROFILES"]

#: Directions of every metric the compression runs write (train_/val_ R-D cost, its parts and
#: per-scale parts ``_s1`` ..., PSNR/MS-SSIM, the aux loss, seconds), by name or fnmatch pattern.
METRIC_MODES = {"*loss": "min", "*loss_s[0-9]*": "min", "*rd": "min", "*rd_s[0-9]*": "min", "*bpp": "min",
                "*bpp_s[0-9]*": "min", "*mse": "min", "*mse_s[0-9]*": "min", "*psnr*": "max", "*ms_ssim": "max",
                "*seconds": "min", "*bd_rate*": "min"}


def _profile(command: str, output_flag: str, metric: str, description: str) -> TaskProfile:
    """A ``compress COMMAND`` task: run named by ``--name``, R-D objective minimised, PSNR as fallback."""
    return TaskProfile(name=f"compression-{command}", command=("compress", command), output_flag=output_flag,
                       name_flag="--name", metric=metric, mode="min", fallback_metrics=("val_psnr", "psnr", "loss"),
                       metric_modes=METRIC_MODES,
                       description=f"{description} (finetune-kit compress {command})")


COMPRESSION_TRAIN = _profile("train", "--output-dir", "val_loss", "train a learned image compression model")
COMPRESSION_FINETUNE = _profile("finetune", "--output-dir", "val_rd", "fine-tune a trained compression checkpoint")

#: In order of preference for ``analyze``: a fine-tuning run's R-D cost before a training run's loss.
PROFILES = (COMPRESSION_FINETUNE, COMPRESSION_TRAIN)
