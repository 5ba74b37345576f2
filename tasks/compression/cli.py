"""CLI commands for learned image compression: ``finetune-kit compress train|eval``.

Thin: options (the dialect of :mod:`finetune_kit.tasks.cli_options`, CompressAI's spellings as
aliases: ``-m``, ``-d/--dataset``, ``-b``, ``--cuda``, ``--save_path`` ...) and an optional
``--config FILE`` -> a validated config (``finetune_kit.tasks.compression.config``) -> a task
function. Options typed on the command line override the file; a run's own ``config.json`` is a
valid file. torch and CompressAI are imported inside the commands so ``finetune-kit --help`` stays fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Optional

import typer

from finetune_kit.tasks.cli_options import CONFIG_HELP, merge_options, option, read_config_file, resolve_device

__all__ = ["app", "compression_file_values", "collect_values", "run_train", "RECORDED_KEYS"]

app = typer.Typer(no_args_is_help=True)

_MODELS = "hpcm-tiny, hpcm-small, hpcm-base, hpcm-large, bmshj2018-hyperprior, mbt2018-mean, " \
          "cheng2020-anchor, elic2022-chandelier (hpcm_base, HPCM-Base ... are read as hpcm-base)"

#: Keys a compression run records about itself in ``config.json`` (not settings to repeat): a
#: ``--config`` file or ``finetune-kit rerun`` drops them, so the new run starts fresh in its own folder.
RECORDED_KEYS = ("run_dir", "resume", "source_lmbda")

CUDA = option(False, "cuda", help="CompressAI's flag: the same as --device cuda.")
CONFIG = option(None, "config", help=CONFIG_HELP)


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


def _fail(exc: Exception, code: int = 1) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code) from None


def compression_file_values(path: str | Path) -> dict[str, Any]:
    """The options of a compression ``--config`` file (YAML or JSON; ``lambda`` -> ``lmbda``).

    A run's ``config.json`` works: :data:`RECORDED_KEYS` are dropped and a recorded
    ``gamma_strategy`` that only restates the default (``constant``/``fixed`` without
    ``adaptive_gamma``) is left to be derived again.

    Raises:
        FileNotFoundError, ValueError: see :func:`finetune_kit.tasks.cli_options.read_config_file`.
    """
    values = read_config_file(path, renames={"lambda": "lmbda"})
    for key in RECORDED_KEYS:
        values.pop(key, None)
    derived = "fixed" if values.get("use_hierarchical") else "constant"
    if values.get("gamma_strategy") == derived and not values.get("adaptive_gamma"):
        values.pop("gamma_strategy")
    return values


def collect_values(ctx: typer.Context, params: Mapping[str, Any], config: Optional[Path]) -> dict[str, Any]:
    """defaults < ``--config`` file < typed options; ``--cuda``/``--device auto`` resolved (the
    device line is printed, the first line of output); with ``--resume RUN`` and no ``--config``,
    the run's ``config.json`` is the file (so ``--resume RUN`` alone continues it); the
    ``None`` values left out so the config's
    defaults apply. A bad file ends the command with one ``error:`` line (exit 2)."""
    params = dict(params)
    from_run = config is None and bool(params.get("resume"))
    if from_run:  # --resume RUN alone: the run's own config.json
        from finetune_kit.tasks.compression.checkpoints import resume_config_file

        config = resume_config_file(params["resume"])
    try:
        file_values = compression_file_values(config) if config else {}
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc, 2)
    if from_run:  # a typed --lambda / --quality replaces both recorded ones (quality would win otherwise)
        from finetune_kit.tasks.cli_options import given

        for typed, recorded in (("lmbda", "quality"), ("quality", "lmbda")):
            if typed in params and given(ctx, typed):
                file_values.pop(recorded, None)
    values = merge_options(ctx, params, file_values)
    device, line = resolve_device(values.get("device") or "auto", bool(values.pop("cuda", False)))
    values["device"] = device
    typer.echo(line, err=True)
    return {k: v for k, v in values.items() if v is not None}


def run_train(values: Mapping[str, Any]) -> dict:
    """Validate ``values`` (flat option names or sections) as a
    :class:`~finetune_kit.tasks.compression.run.config.TrainConfig` and run it (``device`` already
    resolved, see :func:`collect_values`). Prints the run folder; returns the final metrics. Bad
    options: one ``error:`` line, exit 2; a failed run: exit 1."""
    from finetune_kit.tasks.compression.run.config import TrainConfig
    from finetune_kit.tasks.compression.run.loop import run

    cfg = _config(TrainConfig, **values)
    try:
        final = run(cfg)
    except (ValueError, FileNotFoundError, RuntimeError, FloatingPointError) as exc:
        _fail(exc)
    typer.echo(f"run folder: {final['run_dir']}\ncheckpoint: {final.get('checkpoint')}")
    return final


@app.command("train", context_settings={"allow_extra_args": True})
def train_cmd(
    ctx: typer.Context,
    config: Optional[Path] = CONFIG,
    data: Optional[Path] = option(None, "data", "-d", "--dataset", help="Folder of training images (PNG/JPEG), "
                                  "e.g. ../shared/data/photos-train (required, here or in --config)."),
    model: str = option("hpcm-tiny", "model", "-m", "--preset", help=f"Model name: {_MODELS}."),
    val_data: Optional[Path] = option(None, "val_data", help="Validation image folder (default: hold out "
                                      "--val-fraction of --data)."),
    val_fraction: float = option(0.1, "val_fraction", help="Fraction of --data held out for validation when "
                                 "--val-data is not given."),
    val_patch_size: Optional[int] = option(None, "val_patch_size", help="Validation centre-crop side, px "
                                           "(default: --patch-size)."),
    output_dir: Path = option(Path("runs/compression"), "output_dir", "--output", "-o", "--save-path", "--save_path",
                              help="Parent folder of the run folder."),
    name: Optional[str] = option(None, "name", help="Run name (default: MODEL-METRIC-lambdaL)."),
    epochs: int = option(10, "epochs", "--num-epochs", "--num_epochs", "-e", help="Epochs (passes over the "
                         "training set, or --steps-per-epoch batches)."),
    steps_per_epoch: Optional[int] = option(None, "steps_per_epoch", help="Batches per epoch, drawn with "
                                            "replacement (default: one pass)."),
    batch_size: int = option(8, "batch_size", "-b", help="Images per batch (paper: 32)."),
    patch_size: int = option(256, "patch_size", help="Random crop side in pixels, multiple of 16 (paper: 256)."),
    lmbda: Optional[float] = option(None, "lambda", help="Rate-distortion lambda: loss = lambda*255^2*MSE + bpp "
                                    "(default: 0.0067)."),
    quality: Optional[int] = option(None, "quality", help="Pick lambda from the paper's list, 1..6 = 0.0018, "
                                    "0.0035, 0.0067, 0.013, 0.025, 0.0483."),
    metric: str = option("mse", "metric", help="Distortion: mse or ms-ssim (loss = lambda*(1-MS-SSIM) + bpp; "
                         "crops >= 161 px)."),
    lr: float = option(1e-4, "learning_rate", "--lr", help="Adam learning rate of the network."),
    aux_lr: float = option(1e-3, "aux_lr", help="Adam learning rate of the entropy bottleneck quantiles (aux loss)."),
    lr_milestones: Optional[List[int]] = option(None, "lr_milestones", help="Epochs at which the lr is multiplied "
                                                "by --lr-gamma (repeatable)."),
    lr_gamma: float = option(0.3, "lr_gamma", help="Multiplier of the lr at each milestone."),
    clip_max_norm: float = option(1.0, "clip_max_norm", help="Gradient-norm clipping (0 disables)."),
    seed: int = option(0, "seed", help="Random seed."),
    num_workers: int = option(0, "num_workers", "--workers", "-n", help="DataLoader worker processes (0: load in "
                              "the main process)."),
    threads: Optional[int] = option(None, "threads", "--num-threads", "--num_threads", help="torch CPU threads "
                                    "(default: torch's choice)."),
    device: str = option("auto", "device", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N."),
    cuda: bool = CUDA,
    cache_images: bool = option(True, "cache_images", negatable=True, help="Keep decoded training images in memory."),
    keep_last: int = option(1, "keep_last", help="Checkpoints kept besides the best one."),
    wandb: str = option("offline", "wandb", help="Weights & Biases mode: offline, disabled or online."),
    resume: Optional[Path] = option(None, "resume", help="Run folder or checkpoint to continue (same model, lambda, "
                                    "metric)."),
    progress: bool = option(True, "progress", negatable=True, help="Show progress bars and per-epoch lines."),
    use_balanced: bool = option(False, "use_balanced", help="Balanced R-D: learned distortion/rate task weights "
                                "(Zhang et al., CVPR 2025), as in compress finetune."),
    adaptive_gamma: bool = option(False, "adaptive_gamma", help="Schedule gamma (default schedule hpcm)."),
    gamma_strategy: Optional[str] = option(None, "gamma_strategy", help="Gamma schedule (implies --adaptive-gamma): "
                                           "constant, linear, cosine, step, adaptive, hpcm, hpcm-guides."),
    gamma: Optional[float] = option(None, "gamma", help="Start gamma (default 0.001)."),
    gamma_final: Optional[float] = option(None, "gamma_final", help="End gamma of the schedule (default gamma/10)."),
    w_lr: Optional[float] = option(None, "w_lr", help="Adam LR of the task-weight logits (default 0.025)."),
    gamma_window: Optional[int] = option(None, "gamma_window", help="adaptive gamma: epochs of the trend window (default 5)."),
    gamma_threshold: Optional[float] = option(None, "gamma_threshold", help="adaptive gamma: relative change counted "
                                              "as a trend (default 1e-3)."),
    adaptive_window: Optional[int] = option(None, "adaptive_window", help="The guides' name of --gamma-window."),
    adaptive_threshold: Optional[float] = option(None, "adaptive_threshold", help="The guides' name of --gamma-threshold."),
    step_epochs: Optional[List[str]] = option(None, "step_epochs", help="step gamma: decay (x0.5) at exactly these "
                                              "epochs, e.g. --step_epochs 1000 2000 (or 1000,2000)."),
) -> None:
    """Train a compression model from scratch (CompressAI recipe; writes a run folder with checkpoints)."""
    from finetune_kit.tasks.compression.finetune.cli import step_epochs_values

    params = dict(ctx.params)
    params.pop("config")
    params["step_epochs"] = step_epochs_values(ctx, step_epochs)
    run_train(collect_values(ctx, params, config))


@app.command("eval")
def eval_cmd(
    ctx: typer.Context,
    checkpoints: Optional[List[Path]] = typer.Argument(None, help="Checkpoint files (one per lambda for an R-D "
                                                       "curve); or 'checkpoints' in --config."),
    config: Optional[Path] = CONFIG,
    data: Optional[Path] = option(None, "data", "-d", "--dataset", help="Folder of test images, e.g. "
                                  "../shared/data/kodak (required, here or in --config)."),
    output: Path = option(Path("runs/compression-eval"), "output", "-o", help="Folder for results.json, "
                          "per_image.json, bd.json, rd.png."),
    model: Optional[str] = option(None, "model", "-m", help=f"Model name if the checkpoint does not record it: "
                                  f"{_MODELS}."),
    limit: Optional[int] = option(None, "limit", help="Evaluate only the first N images (sorted by name) "
                                  "(default: all)."),
    anchors: Optional[Path] = option(None, "anchors", help="Anchors JSON of R-D curves (default: the shipped "
                                     "kodak_rd.json)."),
    anchor: str = option("VTM", "anchor", help="Anchor curve for BD-rate / BD-PSNR."),
    bd_method: str = option("akima", "bd_method", help="BD interpolation: akima, pchip or cubic."),
    name: Optional[str] = option(None, "name", help="Curve name in the JSON and plot (default: the model name)."),
    threads: Optional[int] = option(None, "threads", "--num-threads", "--num_threads", help="torch CPU threads "
                                    "(default: torch's choice)."),
    device: str = option("auto", "device", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N: "
                         "transforms and context model run there, rANS coding on the CPU; decode bit-exact on the "
                         "same device type."),
    cuda: bool = CUDA,
    progress: bool = option(True, "progress", negatable=True, help="Show progress bars and per-checkpoint lines."),
    pad: str = option("edge", "pad", help="Padding to the model's side multiple: edge (right/bottom, replicate) or "
                      "centred (zeros, centred, multiple of 256: the official HPCM test.py, for the paper's R-D figures)."),
) -> None:
    """Evaluate checkpoints with real bitstreams (rANS): bpp, PSNR, MS-SSIM, times, R-D plot, BD-rate."""
    from finetune_kit.tasks.compression.config import EvalConfig

    params = dict(ctx.params)
    params.pop("config")
    if not params.get("checkpoints"):
        params["checkpoints"] = None
    cfg = _config(EvalConfig, **collect_values(ctx, params, config))
    from finetune_kit.tasks.compression.evaluate import run_eval

    try:
        res = run_eval(cfg, pad=cfg.pad)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        _fail(exc)
    bd = res["bd"]
    bd_txt = (f"BD-rate {bd['bd_rate']:+.2f} %, BD-PSNR {bd['bd_psnr']:+.3f} dB vs {bd['anchor']}"
              if bd.get("bd_rate") is not None else f"BD-rate vs {bd['anchor']}: n/a ({bd.get('reason')})")
    typer.echo(f"{bd_txt}\nresults: {Path(cfg.output) / 'results.json'}\nplot: {res['plot']}")


@app.command("convert-official")
def convert_official_cmd(
    checkpoint: Path = typer.Argument(..., help="Official HPCM checkpoint (github.com/lyq133/LIC-HPCM), e.g. 0.0067.pth.tar."),
    arch: str = option(..., "arch", help="Official architecture: base (HPCM_Base) or large (HPCM_Large)."),
    output: Optional[Path] = option(None, "output", "-o", help="Checkpoint to write (default: CKPT.hpcm-ARCH.pt beside it)."),
    lmbda: Optional[float] = option(None, "lambda", help="Lambda it was trained for (default: read from the file name)."),
) -> None:
    """Convert an official HPCM checkpoint for `compress eval` / `compress finetune` (safe load, every tensor mapped)."""
    _quiet()
    from finetune_kit.tasks.compression.convert import convert_official_checkpoint

    try:
        out, rep = convert_official_checkpoint(checkpoint, arch, output, lmbda=lmbda)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(f"{rep.summary()}\nwrote {out} (model hpcm-{arch}); evaluate with: finetune-kit compress eval {out} --data DIR --pad centred")


# `compress compare` (workflows vs fine-tune-all and from-scratch at one budget): its own module
from finetune_kit.tasks.compression.compare.cli import register as _register_compare  # noqa: E402

_register_compare(app)
