"""CLI commands of the classification task: ``classify``, ``compare``, ``predict``, ``evaluate``.

Thin: options (the dialect of :mod:`finetune_kit.tasks.cli_options`: ``--num-epochs`` with the
alias ``--num_epochs`` and timm's ``--epochs`` ...) and an optional ``--config FILE`` ->
:class:`finetune_kit.tasks.classification.config.ClassificationConfig` -> task functions.
Options typed on the command line override the file; a run's own ``config.json`` is a valid
file. torch/timm are imported inside the commands so ``finetune-kit --help`` stays fast. Bad
input ends with one line ``error: ...`` naming the thing and the fix, and exit code 2.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, List, Mapping, Optional

import typer

from finetune_kit.tasks.cli_options import merge_options, option, resolve_device
from finetune_kit.tasks.classification.config_files import classification_file_values, drop_foreign_strategy_fields

__all__ = ["register", "classify", "compare", "predict", "evaluate", "build_config", "given_options",
           "run_classify", "run_compare", "classification_file_values", "drop_foreign_strategy_fields",
           "classify_app", "compare_app"]

# timm's norm-act layers call torch.jit.script on import of some models; the deprecation notice is noise here
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)

from finetune_kit.tasks.classification.options import (  # noqa: E402
    _M, _O, _P, _R, _S, CONFIG, DATA, LAYOUT, LABEL_PRESET, LABEL_REGEX, POSITIVE, NEGATIVE, VAL_FRACTION,
    TEST_FRACTION, SPLIT_SEED, EXTENSIONS, SKIP_CORRUPT, SYNTHETIC_SIZE, IMG_SIZE, AUGMENT, CLAHE,
    MODEL_NAME, PRETRAINED, WEIGHTS, PARTIAL, DROP_RATE, BN_STATS, STRATEGY, LAYER_PATTERNS,
    LAYER_PRESET, GRANULARITY, LAYER_STAGES, LP_EPOCHS, PATIENCE, LLRD, SCHEDULE, UNFREEZE_WARMUP,
    STRATEGY_KWARGS, EPOCHS, LR, HEAD_MULT, WD, WARMUP, MIN_LR, BATCH,
    CLIP, MIXUP, CUTMIX, SMOOTHING, AMP, AMP_DTYPE, EMA, EMA_DECAY,
    MONITOR, EARLY, FEATURE_CACHE, SEED, DEVICE, THREADS, WORKERS, OUTPUT,
    TAG, WANDB, PROJECT, PROGRESS, STOP_AFTER,
    LP_SOLVER, PROBE_INIT, FOLDS, GROUP_REGEX, OOD, CALIBRATION, CHANNELS_LAST, COMPILE,
)


def _fail(exc: BaseException) -> None:
    msg = _one_line(exc)
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def _one_line(exc: BaseException) -> str:
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover
        ValidationError = ()  # type: ignore
    if isinstance(exc, ValidationError):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e["loc"] if x != "data")
            parts.append(f"--{loc}: {e['msg']}")
        return "; ".join(parts)
    return " ".join(str(exc).split()) or type(exc).__name__


def _expected_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from finetune_kit.strategy import UnknownStrategyError
    from finetune_kit.tasks.classification.config import ConfigError
    from finetune_kit.tasks.classification.data import DataError
    from finetune_kit.tasks.classification.model import ModelError
    from finetune_kit.tasks.classification.transforms import CorruptImageError

    return (ValidationError, ConfigError, DataError, ModelError, CorruptImageError, UnknownStrategyError,
            FileNotFoundError, ValueError, TypeError)


def build_config(**kw):
    """Options (CLI names) -> validated :class:`ClassificationConfig`.

    ``grad_clip=0`` means no clipping (None). Leave out the named strategy options the user did
    not give (see :func:`given_options`), so they count as defaults, not as explicit choices.

    Raises:
        pydantic.ValidationError: a value out of range or of the wrong kind.
    """
    from finetune_kit.tasks.classification.config import ClassificationConfig, DataConfig

    data = DataConfig(**{k: kw.pop(k) for k in list(kw) if k in DataConfig.model_fields})
    if kw.get("grad_clip") == 0:
        kw["grad_clip"] = None
    return ClassificationConfig(data=data, **kw)


def given_options(ctx: typer.Context, opts: dict) -> dict:
    """``opts`` without the named strategy options (``--llrd-decay`` ...) left at their defaults:
    those go only to the strategies that accept them, while one given on the command line for a
    strategy that does not accept it is an error."""
    from finetune_kit.tasks.classification.config import STRATEGY_FIELDS
    from finetune_kit.tasks.cli_options import given

    return {k: v for k, v in opts.items() if k not in STRATEGY_FIELDS or given(ctx, k)}


def _merged(ctx: typer.Context, opts: dict, config: Optional[Path], *, one_strategy: bool = True) -> dict:
    """defaults < ``--config`` file < typed options; strategy options from the file that the run's
    strategy does not accept are dropped (a run's config.json records them all)."""
    from finetune_kit.tasks.cli_options import given

    typed = {k for k in opts if given(ctx, k)}
    file_values = classification_file_values(config) if config else {}
    merged = merge_options(ctx, given_options(ctx, opts), file_values)
    if one_strategy and file_values:
        drop_foreign_strategy_fields(merged, keep=typed)
    return merged


def _say_device(values: dict) -> None:
    """Resolve ``values["device"]`` (``auto`` -> cuda/cpu) and print it: the first line of output."""
    device, line = resolve_device(values.get("device", "auto"))
    values["device"] = device
    typer.echo(line, err=True)


def run_classify(values: Mapping[str, Any], *, console=None) -> dict:
    """Train one classification run from option values (CLI names, flat; e.g. a merged ``--config``).

    Resolves ``device`` (``auto``; printed as the first line), validates the config and calls
    :func:`finetune_kit.tasks.classification.train.run_training`. Returns its result (the
    content of ``RUN/metrics.json``).

    Raises:
        pydantic.ValidationError, ConfigError, DataError, ...: bad options or data.
    """
    from finetune_kit.tasks.classification.train import run_training

    values = dict(values)
    _say_device(values)
    cfg = build_config(**values)
    if cfg.folds:
        return _cv(cfg, [cfg.ft_strategy], None, console or _console(), f"{cfg.model_name} at {cfg.img_size} px")
    return run_training(cfg, console=console or _console())


def run_compare(values: Mapping[str, Any], *, console=None, filled: Optional[dict] = None) -> dict:
    """Run a comparison from option values (CLI names, flat, with ``strategies`` as ``"a,b"`` or a
    list and ``head_learning_rate``); prints the table. Returns ``run_comparison``'s result."""
    from finetune_kit.tasks.classification.compare import run_comparison

    values = dict(values)
    strategies = values.pop("strategies", "linear,gradual,full,progressive")
    if isinstance(strategies, str):
        strategies = strategies.split(",")
    names = [s.strip() for s in strategies if s.strip()]
    head_lr = values.pop("head_learning_rate", 5e-3)
    values.pop("demo", None)
    _say_device(values)
    if filled:
        typer.echo("--demo filled: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in filled.items())
                   + " (options you give win)", err=True)
    values.setdefault("experiment_tag", None)
    cfg = build_config(**values)
    title = ("SYNTHETIC demo data (generated images, not medical): " if cfg.data.data == "synthetic" else "") + \
        f"{cfg.model_name} at {cfg.img_size} px"
    if cfg.folds:
        return _cv(cfg, names, {"linear": {"learning_rate": head_lr}}, console or _console(), title)
    out = run_comparison(cfg, names, cfg.output_dir, per_strategy={"linear": {"learning_rate": head_lr}},
                         console=console or _console(), title=title)
    typer.echo(out["markdown"])
    typer.echo(f"comparison written to {out['folder']}")
    return out


from finetune_kit.tasks.classification.cross_validation import print_cross_validation as _cv  # noqa: E402


def _console():
    from rich.console import Console

    return Console(stderr=True)


def classify(
    ctx: typer.Context,
    config: Optional[Path] = CONFIG,
    data: str = DATA, layout: str = LAYOUT, label_preset: Optional[str] = LABEL_PRESET,
    label_regex: Optional[str] = LABEL_REGEX, positive_class: str = POSITIVE, negative_class: str = NEGATIVE,
    val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION,
    split_seed: int = SPLIT_SEED, extensions: Optional[str] = EXTENSIONS, skip_corrupt: bool = SKIP_CORRUPT,
    synthetic_size: int = SYNTHETIC_SIZE, img_size: int = IMG_SIZE, augment: str = AUGMENT,
    clahe: bool = CLAHE, model_name: str = MODEL_NAME, pretrained: bool = PRETRAINED,
    custom_weights_path: Optional[str] = WEIGHTS, allow_partial_weights: bool = PARTIAL, drop_rate: float = DROP_RATE,
    bn_stats: str = BN_STATS,
    ft_strategy: str = STRATEGY, linear_probe_epochs: int = LP_EPOCHS, gradual_patience: int = PATIENCE,
    llrd_decay: float = LLRD, unfreeze_schedule: str = SCHEDULE, unfreeze_warmup_epochs: int = UNFREEZE_WARMUP,
    layer_patterns: Optional[List[str]] = LAYER_PATTERNS, layer_preset: Optional[str] = LAYER_PRESET,
    layer_granularity: str = GRANULARITY, layer_stages: Optional[str] = LAYER_STAGES,
    strategy_kwargs: Optional[List[str]] = STRATEGY_KWARGS,
    num_epochs: int = EPOCHS, learning_rate: float = LR, head_lr_mult: float = HEAD_MULT, weight_decay: float = WD,
    warmup_epochs: float = WARMUP, min_lr: float = MIN_LR,
    batch_size: int = BATCH, grad_clip: float = CLIP, mixup: float = MIXUP, cutmix: float = CUTMIX,
    smoothing: float = SMOOTHING, amp: bool = AMP, amp_dtype: str = AMP_DTYPE, ema: bool = EMA,
    ema_decay: float = EMA_DECAY, monitor: str = MONITOR, early_stopping_patience: int = EARLY,
    feature_cache: bool = FEATURE_CACHE, seed: int = SEED, device: str = DEVICE,
    num_threads: Optional[int] = THREADS, num_workers: int = WORKERS,
    output_dir: str = OUTPUT, experiment_tag: Optional[str] = TAG, wandb: str = WANDB, wandb_project: str = PROJECT,
    linear_probe_solver: str = LP_SOLVER, probe_init: Optional[bool] = PROBE_INIT, folds: Optional[int] = FOLDS,
    group_regex: Optional[str] = GROUP_REGEX, ood: bool = OOD, calibration: str = CALIBRATION,
    channels_last: bool = CHANNELS_LAST, compile: bool = COMPILE,
    progress: bool = PROGRESS, stop_after_epoch: Optional[int] = STOP_AFTER,
    resume: Optional[str] = option(None, "resume", help="Continue the interrupted run in this folder "
                                   "(its saved config is used; other options are ignored).", rich_help_panel=_R),
) -> None:
    """Fine-tune a timm classifier on labelled images: train, pick the best epoch by validation
    AUROC, calibrate (temperature scaling) and report test metrics in a new run folder."""
    opts = dict(locals())
    ctx, config, resume = opts.pop("ctx"), opts.pop("config"), opts.pop("resume")
    try:
        from finetune_kit.tasks.classification.train import resume_config, run_training

        if resume:
            cfg = resume_config(resume)
            typer.echo(f"device: {cfg.device} (as recorded by the run)", err=True)
            run_training(cfg, resume=True, console=_console())
        else:
            run_classify(_merged(ctx, opts, config))
    except _expected_errors() as exc:
        _fail(exc)


def compare(
    ctx: typer.Context,
    config: Optional[Path] = CONFIG,
    data: str = DATA, layout: str = LAYOUT, label_preset: Optional[str] = LABEL_PRESET,
    label_regex: Optional[str] = LABEL_REGEX, positive_class: str = POSITIVE, negative_class: str = NEGATIVE,
    val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION,
    split_seed: int = SPLIT_SEED, extensions: Optional[str] = EXTENSIONS, skip_corrupt: bool = SKIP_CORRUPT,
    synthetic_size: int = SYNTHETIC_SIZE, img_size: int = IMG_SIZE, clahe: bool = CLAHE,
    model_name: str = MODEL_NAME, pretrained: bool = PRETRAINED, custom_weights_path: Optional[str] = WEIGHTS,
    allow_partial_weights: bool = PARTIAL, drop_rate: float = DROP_RATE, bn_stats: str = BN_STATS,
    strategies: str = option("linear,gradual,full,progressive", "strategies",
                             help="Comma-separated strategies to run.", rich_help_panel=_S),
    linear_probe_epochs: int = LP_EPOCHS, gradual_patience: int = PATIENCE, llrd_decay: float = LLRD,
    unfreeze_schedule: str = SCHEDULE, unfreeze_warmup_epochs: int = UNFREEZE_WARMUP,
    layer_patterns: Optional[List[str]] = LAYER_PATTERNS, layer_preset: Optional[str] = LAYER_PRESET,
    layer_granularity: str = GRANULARITY, layer_stages: Optional[str] = LAYER_STAGES,
    strategy_kwargs: Optional[List[str]] = option(None, "strategy_kwargs", metavar="NAME=VALUE", help="Strategy "
                                                  "option NAME=VALUE (repeatable, VALUE read as JSON when it "
                                                  "parses); each strategy gets the ones it accepts.",
                                                  rich_help_panel=_S),
    num_epochs: int = option(8, "num_epochs", "--epochs", help="Epochs for gradual/full/progressive.",
                             rich_help_panel=_O),
    learning_rate: float = option(5e-4, "learning_rate", "--lr", help="Peak AdamW LR of strategies that train the "
                                  "backbone.", rich_help_panel=_O),
    head_learning_rate: float = option(5e-3, "head_learning_rate", help="Peak AdamW LR of the linear probe.",
                                       rich_help_panel=_O),
    head_lr_mult: float = option(10.0, "head_lr_mult", help="LR multiplier of the new head when the backbone "
                                 "trains too (not for a probed head: lp_ft, gradual).", rich_help_panel=_O),
    weight_decay: float = WD, warmup_epochs: float = WARMUP, min_lr: float = MIN_LR, batch_size: int = BATCH,
    grad_clip: float = CLIP, mixup: float = MIXUP, cutmix: float = CUTMIX, smoothing: float = SMOOTHING,
    amp: bool = AMP, amp_dtype: str = AMP_DTYPE, ema: bool = EMA, ema_decay: float = EMA_DECAY,
    monitor: str = MONITOR, early_stopping_patience: int = EARLY, feature_cache: bool = FEATURE_CACHE,
    seed: int = SEED, device: str = DEVICE, num_threads: Optional[int] = THREADS, num_workers: int = WORKERS,
    output_dir: str = OUTPUT, experiment_tag: Optional[str] = TAG, wandb: str = WANDB, wandb_project: str = PROJECT,
    linear_probe_solver: str = LP_SOLVER, probe_init: Optional[bool] = PROBE_INIT, folds: Optional[int] = FOLDS,
    group_regex: Optional[str] = GROUP_REGEX, ood: bool = OOD, calibration: str = CALIBRATION,
    channels_last: bool = CHANNELS_LAST, compile: bool = COMPILE,
    progress: bool = PROGRESS,
    demo: bool = option(False, "demo", help="Short run on the generated SYNTHETIC set with a small random-init "
                        "ResNet-18 at 64 px (no files needed; a few minutes on 2 CPU cores); fills only the "
                        "options you do not give, and says which.", rich_help_panel=_R),
) -> None:
    """Run several fine-tuning strategies on the same data and split; write comparison.md/.csv
    and val_auroc.png (validation AUROC per epoch per strategy)."""
    opts = dict(locals())
    ctx, config = opts.pop("ctx"), opts.pop("config")
    try:
        from finetune_kit.tasks.classification.compare import DEMO_HEAD_LR, DEMO_OVERRIDES
        from finetune_kit.tasks.cli_options import given

        file_values = classification_file_values(config) if config else {}
        values = _merged(ctx, opts, config, one_strategy=False)
        filled = {}
        if values.get("demo"):
            demo_values = {**DEMO_OVERRIDES, "data": "synthetic", "custom_weights_path": None, "pretrained": False,
                           "head_learning_rate": DEMO_HEAD_LR}
            for key, value in demo_values.items():
                if not given(ctx, key) and key not in file_values:
                    values[key] = filled[key] = value
        run_compare(values, filled=filled)
    except _expected_errors() as exc:
        _fail(exc)


def predict(
    run_dir: Path = typer.Argument(..., help="A finished run folder (uses checkpoints/best.pt and its temperature)."),
    images: List[str] = typer.Argument(..., help="Image files and/or folders."),
    output: Optional[Path] = option(None, "output", "-o", help="CSV to write (default RUN/predictions.csv)."),
    skip_corrupt: bool = SKIP_CORRUPT, device: str = DEVICE,
) -> None:
    """Write calibrated class probabilities per image to a CSV."""
    try:
        from finetune_kit.tasks.classification.predict import ood_line, predict_images

        device, line = resolve_device(device)
        typer.echo(line, err=True)
        out = predict_images(run_dir, images, output=output, skip_corrupt=skip_corrupt, device=device)
        typer.echo(f"predictions written to {out}")
        if out.with_suffix(".ood.json").is_file():  # the run has an OOD detector
            typer.echo(ood_line(out.with_suffix(".ood.json")))
    except _expected_errors() as exc:
        _fail(exc)


def evaluate(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="A finished run folder."),
    config: Optional[Path] = option(None, "config", help="YAML or JSON file of the data options below (a run's "
                                    "config.json gives its data settings); typed options override it."),
    data: Optional[str] = option(None, "data", "-d", "--dataset", help="Labelled images (same layouts and label "
                                 "options as training).", rich_help_panel=_P),
    layout: str = LAYOUT, label_preset: Optional[str] = LABEL_PRESET, label_regex: Optional[str] = LABEL_REGEX,
    positive_class: str = POSITIVE, negative_class: str = NEGATIVE, extensions: Optional[str] = EXTENSIONS,
    skip_corrupt: bool = SKIP_CORRUPT, name: str = option("external", "name", help="Results go to RUN/eval-NAME/."),
    device: str = DEVICE,
) -> None:
    """Test metrics and plots of a finished run on any labelled image set (all its images)."""
    opts = dict(locals())
    ctx, config, run_dir = opts.pop("ctx"), opts.pop("config"), opts.pop("run_dir")
    try:
        from finetune_kit.tasks.classification.config import DataConfig
        from finetune_kit.tasks.classification.evaluate import evaluate_run
        from finetune_kit.runs.run_dir import safe_name

        file_values = classification_file_values(config) if config else {}
        keep = (set(opts) - {"device"}) | set(DataConfig.model_fields)
        values = merge_options(ctx, opts, {k: v for k, v in file_values.items() if k in keep})
        name = values.pop("name")
        device, line = resolve_device(values.pop("device", "auto"))
        typer.echo(line, err=True)
        if not values.get("data"):
            raise ValueError("--data: give the labelled images to evaluate on (or a --config file with data)")
        dc = DataConfig(**{k: v for k, v in values.items() if k in DataConfig.model_fields})
        res = evaluate_run(run_dir, dc, name=name, device=device)
        m = res["metrics"]
        typer.echo(f"{res['n_images']} images: AUROC {m['auroc']:.4f} accuracy {m['accuracy']:.4f} "
                   f"ECE {m['ece_calibrated']:.4f} (T={res['temperature']:.3f}); written to {run_dir}/eval-{safe_name(name)}")
    except _expected_errors() as exc:
        _fail(exc)


