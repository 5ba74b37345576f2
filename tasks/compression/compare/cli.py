"""``finetune-kit compress compare``: thin options -> :class:`~.config.CompareConfig` -> :func:`~.runner.run_compare`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from finetune_kit.tasks.cli_errors import EXIT_REFUSED, fail

from finetune_kit.tasks.cli_options import given, option

__all__ = ["register"]


def _floats(values: Optional[List[str]], what: str) -> Optional[list[float]]:
    if not values:
        return None
    try:
        return [float(v) for item in values for v in str(item).replace(",", " ").split()]
    except ValueError:
        typer.echo(f"error: {what} {' '.join(values)}: give numbers, e.g. {what} 0.0035,0.013", err=True)
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    """Add the ``compare`` command to the ``compress`` sub-app."""

    @app.command("compare")
    def compare_cmd(
        ctx: typer.Context,
        checkpoint: Optional[Path] = option(None, "checkpoint", help="Base checkpoint (.pt or run folder) every fine-tune starts from."),
        lmbda: Optional[List[str]] = option(None, "lambda", help="Target lambda(s): 0.0035,0.013 or repeated; two or more give BD-rates."),
        steps: Optional[int] = option(None, "steps", help="Optimizer steps per workflow (the same budget for all; a multiple of --epochs)."),
        data: Optional[Path] = option(None, "data", "-d", "--dataset", help="Training images, e.g. ../shared/data/photos-train."),
        eval_data: Optional[Path] = option(None, "eval_data", help="Evaluation images (real bitstreams), e.g. ../shared/data/kodak."),
        eval_limit: Optional[int] = option(None, "eval_limit", help="Evaluate only the first N images, sorted by name (default all)."),
        epochs: int = option(5, "epochs", "-e", help="Epochs the budget is cut into (validation after each)."),
        val_data: Optional[Path] = option(None, "val_data", help="Validation folder (default: hold out --val-fraction of --data)."),
        val_fraction: float = option(0.1, "val_fraction", help="Held-out fraction of --data."),
        val_max_batches: Optional[int] = option(None, "val_max_batches", help="Validate on at most this many batches."),
        batch_size: int = option(8, "batch_size", "-b", help="Images per batch."),
        patch_size: int = option(256, "patch_size", help="Training crop side, px, multiple of 16."),
        learning_rate: float = option(1e-4, "learning_rate", "--lr", help="Base LR of the fine-tunes (groups get it x their multiplier)."),
        scratch_learning_rate: float = option(1e-4, "scratch_learning_rate", help="LR of the from-scratch run."),
        workflows: Optional[str] = option(None, "workflows", help="Subset, comma-separated: finetune-all,wf1-basic,wf2-hierarchical,wf3-balanced,scratch (default all)."),
        output_dir: Path = option(Path("runs/compression-compare"), "output_dir", "--output", "-o", help="Parent of the comparison folder."),
        name: Optional[str] = option(None, "name", help="Comparison folder name (default compare-MODEL)."),
        resume: Optional[Path] = option(None, "resume", help="Comparison folder to continue (its config.json; finished cells kept)."),
        anchors: Optional[Path] = option(None, "anchors", help="Anchors JSON drawn on the plot (default: the shipped kodak_rd.json)."),
        seed: int = option(0, "seed", help="Random seed (the same for every workflow)."),
        threads: Optional[int] = option(None, "threads", "--num-threads", "--num_threads", help="torch CPU threads."),
        num_workers: int = option(0, "num_workers", "--workers", "-n", help="DataLoader worker processes."),
        device: str = option("auto", "device", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N."),
        cuda: bool = option(False, "cuda", help="CompressAI's flag: the same as --device cuda."),
        wandb: str = option("disabled", "wandb", help="Weights & Biases mode of the fine-tunes: disabled, offline or online."),
        progress: bool = option(True, "progress", negatable=True, help="Per-epoch lines of each fine-tune."),
    ) -> None:
        """Compare fine-tuning workflows with fine-tune-all and from-scratch at the same step budget, from one
        base checkpoint, evaluated with real bitstreams: table, R-D plot, BD-rates (docs/compression_finetuning.md)."""
        import json

        from pydantic import ValidationError

        from finetune_kit.tasks.cli_options import resolve_device
        from finetune_kit.tasks.compression.cli import _quiet

        _quiet()
        values = {k: v for k, v in ctx.params.items() if k not in ("lmbda", "cuda", "workflows")}
        values["lambdas"] = _floats(lmbda, "--lambda")
        values["workflows"] = [w.strip() for w in workflows.split(",") if w.strip()] if workflows else None
        if resume is not None:
            stored = Path(resume) / "config.json"
            if not stored.is_file():
                typer.echo(f"error: {resume} has no config.json: pass a folder written by compress compare", err=True)
                raise typer.Exit(2)
            old = json.loads(stored.read_text())
            for k in ("kind", "model", "base_lmbda", "resume"):
                old.pop(k, None)
            typed = {k: v for k, v in values.items() if k in ("lambdas", "workflows") and v is not None}
            typed.update({k: v for k, v in values.items() if k in ctx.params and given(ctx, k)})
            values = {**old, **typed, "resume": resume}
        dev, line = resolve_device(values.get("device") or "auto", cuda)
        values["device"] = dev
        typer.echo(line, err=True)
        from finetune_kit.tasks.compression.compare.config import CompareConfig

        try:
            cfg = CompareConfig(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as exc:
            err = exc.errors()[0]
            typer.echo(f"error: {'.'.join(str(x) for x in err['loc']) or 'options'}: "
                       f"{err['msg'].removeprefix('Value error, ')}", err=True)
            raise typer.Exit(2) from None
        from finetune_kit.tasks.compression.compare.runner import run_compare

        try:
            res = run_compare(cfg, echo=typer.echo)
        except (ValueError, FileNotFoundError, RuntimeError, FloatingPointError) as exc:
            fail(exc, 1 if getattr(exc, "finetune_kit_run_dir", None) else EXIT_REFUSED)  # 1: a run failed
        typer.echo(res["markdown"])
        typer.echo(f"comparison folder: {res['folder']}")
