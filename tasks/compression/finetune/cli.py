"""``finetune-kit compress finetune``: fine-tune a trained compression checkpoint.

Thin: options (flag names exactly as in the user's guides) and an optional YAML ``--config`` ->
:class:`finetune_kit.tasks.compression.finetune.config.FinetuneConfig` -> :func:`finetune_kit.tasks.compression.finetune.run.finetune`.
Options given on the command line override the YAML file. Heavy imports happen inside the command.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

_GAMMA = "constant, linear, cosine, step, adaptive, hpcm (one gamma); fixed, linear, cosine, adaptive, hierarchical (per scale)"


def register(app: typer.Typer) -> None:
    """Add the ``finetune`` command to the ``compress`` sub-app."""

    @app.command("finetune")
    def finetune_cmd(
        ctx: typer.Context,
        config: Optional[Path] = typer.Option(None, "--config", help="YAML file of these options (command-line flags override it)."),
        checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Trained checkpoint (.pt or run folder) to start from; without it training starts from scratch (warned)."),
        data: Optional[Path] = typer.Option(None, "--data", help="Folder of training images, e.g. ../shared/data/photos-train."),
        model: Optional[str] = typer.Option(None, "--model", help="Model name (default: the checkpoint's; hpcm-tiny without one)."),
        val_data: Optional[Path] = typer.Option(None, "--val_data", help="Validation folder (default: hold out --val_fraction of --data)."),
        val_fraction: Optional[float] = typer.Option(None, "--val_fraction", help="Held-out fraction of --data (default 0.1)."),
        output_dir: Optional[Path] = typer.Option(None, "--output_dir", help="Parent of the run folder (default runs/compression-finetune)."),
        name: Optional[str] = typer.Option(None, "--name", help="Run name (default MODEL-finetune-lambdaL)."),
        resume: Optional[Path] = typer.Option(None, "--resume", help="Fine-tune run folder or checkpoint to continue (all states restored)."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (default 500, as in the guides)."),
        steps_per_epoch: Optional[int] = typer.Option(None, "--steps_per_epoch", help="Batches per epoch, drawn with replacement (default: one pass)."),
        batch_size: Optional[int] = typer.Option(None, "--batch_size", help="Images per batch (default 8)."),
        patch_size: Optional[int] = typer.Option(None, "--patch_size", help="Training crop side, px, multiple of 16 (default 256)."),
        val_patch_size: Optional[int] = typer.Option(None, "--val_patch_size", help="Validation crop side (default: --patch_size)."),
        lmbda: Optional[float] = typer.Option(None, "--lambda", help="New R-D lambda (loss = lambda*255^2*MSE + bpp); default: the checkpoint's."),
        quality: Optional[int] = typer.Option(None, "--quality", help="Lambda from the paper's list, 1..6."),
        learning_rate: Optional[float] = typer.Option(None, "--learning-rate", "--learning_rate", help="Base LR (default 1e-5); groups get it times their multiplier."),
        aux_lr: Optional[float] = typer.Option(None, "--aux_lr", help="LR of the quantiles' aux loss (default 1e-3)."),
        lr_schedule: Optional[str] = typer.Option(None, "--lr_schedule", help="constant (default), cosine or discriminative."),
        warmup_epochs: Optional[float] = typer.Option(None, "--warmup_epochs", help="Global LR warm-up, epochs (constant/cosine; default 0)."),
        discriminative_warmups: Optional[str] = typer.Option(None, "--discriminative_warmups", help="Per-group warm-ups g_a,g_s,h_a,h_s,context (default 10,10,20,20,50)."),
        decay_rate: Optional[float] = typer.Option(None, "--decay_rate", help="Discriminative step decay factor (default 0.5)."),
        decay_every: Optional[int] = typer.Option(None, "--decay_every", help="Epochs between decays (default 100)."),
        lr_mults: Optional[str] = typer.Option(None, "--lr_mults", help="Layer-wise LR multipliers (default g_a:1.0,g_s:1.0,h_a:0.5,h_s:0.5,context:0.1; keys are prefixes or re:REGEX, longest wins)."),
        context_lr_ratio: Optional[float] = typer.Option(None, "--context_lr_ratio", help="LR multiplier of the context model (overrides lr_mults' context)."),
        freeze_entropy: bool = typer.Option(False, "--freeze_entropy", help="Freeze the entropy bottleneck (incl. quantiles) and the Gaussian conditional."),
        freeze_patterns: Optional[List[str]] = typer.Option(None, "--freeze_pattern", help="Regex of parameters that never train (repeatable)."),
        weight_decay: Optional[float] = typer.Option(None, "--weight_decay", help="Weight decay (default 0)."),
        weight_decay_map: Optional[str] = typer.Option(None, "--weight_decay_map", help="Per-group weight decay, e.g. context:1e-4."),
        clip_map: Optional[str] = typer.Option(None, "--clip_map", help="Per-group gradient-norm limits, e.g. context:0.5."),
        clip_max_norm: Optional[float] = typer.Option(None, "--clip_max_norm", help="Global gradient-norm clip (default 1.0; 0 disables)."),
        progressive_unfreeze: bool = typer.Option(False, "--progressive_unfreeze", help="Train g_a+g_s first, then +h_a+h_s+entropy bottleneck, then +context."),
        unfreeze_schedule: Optional[str] = typer.Option(None, "--unfreeze_schedule", help="Epochs of the 2nd and 3rd stages (default 100,200)."),
        unfreeze_warmup_epochs: Optional[int] = typer.Option(None, "--unfreeze_warmup_epochs", help="LR ramp of newly unfrozen groups, epochs (default 5)."),
        warmup_start: Optional[float] = typer.Option(None, "--warmup_start", help="LR fraction at the start of a ramp (default 0.1)."),
        use_hierarchical: bool = typer.Option(False, "--use_hierarchical", help="Per-scale R-D tasks (rate of s1/s2/s3/z, multi-scale distortion)."),
        decomposition: Optional[str] = typer.Option(None, "--decomposition", help="measured (default), fixed (the guides' ratios) or adaptive (learned ratios)."),
        pyramid: Optional[str] = typer.Option(None, "--pyramid", help="Distortion split: haar (exact, default) or laplacian."),
        scale_modulation: Optional[str] = typer.Option(None, "--scale_modulation", help="Per-scale task modulation, e.g. s1:1.0,s2:1.0,s3:1.0."),
        scale_early_stopping: bool = typer.Option(False, "--scale_early_stopping", help="Early stopping per scale on its validation R-D cost."),
        early_stopping_patience: Optional[int] = typer.Option(None, "--early_stopping_patience", help="Patience in epochs (default 50 per scale; alone: plain early stopping)."),
        early_stopping_min_delta: Optional[float] = typer.Option(None, "--early_stopping_min_delta", help="Smallest improvement of the R-D cost."),
        max_patience: Optional[int] = typer.Option(None, "--max_patience", help="Ceiling of adaptive patience (default 2x patience)."),
        use_balanced: bool = typer.Option(False, "--use_balanced", help="Balanced R-D: learned task weights (Zhang et al., CVPR 2025)."),
        adaptive_gamma: bool = typer.Option(False, "--adaptive_gamma", help="Schedule gamma (default schedule hpcm, hierarchical per scale; else gamma is constant)."),
        gamma_strategy: Optional[str] = typer.Option(None, "--gamma_strategy", help=f"Gamma schedule (implies --adaptive_gamma): {_GAMMA}."),
        gamma: Optional[float] = typer.Option(None, "--gamma", help="Start gamma (two tasks: default 0.001; hierarchical: s1's, default 0.008)."),
        gamma_final: Optional[float] = typer.Option(None, "--gamma_final", help="End gamma of the schedule (default gamma/10)."),
        scale_gammas: Optional[str] = typer.Option(None, "--scale_gammas", help="Per-scale start gammas (default s1:0.008,s2:0.006,s3:0.004)."),
        w_lr: Optional[float] = typer.Option(None, "--w_lr", help="Adam LR of the task-weight logits (default 0.025)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default 0)."),
        threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu (default, reproducible), cuda or cuda:N."),
        keep_last: Optional[int] = typer.Option(None, "--keep_last", help="Most recent checkpoints kept (default 2)."),
        keep_best: Optional[int] = typer.Option(None, "--keep_best", help="Best checkpoints kept by validation R-D cost (default 1)."),
        wandb: Optional[str] = typer.Option(None, "--wandb", help="offline (default), disabled or online."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Print the LR table and per-epoch lines."),
    ) -> None:
        """Fine-tune a trained compression model: layer-wise LRs, freezing, progressive unfreezing, balanced R-D,
        hierarchical loss, per-scale early stopping (see docs/compression_finetuning.md)."""
        import warnings

        from click.core import ParameterSource
        from pydantic import ValidationError

        from finetune_kit.tasks.compression.finetune.config import FinetuneConfig, OptionWarning, load_yaml_config

        values = dict(ctx.params)
        values.pop("config")
        values["freeze_patterns"] = values.get("freeze_patterns") or None
        try:
            merged = load_yaml_config(config) if config else {}
        except (FileNotFoundError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        for key, value in values.items():
            given = ctx.get_parameter_source(key) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
            if value is not None and (given or key not in merged) and not (value is False and key in merged):
                merged[key] = value
        if not merged.get("progress", True):
            merged["progress"] = False
        from finetune_kit.tasks.compression.finetune.run import FromScratchWarning, finetune

        with warnings.catch_warnings():  # option and from-scratch warnings: one line each
            warnings.simplefilter("always", FromScratchWarning)
            warnings.simplefilter("always", OptionWarning)
            warnings.showwarning = lambda m, c, *a, **k: typer.secho(f"WARNING: {m}", fg="yellow", err=True)
            try:
                cfg = FinetuneConfig(**merged)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(x) for x in err["loc"]) or "options"
                typer.echo(f"error: {where}: {err['msg'].removeprefix('Value error, ')}", err=True)
                raise typer.Exit(2) from None
            try:
                final = finetune(cfg)
            except (ValueError, FileNotFoundError, RuntimeError, FloatingPointError) as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from None
        typer.echo(f"run folder: {final['run_dir']}")
        typer.echo(f"best checkpoint: {final['best_checkpoint']}")
        typer.echo(f"val R-D {final.get('val_rd', float('nan')):.4f}, bpp {final.get('val_bpp', float('nan')):.4f}, "
                   f"PSNR {final.get('val_psnr', float('nan')):.2f} dB, {final['wall_seconds']:.1f} s")
