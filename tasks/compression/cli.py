"""CLI commands for learned image compression: ``finetune-kit compress train|eval``.

Thin: options -> a validated config (``finetune_kit.tasks.compression.config``) -> a task function.
torch and CompressAI are imported inside the commands so ``finetune-kit --help`` stays fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(no_args_is_help=True)

_MODELS = "hpcm-tiny, hpcm-small, hpcm-base, hpcm-large, bmshj2018-hyperprior, mbt2018-mean, " \
          "cheng2020-anchor, elic2022-chandelier"


def _quiet() -> None:
    """Silence a deprecation notice CompressAI's import triggers in torch 2.14 (not actionable)."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)


def _config(cls, **kwargs):
    """Build a pydantic config; a validation error becomes one line and exit code 2."""
    from pydantic import ValidationError

    _quiet()
    try:
        return cls(**{k: v for k, v in kwargs.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "options"
        msg = err["msg"].removeprefix("Value error, ")
        typer.echo(f"error: {where}: {msg}", err=True)
        raise typer.Exit(2) from None


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1) from None


@app.command("train")
def train_cmd(
    data: Path = typer.Option(..., help="Folder of training images (PNG/JPEG), e.g. ../shared/data/photos-train."),
    model: str = typer.Option("hpcm-tiny", "--model", "--preset", help=f"Model name: {_MODELS}."),
    val_data: Optional[Path] = typer.Option(None, "--val-data", "--val_data", help="Validation image folder (default: hold out --val-fraction of --data)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", "--val_fraction", help="Fraction of --data held out for validation when --val-data is not given."),
    output_dir: Path = typer.Option(Path("runs/compression"), "--output-dir", "--output_dir", help="Parent folder of the run folder."),
    name: Optional[str] = typer.Option(None, help="Run name (default: MODEL-METRIC-lambdaL)."),
    epochs: int = typer.Option(10, help="Epochs (passes over the training set, or --steps-per-epoch batches)."),
    steps_per_epoch: Optional[int] = typer.Option(None, "--steps-per-epoch", "--steps_per_epoch", help="Batches per epoch, drawn with replacement (default: one pass)."),
    batch_size: int = typer.Option(8, "--batch-size", "--batch_size", help="Images per batch (paper: 32)."),
    patch_size: int = typer.Option(256, "--patch-size", "--patch_size", help="Random crop side in pixels, multiple of 16 (paper: 256)."),
    lmbda: Optional[float] = typer.Option(None, "--lambda", help="Rate-distortion lambda: loss = lambda*255^2*MSE + bpp (default: 0.0067)."),
    quality: Optional[int] = typer.Option(None, help="Pick lambda from the paper's list, 1..6 = 0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483."),
    metric: str = typer.Option("mse", help="Distortion: mse or ms-ssim (loss = lambda*(1-MS-SSIM) + bpp; crops >= 161 px)."),
    lr: float = typer.Option(1e-4, "--lr", "--learning-rate", "--learning_rate", help="Adam learning rate of the network."),
    aux_lr: float = typer.Option(1e-3, "--aux-lr", "--aux_lr", help="Adam learning rate of the entropy bottleneck quantiles (aux loss)."),
    lr_milestones: Optional[List[int]] = typer.Option(None, "--lr-milestones", "--lr_milestones", help="Epochs at which the lr is multiplied by --lr-gamma (repeatable)."),
    lr_gamma: float = typer.Option(0.3, "--lr-gamma", "--lr_gamma", help="Multiplier of the lr at each milestone."),
    clip_max_norm: float = typer.Option(1.0, "--clip-max-norm", "--clip_max_norm", help="Gradient-norm clipping (0 disables)."),
    seed: int = typer.Option(0, help="Random seed."),
    num_workers: int = typer.Option(0, "--num-workers", "--num_workers", help="DataLoader worker processes (0: load in the main process)."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    device: str = typer.Option("cpu", "--device", help="cpu (default, reproducible), cuda or cuda:N."),
    keep_last: int = typer.Option(1, "--keep-last", "--keep_last", help="Checkpoints kept besides the best one."),
    wandb: str = typer.Option("offline", help="Weights & Biases mode: offline, disabled or online."),
    resume: Optional[Path] = typer.Option(None, help="Run folder or checkpoint to continue (same model, lambda, metric)."),
    progress: bool = typer.Option(True, help="Show progress bars and per-epoch lines."),
) -> None:
    """Train a compression model from scratch (CompressAI recipe; writes a run folder with checkpoints)."""
    from finetune_kit.tasks.compression.config import TrainConfig

    cfg = _config(TrainConfig, data=data, model=model, val_data=val_data, val_fraction=val_fraction,
                  output_dir=output_dir, name=name, epochs=epochs, steps_per_epoch=steps_per_epoch,
                  batch_size=batch_size, patch_size=patch_size, lmbda=lmbda, quality=quality, metric=metric,
                  lr=lr, aux_lr=aux_lr, lr_milestones=lr_milestones or [], lr_gamma=lr_gamma,
                  clip_max_norm=clip_max_norm, seed=seed, num_workers=num_workers, threads=threads, device=device,
                  keep_last=keep_last, wandb=wandb, resume=resume, progress=progress)
    from finetune_kit.tasks.compression.training import train

    try:
        final = train(cfg)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        _fail(exc)
    typer.echo(f"run folder: {final['run_dir']}\ncheckpoint: {final.get('checkpoint')}")


@app.command("eval")
def eval_cmd(
    checkpoints: List[Path] = typer.Argument(..., help="Checkpoint files (one per lambda for an R-D curve)."),
    data: Path = typer.Option(..., help="Folder of test images, e.g. ../shared/data/kodak."),
    output: Path = typer.Option(Path("runs/compression-eval"), help="Folder for results.json, per_image.json, bd.json, rd.png."),
    model: Optional[str] = typer.Option(None, help=f"Model name if the checkpoint does not record it: {_MODELS}."),
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N images (sorted by name) (default: all)."),
    anchors: Optional[Path] = typer.Option(None, help="Anchors JSON of R-D curves (default: ../shared/data/anchors/kodak_rd.json if present)."),
    anchor: str = typer.Option("VTM", help="Anchor curve for BD-rate / BD-PSNR."),
    bd_method: str = typer.Option("akima", "--bd-method", "--bd_method", help="BD interpolation: akima, pchip or cubic."),
    name: Optional[str] = typer.Option(None, help="Curve name in the JSON and plot (default: the model name)."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    device: str = typer.Option("cpu", "--device", help="cpu (default), cuda or cuda:N: transforms and context model "
                               "run there, rANS coding on the CPU; decode bit-exact on the same device type."),
    progress: bool = typer.Option(True, help="Show progress bars and per-checkpoint lines."),
    pad: str = typer.Option("edge", "--pad", help="Padding to the model's side multiple: edge (right/bottom, replicate) or "
                            "centred (zeros, centred, multiple of 256: the official HPCM test.py, for the paper's R-D figures)."),
) -> None:
    """Evaluate checkpoints with real bitstreams (rANS): bpp, PSNR, MS-SSIM, times, R-D plot, BD-rate."""
    from finetune_kit.tasks.compression.config import EvalConfig

    cfg = _config(EvalConfig, checkpoints=checkpoints, data=data, output=output, model=model, limit=limit,
                  anchors=anchors, anchor=anchor, bd_method=bd_method, name=name, threads=threads, device=device,
                  progress=progress)
    from finetune_kit.tasks.compression.evaluate import run_eval

    try:
        res = run_eval(cfg, pad=pad)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        _fail(exc)
    bd = res["bd"]
    bd_txt = (f"BD-rate {bd['bd_rate']:+.2f} %, BD-PSNR {bd['bd_psnr']:+.3f} dB vs {bd['anchor']}"
              if bd.get("bd_rate") is not None else f"BD-rate vs {bd['anchor']}: n/a ({bd.get('reason')})")
    typer.echo(f"{bd_txt}\nresults: {Path(cfg.output) / 'results.json'}\nplot: {res['plot']}")


@app.command("convert-official")
def convert_official_cmd(
    checkpoint: Path = typer.Argument(..., help="Official HPCM checkpoint (github.com/lyq133/LIC-HPCM), e.g. 0.0067.pth.tar."),
    arch: str = typer.Option(..., "--arch", help="Official architecture: base (HPCM_Base) or large (HPCM_Large)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Checkpoint to write (default: CKPT.hpcm-ARCH.pt beside it)."),
    lmbda: Optional[float] = typer.Option(None, "--lambda", help="Lambda it was trained for (default: read from the file name)."),
) -> None:
    """Convert an official HPCM checkpoint for `compress eval` / `compress finetune` (safe load, every tensor mapped)."""
    _quiet()
    from finetune_kit.tasks.compression.convert import convert_official_checkpoint

    try:
        out, rep = convert_official_checkpoint(checkpoint, arch, output, lmbda=lmbda)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(f"{rep.summary()}\nwrote {out} (model hpcm-{arch}); evaluate with: finetune-kit compress eval {out} --data DIR --pad centred")
