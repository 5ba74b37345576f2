"""CLI commands of the classification task: ``classify``, ``compare``, ``predict``, ``evaluate``.

Thin: options -> :class:`finetune_kit.tasks.classification.config.ClassificationConfig` -> task functions.
torch/timm are imported inside the commands so ``finetune-kit --help`` stays fast. Bad input
ends with one line ``error: ...`` naming the thing and the fix, and exit code 2.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer

__all__ = ["register", "classify", "compare", "predict", "evaluate", "build_config", "given_options"]

# timm's norm-act layers call torch.jit.script on import of some models; the deprecation notice is noise here
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)

_P = "Data"
_M = "Model"
_S = "Strategy"
_O = "Optimisation"
_R = "Outputs"

# -- shared option declarations ---------------------------------------------------------
DATA = typer.Option("synthetic", "--data", help="Image folder (class sub-folders, or flat with --label_preset/"
                    "--label_regex), a CSV of path,label[,split], or 'synthetic' (generated SYNTHETIC demo set).",
                    rich_help_panel=_P)
LAYOUT = typer.Option("auto", "--layout", help="auto|imagefolder|csv|regex.", rich_help_panel=_P)
LABEL_PRESET = typer.Option(None, "--label_preset", help="File-name label rule: 'acrima' (_g_ = glaucoma).",
                            rich_help_panel=_P)
LABEL_REGEX = typer.Option(None, "--label_regex", help="Regex searched in file names; a match = the positive class.",
                           rich_help_panel=_P)
POSITIVE = typer.Option("glaucoma", "--positive_class", help="File-name rule: class name of matching files (label 1).",
                        rich_help_panel=_P)
NEGATIVE = typer.Option("normal", "--negative_class", help="File-name rule: class name of the other files (label 0).",
                        rich_help_panel=_P)
VAL_FRACTION = typer.Option(0.15, "--val_fraction", help="Fraction held out for validation (stratified, seeded).",
                            rich_help_panel=_P)
TEST_FRACTION = typer.Option(0.2, "--test_fraction", help="Fraction held out for the test report.", rich_help_panel=_P)
SPLIT_SEED = typer.Option(0, "--split_seed", help="Seed of the stratified split.", rich_help_panel=_P)
EXTENSIONS = typer.Option(None, "--extensions", help="Comma-separated image extensions, case-insensitive "
                          "(default jpg,jpeg,png,bmp,tif,tiff,webp).", rich_help_panel=_P)
SKIP_CORRUPT = typer.Option(False, "--skip_corrupt", help="Skip unreadable images with a warning (count in "
                            "metrics.json) instead of stopping.", rich_help_panel=_P)
IMG_SIZE = typer.Option(224, "--img_size", help="Network input side in pixels.", rich_help_panel=_P)
AUGMENT = typer.Option("auto", "--augment", help="fundus|none|auto (auto: none for the linear probe, so its "
                       "feature cache applies; fundus otherwise).", rich_help_panel=_P)
CLAHE = typer.Option(False, "--clahe", help="Add CLAHE (p=0.3) to the fundus augmentation.", rich_help_panel=_P)
MODEL_NAME = typer.Option("mobilenetv2_100", "--model_name", help="timm model name (timm.list_models()).",
                          rich_help_panel=_M)
PRETRAINED = typer.Option(False, "--pretrained", help="Download timm hub weights (needs network).", rich_help_panel=_M)
WEIGHTS = typer.Option(None, "--custom_weights_path", help="Local weights: .pth, .pth.tar or .safetensors (state "
                       "dict or whole checkpoint; head re-initialised when its shape differs).", rich_help_panel=_M)
PARTIAL = typer.Option(False, "--allow-partial-weights", "--allow_partial_weights", help="Accept backbone key "
                       "mismatches in --custom_weights_path (report only).", rich_help_panel=_M)
BN_STATS = typer.Option("auto", "--bn_stats", help="BatchNorm running statistics: frozen|train|auto (auto: frozen "
                        "with pretrained/custom weights, train for random init).", rich_help_panel=_M)
STRATEGY = typer.Option("gradual", "--ft_strategy", help="linear|gradual|full (alias llrd)|progressive "
                        "(`finetune-kit strategies`).", rich_help_panel=_S)
LAYER_PATTERNS = typer.Option(None, "--layer_patterns", help="Layer groups from regexes instead of timm's "
                              "group_matcher: repeatable, stem first, [NAME=]REGEX matched at the start of parameter "
                              "names; a numeric capture gives one group per value ('layer=^layer(\\d)\\.'), use "
                              "(?:a|b) for alternatives; the head is added last.", rich_help_panel=_S)
LAYER_PRESET = typer.Option(None, "--layer_preset", help="Named layer-group preset: vit|resnet|convnext|hpcm "
                            "(default: the model's own timm group_matcher).", rich_help_panel=_S)
GRANULARITY = typer.Option("stages", "--layer_granularity", help="stages|blocks: timm group_matcher coarse "
                           "(layer4) or fine (layer4.1) groups, for LLRD depth and unfreezing.", rich_help_panel=_S)
LAYER_STAGES = typer.Option(None, "--layer_stages", help="gradual/progressive stages instead of the family default: "
                            "stages by ';', group keys by ',' (e.g. 'head;layer4;layer3;re:.'); cumulative.",
                            rich_help_panel=_S)
LP_EPOCHS = typer.Option(10, "--linear_probe_epochs", help="Epochs of the linear probe (--ft_strategy linear).",
                         rich_help_panel=_S)
PATIENCE = typer.Option(3, "--gradual_patience", help="gradual: epochs without val improvement before the next "
                        "unfreezing stage.", rich_help_panel=_S)
LLRD = typer.Option(0.9, "--llrd_decay", help="full/llrd: LR factor per layer group of depth (head gets 1).",
                    rich_help_panel=_S)
SCHEDULE = typer.Option("2,4", "--unfreeze_schedule", help="progressive: epochs (0-based) at which stages 1,2 unfreeze.",
                        rich_help_panel=_S)
UNFREEZE_WARMUP = typer.Option(2, "--unfreeze_warmup_epochs", help="progressive: LR ramp of newly unfrozen groups, "
                               "epochs.", rich_help_panel=_S)
STRATEGY_KWARGS = typer.Option(None, "--strategy_kwargs", metavar="NAME=VALUE", help="Option of the chosen strategy (a plugin's "
                               "too), repeatable: NAME=VALUE, VALUE read as JSON when it parses (3, 0.5, true, "
                               "[1,2]), else a string; merged over the named strategy options above.",
                               rich_help_panel=_S)
EPOCHS = typer.Option(20, "--num_epochs", help="Epochs for gradual/full/progressive.", rich_help_panel=_O)
LR = typer.Option(1e-3, "--learning_rate", help="Peak AdamW learning rate (per step, after warm-up).",
                  rich_help_panel=_O)
HEAD_MULT = typer.Option(1.0, "--head_lr_mult", help="LR multiplier of the (new) classifier head when the backbone "
                         "trains too (not for the linear probe).", rich_help_panel=_O)
WD = typer.Option(0.05, "--weight_decay", help="AdamW decoupled weight decay (0 for norms/biases).", rich_help_panel=_O)
WARMUP = typer.Option(1.0, "--warmup_epochs", help="Linear LR warm-up, epochs (then cosine to --min_lr).",
                      rich_help_panel=_O)
BATCH = typer.Option(32, "--batch_size", help="Images per optimizer step.", rich_help_panel=_O)
CLIP = typer.Option(1.0, "--grad_clip", help="Max global gradient L2 norm (0: off).", rich_help_panel=_O)
MIXUP = typer.Option(0.0, "--mixup", help="Mixup alpha (0: off); uses soft-target cross-entropy.", rich_help_panel=_O)
CUTMIX = typer.Option(0.0, "--cutmix", help="CutMix alpha (0: off).", rich_help_panel=_O)
SMOOTHING = typer.Option(0.1, "--smoothing", help="Label smoothing.", rich_help_panel=_O)
AMP = typer.Option(False, "--amp", help="Mixed precision (CUDA fp16/bf16; CPU bf16 only with native support, else fp32 "
                   "with a notice).", rich_help_panel=_O)
AMP_DTYPE = typer.Option("auto", "--amp_dtype", help="auto|bf16|fp16 with --amp (auto: bf16 where the device has it, "
                         "else fp16 with a GradScaler on CUDA).", rich_help_panel=_O)
EMA = typer.Option(False, "--ema", help="Keep an EMA of the weights (timm ModelEmaV3) and evaluate it.",
                   rich_help_panel=_O)
MONITOR = typer.Option("auroc", "--monitor", help="Validation metric choosing the best epoch: auroc|accuracy|"
                       "balanced_accuracy|loss.", rich_help_panel=_O)
EARLY = typer.Option(0, "--early_stopping_patience", help="Stop after this many epochs without val improvement "
                     "(0: off).", rich_help_panel=_O)
SEED = typer.Option(0, "--seed", help="Seed of initialisation, sampling and augmentation.", rich_help_panel=_O)
DEVICE = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N.", rich_help_panel=_O)
THREADS = typer.Option(None, "--num_threads", help="torch CPU threads (default: torch's).", rich_help_panel=_O)
WORKERS = typer.Option(0, "--num_workers", help="DataLoader worker processes augmenting images beside training "
                       "(0: in the main process; use several on a GPU, where augmentation is the bottleneck). "
                       "Runs with the same value repeat exactly.", rich_help_panel=_O)
OUTPUT = typer.Option("runs", "--output_dir", help="Each run gets its own folder under it.", rich_help_panel=_R)
TAG = typer.Option(None, "--experiment_tag", help="Run-folder prefix and wandb run name (default MODEL-STRATEGY).",
                   rich_help_panel=_R)
WANDB = typer.Option("offline", "--wandb", help="disabled|offline|online (offline: RUN/wandb, `wandb sync` later).",
                     rich_help_panel=_R)
PROJECT = typer.Option("finetune-kit", "--wandb_project", help="wandb project.", rich_help_panel=_R)
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Rich progress bars.", rich_help_panel=_R)


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

    data_keys = {"data", "layout", "label_regex", "label_preset", "positive_class", "negative_class", "val_fraction",
                 "test_fraction", "split_seed", "skip_corrupt", "extensions"}
    data = DataConfig(**{k: kw.pop(k) for k in list(kw) if k in data_keys})
    if kw.get("grad_clip") == 0:
        kw["grad_clip"] = None
    return ClassificationConfig(data=data, **kw)


def given_options(ctx: typer.Context, opts: dict) -> dict:
    """``opts`` without the named strategy options (``--llrd_decay`` ...) left at their defaults:
    those go only to the strategies that accept them, while one given on the command line for a
    strategy that does not accept it is an error."""
    from finetune_kit.tasks.classification.config import STRATEGY_FIELDS

    def given(name: str) -> bool:  # by name: typer may bring its own copy of click's ParameterSource
        return getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"

    return {k: v for k, v in opts.items() if k not in STRATEGY_FIELDS or given(k)}


def _console():
    from rich.console import Console

    return Console(stderr=True)


def classify(
    ctx: typer.Context,
    data: str = DATA, layout: str = LAYOUT, label_preset: Optional[str] = LABEL_PRESET,
    label_regex: Optional[str] = LABEL_REGEX, positive_class: str = POSITIVE, negative_class: str = NEGATIVE,
    val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION,
    split_seed: int = SPLIT_SEED, extensions: Optional[str] = EXTENSIONS, skip_corrupt: bool = SKIP_CORRUPT,
    img_size: int = IMG_SIZE, augment: str = AUGMENT,
    clahe: bool = CLAHE, model_name: str = MODEL_NAME, pretrained: bool = PRETRAINED,
    custom_weights_path: Optional[str] = WEIGHTS, allow_partial_weights: bool = PARTIAL, bn_stats: str = BN_STATS,
    ft_strategy: str = STRATEGY, linear_probe_epochs: int = LP_EPOCHS, gradual_patience: int = PATIENCE,
    llrd_decay: float = LLRD, unfreeze_schedule: str = SCHEDULE, unfreeze_warmup_epochs: int = UNFREEZE_WARMUP,
    layer_patterns: Optional[List[str]] = LAYER_PATTERNS, layer_preset: Optional[str] = LAYER_PRESET,
    layer_granularity: str = GRANULARITY, layer_stages: Optional[str] = LAYER_STAGES,
    strategy_kwargs: Optional[List[str]] = STRATEGY_KWARGS,
    num_epochs: int = EPOCHS, learning_rate: float = LR, head_lr_mult: float = HEAD_MULT, weight_decay: float = WD, warmup_epochs: float = WARMUP,
    batch_size: int = BATCH, grad_clip: float = CLIP, mixup: float = MIXUP, cutmix: float = CUTMIX,
    smoothing: float = SMOOTHING, amp: bool = AMP, amp_dtype: str = AMP_DTYPE, ema: bool = EMA, monitor: str = MONITOR,
    early_stopping_patience: int = EARLY, seed: int = SEED, device: str = DEVICE, num_threads: Optional[int] = THREADS,
    num_workers: int = WORKERS,
    output_dir: str = OUTPUT, experiment_tag: Optional[str] = TAG, wandb: str = WANDB, wandb_project: str = PROJECT,
    progress: bool = PROGRESS,
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue the interrupted run in this folder "
                                         "(its saved config is used; other options are ignored).", rich_help_panel=_R),
) -> None:
    """Fine-tune a timm classifier on labelled images: train, pick the best epoch by validation
    AUROC, calibrate (temperature scaling) and report test metrics in a new run folder."""
    opts = dict(locals())
    opts.pop("resume")
    opts = given_options(opts.pop("ctx"), opts)
    try:
        from finetune_kit.tasks.classification.train import resume_config, run_training

        if resume:
            cfg = resume_config(resume)
            run_training(cfg, resume=True, console=_console())
        else:
            run_training(build_config(**opts), console=_console())
    except _expected_errors() as exc:
        _fail(exc)


def compare(
    ctx: typer.Context,
    data: str = DATA, layout: str = LAYOUT, label_preset: Optional[str] = LABEL_PRESET,
    label_regex: Optional[str] = LABEL_REGEX, positive_class: str = POSITIVE, negative_class: str = NEGATIVE,
    val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION,
    split_seed: int = SPLIT_SEED, extensions: Optional[str] = EXTENSIONS, skip_corrupt: bool = SKIP_CORRUPT,
    img_size: int = IMG_SIZE, clahe: bool = CLAHE,
    model_name: str = MODEL_NAME, pretrained: bool = PRETRAINED, custom_weights_path: Optional[str] = WEIGHTS,
    allow_partial_weights: bool = PARTIAL, bn_stats: str = BN_STATS,
    strategies: str = typer.Option("linear,gradual,full,progressive", "--strategies",
                                   help="Comma-separated strategies to run.", rich_help_panel=_S),
    linear_probe_epochs: int = LP_EPOCHS, gradual_patience: int = PATIENCE, llrd_decay: float = LLRD,
    unfreeze_schedule: str = SCHEDULE, unfreeze_warmup_epochs: int = UNFREEZE_WARMUP,
    layer_patterns: Optional[List[str]] = LAYER_PATTERNS, layer_preset: Optional[str] = LAYER_PRESET,
    layer_granularity: str = GRANULARITY, layer_stages: Optional[str] = LAYER_STAGES,
    strategy_kwargs: Optional[List[str]] = typer.Option(None, "--strategy_kwargs", metavar="NAME=VALUE", help="Strategy option NAME=VALUE "
                                                        "(repeatable, VALUE read as JSON when it parses); each "
                                                        "strategy gets the ones it accepts.", rich_help_panel=_S),
    num_epochs: int = typer.Option(8, "--num_epochs", help="Epochs for gradual/full/progressive.", rich_help_panel=_O),
    learning_rate: float = typer.Option(5e-4, "--learning_rate", help="Peak AdamW LR of strategies that train the "
                                        "backbone.", rich_help_panel=_O),
    head_learning_rate: float = typer.Option(5e-3, "--head_learning_rate", help="Peak AdamW LR of the linear probe.",
                                             rich_help_panel=_O),
    head_lr_mult: float = typer.Option(10.0, "--head_lr_mult", help="LR multiplier of the new head when the backbone "
                                       "trains too.", rich_help_panel=_O),
    weight_decay: float = WD, warmup_epochs: float = WARMUP, batch_size: int = BATCH, grad_clip: float = CLIP,
    mixup: float = MIXUP, cutmix: float = CUTMIX, smoothing: float = SMOOTHING, amp: bool = AMP,
    amp_dtype: str = AMP_DTYPE, ema: bool = EMA, seed: int = SEED, device: str = DEVICE, num_threads: Optional[int] = THREADS,
    num_workers: int = WORKERS,
    output_dir: str = OUTPUT, experiment_tag: Optional[str] = TAG,
    wandb: str = typer.Option("disabled", "--wandb", help="disabled|offline|online for each run.", rich_help_panel=_R),
    progress: bool = PROGRESS,
    demo: bool = typer.Option(False, "--demo", help="Short run on the generated SYNTHETIC set with a small random-init "
                              "ResNet-18 at 64 px (no files needed; a few minutes on 2 CPU cores).", rich_help_panel=_R),
) -> None:
    """Run several fine-tuning strategies on the same data and split; write comparison.md/.csv
    and val_auroc.png (validation AUROC per epoch per strategy)."""
    opts = dict(locals())
    opts = given_options(opts.pop("ctx"), opts)
    names = [s.strip() for s in opts.pop("strategies").split(",") if s.strip()]
    head_lr = opts.pop("head_learning_rate")
    is_demo = opts.pop("demo")
    try:
        from finetune_kit.tasks.classification.compare import DEMO_HEAD_LR, DEMO_OVERRIDES, run_comparison

        if is_demo:
            opts.update(DEMO_OVERRIDES, data="synthetic", custom_weights_path=None, pretrained=False)
            head_lr = DEMO_HEAD_LR
        opts.setdefault("experiment_tag", None)
        cfg = build_config(**opts)
        title = ("SYNTHETIC demo data (generated images, not medical): " if cfg.data.data == "synthetic" else "") + \
            f"{cfg.model_name} at {cfg.img_size} px"
        out = run_comparison(cfg, names, output_dir, per_strategy={"linear": {"learning_rate": head_lr}},
                             console=_console(), title=title)
        typer.echo(out["markdown"])
        typer.echo(f"comparison written to {out['folder']}")
    except _expected_errors() as exc:
        _fail(exc)


def predict(
    run_dir: Path = typer.Argument(..., help="A finished run folder (uses checkpoints/best.pt and its temperature)."),
    images: List[str] = typer.Argument(..., help="Image files and/or folders."),
    output: Optional[Path] = typer.Option(None, "--output", help="CSV to write (default RUN/predictions.csv)."),
    skip_corrupt: bool = SKIP_CORRUPT,
) -> None:
    """Write calibrated class probabilities per image to a CSV."""
    try:
        from finetune_kit.tasks.classification.predict import predict_images

        typer.echo(f"predictions written to {predict_images(run_dir, images, output=output, skip_corrupt=skip_corrupt)}")
    except _expected_errors() as exc:
        _fail(exc)


def evaluate(
    run_dir: Path = typer.Argument(..., help="A finished run folder."),
    data: str = typer.Option(..., "--data", help="Labelled images (same layouts and label options as training).",
                             rich_help_panel=_P),
    layout: str = LAYOUT, label_preset: Optional[str] = LABEL_PRESET, label_regex: Optional[str] = LABEL_REGEX,
    positive_class: str = POSITIVE, negative_class: str = NEGATIVE, extensions: Optional[str] = EXTENSIONS,
    skip_corrupt: bool = SKIP_CORRUPT, name: str = typer.Option("external", "--name", help="Results go to RUN/eval-NAME/."),
) -> None:
    """Test metrics and plots of a finished run on any labelled image set (all its images)."""
    try:
        from finetune_kit.tasks.classification.config import DataConfig
        from finetune_kit.tasks.classification.evaluate import evaluate_run

        dc = DataConfig(data=data, layout=layout, label_preset=label_preset, label_regex=label_regex,
                        positive_class=positive_class, negative_class=negative_class, extensions=extensions,
                        skip_corrupt=skip_corrupt)
        res = evaluate_run(run_dir, dc, name=name)
        m = res["metrics"]
        typer.echo(f"{res['n_images']} images: AUROC {m['auroc']:.4f} accuracy {m['accuracy']:.4f} "
                   f"ECE {m['ece_calibrated']:.4f} (T={res['temperature']:.3f}); written to {run_dir}/eval-{name}")
    except _expected_errors() as exc:
        _fail(exc)


def register(app: typer.Typer) -> None:
    """Add ``classify``, ``compare``, ``predict`` and ``evaluate`` to the top-level app."""
    app.command("classify")(classify)
    app.command("compare")(compare)
    app.command("predict")(predict)
    app.command("evaluate")(evaluate)


def main_classify(argv: list[str] | None = None) -> None:
    """Entry of ``train_classification.py``: the ``classify`` command as a standalone program."""
    app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
    app.command()(classify)
    app(args=argv if argv is not None else sys.argv[1:], prog_name="train_classification.py")


def main_compare(argv: list[str] | None = None) -> None:
    """Entry of ``scripts/run_fine_tuning_comparison.py``: the ``compare`` command."""
    app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
    app.command()(compare)
    app(args=argv if argv is not None else sys.argv[1:], prog_name="run_fine_tuning_comparison.py")
