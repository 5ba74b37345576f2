"""``finetune-kit compress finetune``: fine-tune a trained compression checkpoint.

Thin: options (the dialect of :mod:`finetune_kit.tasks.cli_options`: dashed names, the guides'
underscore spellings as aliases, CompressAI's ``--finetune CKPT``, ``--finetune_lr``, ``-d``, ``-m``,
``-b``, ``--cuda``) and an optional ``--config`` (YAML or JSON; a fine-tune run's own
``config.json`` works) -> :class:`finetune_kit.tasks.compression.finetune.config.FinetuneConfig` ->
:func:`finetune_kit.tasks.compression.finetune.run.finetune`. Options typed on the command line
override the file. Heavy imports happen inside the command.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Optional

import typer

from finetune_kit.tasks.cli_options import CONFIG_HELP, option

__all__ = ["register", "run_finetune", "fold_aliases", "step_epochs_values"]

_GAMMA = ("constant, linear, cosine, step, adaptive, hpcm, hpcm-guides (one gamma); fixed, linear, cosine, adaptive, "
          "hierarchical, hierarchical-guides (per scale)")
_EXTRA = {"allow_extra_args": True}


def fold_aliases(values: Mapping[str, Any]) -> dict[str, Any]:
    """The guides' ``adaptive_window`` / ``adaptive_threshold`` become ``gamma_window`` /
    ``gamma_threshold``; an empty ``step_epochs`` is left out (the config's default applies)."""
    values = dict(values)
    if not values.get("step_epochs"):
        values.pop("step_epochs", None)
    for alias, key in (("adaptive_window", "gamma_window"), ("adaptive_threshold", "gamma_threshold")):
        if values.get(alias) is not None:
            values[key] = values.pop(alias)
        values.pop(alias, None)
    return values


def step_epochs_values(ctx: typer.Context, given: Optional[List[str]]) -> Optional[List[int]]:
    """``--step_epochs``: ``1000,2000``, ``--step_epochs 1000 --step_epochs 2000`` or the guides'
    ``--step_epochs 1000 2000`` (the trailing numbers arrive as extra arguments of ``ctx``).
    Extra arguments that are not epoch numbers after ``--step_epochs`` end the command with one
    ``error:`` line (exit 2)."""
    extra = list(ctx.args)
    if extra and (not given or not all(a.isdigit() for a in extra)):
        typer.echo(f"error: unexpected argument(s) {' '.join(extra)}: options take one value each "
                   "(only --step_epochs takes several numbers)", err=True)
        raise typer.Exit(2)
    if not given:
        return None
    try:
        return [int(v) for g in [*given, *extra] for v in str(g).replace(",", " ").split()]
    except ValueError:
        typer.echo(f"error: --step_epochs {' '.join(given)}: give epoch numbers, e.g. --step_epochs 1000 2000", err=True)
        raise typer.Exit(2) from None


def run_finetune(values: Mapping[str, Any]) -> dict:
    """Validate ``values`` (field names; ``device`` resolved, see
    :func:`finetune_kit.tasks.compression.cli.collect_values`) as a ``FinetuneConfig`` and fine-tune.
    Option and from-scratch warnings print one line each; prints the run folder and final
    validation numbers. Returns the final metrics. Bad options: one ``error:`` line, exit 2;
    a failed run: exit 1."""
    import warnings

    from pydantic import ValidationError

    from finetune_kit.tasks.compression.run.config import FinetuneConfig, OptionWarning
    from finetune_kit.tasks.compression.run.loop import run
    from finetune_kit.tasks.compression.run.source import FromScratchWarning

    values = dict(values)
    if not values.get("freeze_patterns"):
        values.pop("freeze_patterns", None)
    with warnings.catch_warnings():  # option and from-scratch warnings: one line each
        warnings.simplefilter("always", FromScratchWarning)
        warnings.simplefilter("always", OptionWarning)
        warnings.showwarning = lambda m, c, *a, **k: typer.secho(f"WARNING: {m}", fg="yellow", err=True)
        try:
            cfg = FinetuneConfig(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"]) or "options"
            typer.echo(f"error: {where}: {err['msg'].removeprefix('Value error, ')}", err=True)
            raise typer.Exit(2) from None
        try:
            final = run(cfg)
        except (ValueError, FileNotFoundError, RuntimeError, FloatingPointError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"run folder: {final['run_dir']}")
    typer.echo(f"best checkpoint: {final['best_checkpoint']}")
    typer.echo(f"val R-D {final.get('val_rd', float('nan')):.4f}, bpp {final.get('val_bpp', float('nan')):.4f}, "
               f"PSNR {final.get('val_psnr', float('nan')):.2f} dB, {final['wall_seconds']:.1f} s")
    return final


def register(app: typer.Typer) -> None:
    """Add the ``finetune`` command to the ``compress`` sub-app."""

    @app.command("finetune", context_settings=_EXTRA)
    def finetune_cmd(
        ctx: typer.Context,
        config: Optional[Path] = option(None, "config", help=CONFIG_HELP),
        checkpoint: Optional[Path] = option(None, "checkpoint", "--finetune", help="Trained checkpoint (.pt or run folder) to start from; without it training starts from scratch (warned)."),
        data: Optional[Path] = option(None, "data", "-d", "--dataset", help="Folder of training images, e.g. ../shared/data/photos-train."),
        model: Optional[str] = option(None, "model", "-m", help="Model name (default: the checkpoint's; hpcm-tiny without one; hpcm_base = hpcm-base)."),
        val_data: Optional[Path] = option(None, "val_data", help="Validation folder (default: hold out --val-fraction of --data)."),
        val_fraction: Optional[float] = option(None, "val_fraction", help="Held-out fraction of --data (default 0.1)."),
        val_max_batches: Optional[int] = option(None, "val_max_batches", help="Validate on at most this many batches (default: all)."),
        output_dir: Optional[Path] = option(None, "output_dir", "--output", "-o", "--save-path", "--save_path", help="Parent of the run folder (default runs/compression-finetune)."),
        name: Optional[str] = option(None, "name", help="Run name (default MODEL-finetune-lambdaL)."),
        resume: Optional[Path] = option(None, "resume", help="Fine-tune run folder or checkpoint to continue (all states restored)."),
        epochs: Optional[int] = option(None, "epochs", "--num-epochs", "--num_epochs", "-e", help="Epochs (default 500, as in the guides)."),
        steps_per_epoch: Optional[int] = option(None, "steps_per_epoch", help="Batches per epoch, drawn with replacement (default: one pass)."),
        batch_size: Optional[int] = option(None, "batch_size", "-b", help="Images per batch (default 8)."),
        patch_size: Optional[int] = option(None, "patch_size", help="Training crop side, px, multiple of 16 (default 256)."),
        val_patch_size: Optional[int] = option(None, "val_patch_size", help="Validation crop side (default: --patch-size)."),
        cache_images: Optional[bool] = option(None, "cache_images", negatable=True, help="Keep decoded training images in memory (default on)."),
        lmbda: Optional[float] = option(None, "lambda", help="New R-D lambda (loss = lambda*255^2*MSE + bpp); default: the checkpoint's."),
        quality: Optional[int] = option(None, "quality", help="Lambda from the paper's list, 1..6."),
        learning_rate: Optional[float] = option(None, "learning_rate", "--lr", "--finetune-lr", "--finetune_lr", help="Base LR (default 1e-5); groups get it times their multiplier."),
        aux_lr: Optional[float] = option(None, "aux_lr", help="LR of the quantiles' aux loss (default 1e-3)."),
        lr_schedule: Optional[str] = option(None, "lr_schedule", help="constant (default), cosine or discriminative."),
        warmup_epochs: Optional[float] = option(None, "warmup_epochs", help="Global LR warm-up, epochs (constant/cosine; default 0)."),
        min_lr: Optional[float] = option(None, "min_lr", help="End LR of the cosine schedule (default 1e-7)."),
        discriminative_warmups: Optional[str] = option(None, "discriminative_warmups", help="Per-group warm-ups g_a,g_s,h_a,h_s,context (default 10,10,20,20,50)."),
        decay_rate: Optional[float] = option(None, "decay_rate", help="Discriminative step decay factor (default 0.5)."),
        decay_every: Optional[int] = option(None, "decay_every", help="Epochs between decays (default 100)."),
        lr_mults: Optional[str] = option(None, "lr_mults", help="Layer-wise LR multipliers (default g_a:1.0,g_s:1.0,h_a:0.5,h_s:0.5,context:0.1; keys are prefixes or re:REGEX, longest wins)."),
        context_lr_ratio: Optional[float] = option(None, "context_lr_ratio", help="LR multiplier of the context model (overrides lr_mults' context)."),
        freeze_entropy: bool = option(False, "freeze_entropy", help="Freeze the entropy bottleneck (incl. quantiles) and the Gaussian conditional."),
        freeze_patterns: Optional[List[str]] = option(None, "freeze_pattern", help="Regex of parameters that never train (repeatable)."),
        weight_decay: Optional[float] = option(None, "weight_decay", help="Weight decay (default 0)."),
        weight_decay_map: Optional[str] = option(None, "weight_decay_map", help="Per-group weight decay, e.g. context:1e-4."),
        clip_map: Optional[str] = option(None, "clip_map", help="Per-group gradient-norm limits, e.g. context:0.5."),
        clip_max_norm: Optional[float] = option(None, "clip_max_norm", help="Global gradient-norm clip (default 1.0; 0 disables)."),
        progressive_unfreeze: bool = option(False, "progressive_unfreeze", help="Train g_a+g_s first, then +h_a+h_s+entropy bottleneck, then +context."),
        unfreeze_schedule: Optional[str] = option(None, "unfreeze_schedule", help="Completed epochs after which the 2nd and 3rd stages unfreeze (default 100,200; epochs counted from 1)."),
        unfreeze_warmup_epochs: Optional[int] = option(None, "unfreeze_warmup_epochs", help="LR ramp of newly unfrozen groups, epochs (default 5)."),
        warmup_start: Optional[float] = option(None, "warmup_start", help="LR fraction at the start of a ramp (default 0.1)."),
        use_hierarchical: bool = option(False, "use_hierarchical", help="Per-scale R-D tasks (rate of s1/s2/s3/z, multi-scale distortion)."),
        decomposition: Optional[str] = option(None, "decomposition", help="measured (default), fixed (the guides' ratios) or adaptive (learned ratios)."),
        pyramid: Optional[str] = option(None, "pyramid", help="Distortion split: haar (exact, default) or laplacian."),
        pyramid_levels: Optional[int] = option(None, "pyramid_levels", help="Levels of the distortion pyramid (default 3)."),
        scale_modulation: Optional[str] = option(None, "scale_modulation", help="Per-scale task modulation, e.g. s1:1.0,s2:1.0,s3:1.0."),
        scale_early_stopping: bool = option(False, "scale_early_stopping", help="Early stopping per scale on its validation R-D cost."),
        early_stopping_patience: Optional[int] = option(None, "early_stopping_patience", help="Patience in epochs (default 50 per scale; alone: plain early stopping)."),
        early_stopping_min_delta: Optional[float] = option(None, "early_stopping_min_delta", help="Smallest improvement of the R-D cost."),
        max_patience: Optional[int] = option(None, "max_patience", help="Ceiling of adaptive patience (default 2x patience)."),
        adaptive_patience: Optional[bool] = option(None, "adaptive_patience", negatable=True, help="Scale early stopping adapts its patience to the gains (default on)."),
        use_balanced: bool = option(False, "use_balanced", help="Balanced R-D: learned task weights (Zhang et al., CVPR 2025)."),
        adaptive_gamma: bool = option(False, "adaptive_gamma", help="Schedule gamma (default schedule hpcm, hierarchical per scale; else gamma is constant)."),
        gamma_strategy: Optional[str] = option(None, "gamma_strategy", help=f"Gamma schedule (implies --adaptive-gamma): {_GAMMA}."),
        gamma: Optional[float] = option(None, "gamma", help="Start gamma (two tasks: default 0.001; hierarchical: s1's, default 0.008)."),
        gamma_final: Optional[float] = option(None, "gamma_final", help="End gamma of the schedule (default gamma/10)."),
        scale_gammas: Optional[str] = option(None, "scale_gammas", help="Per-scale start gammas (default s1:0.008,s2:0.006,s3:0.004)."),
        w_lr: Optional[float] = option(None, "w_lr", help="Adam LR of the task-weight logits (default 0.025)."),
        gamma_window: Optional[int] = option(None, "gamma_window", help="adaptive gamma: epochs of the trend window (default 5)."),
        gamma_threshold: Optional[float] = option(None, "gamma_threshold", help="adaptive gamma: relative change counted as a trend (default 1e-3)."),
        adaptive_window: Optional[int] = option(None, "adaptive_window", help="The guides' name of --gamma-window."),
        adaptive_threshold: Optional[float] = option(None, "adaptive_threshold", help="The guides' name of --gamma-threshold."),
        step_epochs: Optional[List[str]] = option(None, "step_epochs", help="step gamma: decay (x0.5) at exactly these epochs, e.g. --step_epochs 1000 2000 (or 1000,2000)."),
        seed: Optional[int] = option(None, "seed", help="Random seed (default 0)."),
        num_workers: Optional[int] = option(None, "num_workers", "--workers", "-n", help="DataLoader worker processes (default 0)."),
        threads: Optional[int] = option(None, "threads", "--num-threads", "--num_threads", help="torch CPU threads."),
        device: str = option("auto", "device", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N."),
        cuda: bool = option(False, "cuda", help="CompressAI's flag: the same as --device cuda."),
        keep_last: Optional[int] = option(None, "keep_last", help="Most recent checkpoints kept (default 2)."),
        keep_best: Optional[int] = option(None, "keep_best", help="Best checkpoints kept by validation R-D cost (default 1)."),
        wandb: Optional[str] = option(None, "wandb", help="offline (default), disabled or online."),
        progress: bool = option(True, "progress", negatable=True, help="Print the LR table and per-epoch lines."),
    ) -> None:
        """Fine-tune a trained compression model: layer-wise LRs, freezing, progressive unfreezing, balanced R-D,
        hierarchical loss, per-scale early stopping (see docs/compression_finetuning.md)."""
        from finetune_kit.tasks.compression.cli import collect_values

        params = dict(ctx.params)
        params.pop("config")
        params["step_epochs"] = step_epochs_values(ctx, step_epochs)
        run_finetune(collect_values(ctx, params, config))
