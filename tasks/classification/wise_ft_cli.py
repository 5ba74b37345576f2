"""``finetune-kit wise-ft RUN``: WiSE-FT of a finished classification run (logic in
:mod:`~finetune_kit.tasks.classification.wise_ft`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from finetune_kit.tasks.cli_errors import fail
from finetune_kit.tasks.cli_options import option, resolve_device

__all__ = ["register", "wise_ft"]


def wise_ft(
    run_dir: Path = typer.Argument(..., help="A finished classification run folder (from pretrained weights)."),
    alphas: Optional[str] = option(None, "alphas", help="Comma-separated mixing coefficients in [0, 1] "
                                                        "(default 0,0.1,...,1)."),
    output: Optional[Path] = option(None, "output", help="Folder of the chosen model's run (default RUN-wise-ft)."),
    device: str = option("auto", "device", help="cpu, cuda, cuda:N or auto."),
) -> None:
    """WiSE-FT: interpolate the probed pretrained and the fine-tuned weights over alpha, choose alpha on
    validation (highest retention within the best AUROC's 95 % interval), write it as a run."""
    from finetune_kit.tasks.classification.wise_ft import run_wise_ft

    try:
        grid = [float(a) for a in alphas.split(",") if a.strip()] if alphas else None
    except ValueError:
        fail(f"--alphas {alphas!r}: give comma-separated numbers in [0, 1], e.g. 0,0.25,0.5,0.75,1")
    dev, line = resolve_device(device)
    typer.echo(line, err=True)
    try:
        res = run_wise_ft(run_dir, alphas=grid, output=output, device=dev)
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)
    typer.echo(f"alpha {res['alpha']:g}: test AUROC {res['test'].get('auroc', float('nan')):.4f}; run folder {res['run_dir']}")


def register(app: typer.Typer) -> None:
    """Add ``wise-ft`` to the top-level app."""
    app.command("wise-ft")(wise_ft)
