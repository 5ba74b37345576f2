"""``finetune-kit export RUN --format onnx|torchscript [--output FILE]``: a finished classification run
as one file that takes a normalised image batch and returns calibrated probabilities (logic in
:mod:`~finetune_kit.tasks.classification.export`). Its options are the fields of :class:`ExportOptions`."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from finetune_kit.tasks.cli_errors import fail
from finetune_kit.tasks.cli_options import config_command
from finetune_kit.tasks.config_base import ConfigSection, option_field

__all__ = ["ExportOptions", "register"]


class ExportOptions(ConfigSection):
    """``export``'s options."""

    format: Literal["onnx", "torchscript"] = option_field("onnx", "onnx (run with onnxruntime) or torchscript "
                                                          "(torch.jit.load).")
    output: Optional[str] = option_field(None, "File to write (default RUN/model.onnx or RUN/model.pt); the JSON "
                                         "sidecar is FILE.json.", aliases=("-o",), metavar="PATH")
    tolerance: float = option_field(1e-4, "Largest allowed absolute difference of the exported probabilities from "
                                    "PyTorch's on the run's test images.", gt=0.0, le=1.0)
    check_images: int = option_field(32, "How many of the run's test images (else validation) the check runs on.",
                                     ge=1)


def _export(values: dict, run_dir: Path = typer.Argument(..., help="A completed classification run folder (one "
                                                         "strategy's folder of a compare run).")) -> None:
    """Export a finished run to ONNX or TorchScript (calibrator folded in, LoRA merged) with a JSON
    sidecar of its preprocessing, classes and OOD statistics; checked against PyTorch on real images."""
    # local: the export imports torch, timm and onnxruntime (start-up time of --help)
    from finetune_kit.tasks.classification.export import export_run

    try:
        opts = ExportOptions.model_validate(values)
        res = export_run(run_dir, opts.format, output=opts.output, tolerance=opts.tolerance,
                         check_images=opts.check_images)
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)
    typer.echo(f"{opts.format} written to {res.path} (sidecar {res.sidecar.name}); check on {res.n_checked} of the "
               f"run's images: max |difference| {res.max_abs_diff:.2e} <= {res.tolerance:g}")


def register(app: typer.Typer) -> None:
    """Add ``export`` to the top-level app."""
    config_command(app, "export", ExportOptions,
                   help="Export a finished run to ONNX or TorchScript (normalised images in, calibrated "
                        "probabilities out) with a JSON sidecar; checked against PyTorch on the run's "
                        "images.")(_export)