def register(app: typer.Typer) -> None:
    """Add ``classify``, ``compare``, ``predict`` and ``evaluate`` to the top-level app."""
    app.command("classify")(classify)
    app.command("compare")(compare)
    app.command("predict")(predict)
    app.command("evaluate")(evaluate)


def classify_app() -> typer.Typer:
    """The ``classify`` command as a standalone typer app (``train_classification.py``)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
    app.command()(classify)
    return app


def compare_app() -> typer.Typer:
    """The ``compare`` command as a standalone typer app (``scripts/run_fine_tuning_comparison.py``)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
    app.command()(compare)
    return app


def _standalone(app: typer.Typer, argv: list[str] | None, prog_name: str) -> None:
    from finetune_kit.tasks.launch import handle_launch_options

    app(args=handle_launch_options(argv if argv is not None else sys.argv[1:]), prog_name=prog_name)  # --nproc N


def main_classify(argv: list[str] | None = None) -> None:
    """Entry of ``train_classification.py``: the ``classify`` command as a standalone program."""
    _standalone(classify_app(), argv, "train_classification.py")


def main_compare(argv: list[str] | None = None) -> None:
    """Entry of ``scripts/run_fine_tuning_comparison.py``: the ``compare`` command."""
    _standalone(compare_app(), argv, "run_fine_tuning_comparison.py")
