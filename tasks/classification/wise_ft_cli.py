"""``finetune-kit wise-ft RUN``: WiSE-FT of a finished classification run (logic in
:mod:`~finetune_kit.tasks.classification.wise_ft`). Its options are config fields: the forgetting
section's ``--wise-ft-alphas``, the runtime section's ``--device`` and ``--output``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from finetune_kit.tasks.classification.config import ClassificationConfig
from finetune_kit.tasks.cli_errors import fail
from finetune_kit.tasks.cli_options import config_command, resolve_device
from finetune_kit.tasks.config_base import ConfigSection, option_field

__all__ = ["WiseFtOptions", "register"]


class WiseFtOptions(ConfigSection):
    """What ``wise-ft`` adds to the forgetting and runtime options it shares with a run."""

    output: Optional[str] = option_field(None, "Folder of the chosen model's run (default RUN-wise-ft).",
                                         aliases=("-o",), metavar="PATH")


def _wise_ft(values: dict, run_dir: Path = typer.Argument(..., help="A finished classification run folder (trained "
                                                           "from pretrained weights).")) -> None:
    """WiSE-FT: interpolate the probed pretrained and the fine-tuned weights over alpha, choose alpha on
    validation (highest retention within the best AUROC's 95 % interval), write it as a run."""
    # local: the WiSE-FT run imports torch and timm (start-up time of --help)
    from finetune_kit.tasks.classification.wise_ft import run_wise_ft

    try:
        cfg = ClassificationConfig.model_validate({k: v for k, v in values.items() if k != "output"})
    except ValueError as exc:
        fail(exc)
    dev, line = resolve_device(cfg.runtime.device)
    typer.echo(line, err=True)
    output = values.get("output")
    try:
        res = run_wise_ft(run_dir, alphas=cfg.forgetting.wise_ft_alphas, output=Path(output) if output else None,
                          device=dev)
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)
    typer.echo(f"alpha {res['alpha']:g}: test AUROC {res['test'].get('auroc', float('nan')):.4f}; run folder {res['run_dir']}")


def register(app: typer.Typer) -> None:
    """Add ``wise-ft`` to the top-level app."""
    config_command(app, "wise-ft", WiseFtOptions, ClassificationConfig, include=("output", "wise_ft_alphas", "device"),
                   help="WiSE-FT of a finished run: interpolate the probed pretrained and the fine-tuned weights "
                        "over alpha, choose alpha on validation, write the chosen model as a run folder.")(_wise_ft)
