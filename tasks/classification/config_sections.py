"""The sections of a classification run's configuration: each field is declared once, here, and is
also the command-line option of ``classify``, ``compare`` and ``evaluate`` (its description is the
help; see :mod:`finetune_kit.tasks.cli_options`).

:class:`~finetune_kit.tasks.classification.config.ClassificationConfig` nests them as ``data``,
``model``, ``transforms``, ``strategy``, ``optim``, ``calibration``, ``runtime`` and ``output``.
Leaf names are unique across the sections, so a flat key (``learning_rate``) names one place.
Units: epochs for ``*_epochs``, learning rates per optimizer step, pixels for sizes.
"""
from __future__ import annotations

from typing import Any, Iterable, Literal, Optional

from pydantic import field_validator, model_validator

from finetune_kit.device import resolve_auto_device
from finetune_kit.tasks.config_base import ConfigSection, absolute_path, option_field, parse_assignments

__all__ = ["DataConfig", "ModelConfig", "TransformsConfig", "StrategyConfig", "OptimConfig", "CalibrationConfig",
           "RuntimeConfig", "OutputConfig", "parse_strategy_kwargs", "DEFAULT_EXTENSIONS"]

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def parse_strategy_kwargs(items: Iterable[str]) -> dict[str, Any]:
    """``["myopt=3", "lr_mults={\"head\": 10}", "unfreeze_schedule=2,4"]`` -> ``{"myopt": 3, ...}``:
    VALUE read as JSON when it parses, else kept as a string; a later NAME wins
    (:func:`~finetune_kit.tasks.config_base.parse_assignments`).

    Raises:
        ValueError: an item without ``=`` or with a NAME that is no identifier.
    """
    return parse_assignments(items, what="--strategy_kwargs", example="llrd_decay=0.8")


class DataConfig(ConfigSection):
    """Where the images are, how their labels are given and how they are split."""

    data: str = option_field("synthetic", "Image folder (class sub-folders, or flat with --label-preset/"
                             "--label-regex), a CSV of path,label[,split], or 'synthetic' (generated SYNTHETIC "
                             "demo set).", aliases=("-d", "--dataset"))
    layout: Literal["auto", "imagefolder", "csv", "regex"] = option_field(
        "auto", "auto: csv for a .csv file, regex with a label rule, else imagefolder.")
    label_regex: Optional[str] = option_field(None, "Regex searched in file names; a match = the positive class.")
    label_preset: Optional[Literal["acrima"]] = option_field(None, "File-name label rule: 'acrima' (_g_ = glaucoma).")
    positive_class: str = option_field("glaucoma", "File-name rule: class name of matching files (label 1).")
    negative_class: str = option_field("normal", "File-name rule: class name of the other files (label 0).")
    val_fraction: float = option_field(0.15, "Fraction held out for validation (stratified, seeded).", gt=0.0, lt=0.5)
    test_fraction: float = option_field(0.2, "Fraction held out for the test report.", ge=0.0, lt=0.5)
    split_seed: int = option_field(0, "Seed of the stratified split.")
    skip_corrupt: bool = option_field(False, "Skip unreadable images with a warning (count in metrics.json) "
                                      "instead of stopping.")
    extensions: tuple[str, ...] = option_field(DEFAULT_EXTENSIONS, "Comma-separated image extensions, "
                                               "case-insensitive.", cli="text")
    synthetic_size: int = option_field(160, "--data synthetic: side of the generated images, px.", ge=8, le=4096)
    folds: Optional[int] = option_field(None, "K-fold cross-validation (K >= 2, stratified; grouped with "
                                        "--group-regex or a CSV group column): mean, SD and bootstrap 95% CI per "
                                        "strategy.", ge=2, le=20)
    group_regex: Optional[str] = option_field(None, "Regex finding the patient id in each file name (first group, "
                                              "else the match), e.g. '^(\\d+)_' for 1234_left.jpg: no patient spans "
                                              "two splits.")
    path_column: str = option_field("path", "CSV: the column holding each image's path (relative to the CSV's "
                                    "folder).", metavar="NAME")
    label_column: str = option_field("label", "CSV: the column holding each image's class name.", metavar="NAME")
    group_column: Optional[str] = option_field(None, "CSV: the column holding the patient id (e.g. patient_id): "
                                               "no patient spans two splits (default: a 'group' column when "
                                               "present).", metavar="NAME")
    task: Literal["multiclass", "multilabel"] = option_field(
        "multiclass", "multiclass: one class per image (softmax); multilabel: --label-columns of 0/1/blank (blank = "
        "not graded, masked out of loss and metrics), sigmoid outputs.")
    label_columns: Optional[tuple[str, ...]] = option_field(None, "--task multilabel: the CSV's label columns, "
                                                            "comma-separated (e.g. DME,NPDR,PDR).", cli="text")

    @field_validator("label_columns", mode="before")
    @classmethod
    def _label_columns(cls, v):
        """``"DME,NPDR,PDR"`` -> ``("DME", "NPDR", "PDR")``."""
        if isinstance(v, str):
            v = [c.strip() for c in v.split(",") if c.strip()]
        return tuple(v) if v else None

    @field_validator("extensions", mode="before")
    @classmethod
    def _extensions(cls, v):
        """``"jpg,png"`` or ``[".jpg", "png"]`` -> ``(".jpg", ".png")`` (lower case, with the dot)."""
        if v is None:
            return DEFAULT_EXTENSIONS
        items = v.split(",") if isinstance(v, str) else v
        out = tuple("." + e.strip().lower().lstrip(".") for e in items if e.strip())
        if not out:
            raise ValueError("give at least one extension, e.g. --extensions jpg,png")
        return out

    @field_validator("data")
    @classmethod
    def _data_path(cls, v: str) -> str:
        """Folders and CSV files are stored absolute; ``synthetic`` stays the word."""
        return v if v == "synthetic" else absolute_path(v)

    @model_validator(mode="after")
    def _fractions(self) -> "DataConfig":
        if self.task == "multilabel" and not self.label_columns:
            raise ValueError("--task multilabel needs --label-columns, e.g. --label-columns DME,NPDR,PDR")
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError(f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:.2f} leaves "
                             "too little to train: keep their sum below 0.8")
        return self


class ModelConfig(ConfigSection):
    """The timm model and its weights."""

    model_name: str = option_field("mobilenetv2_100", "timm model name (timm.list_models()).", aliases=("--model",))
    pretrained: bool = option_field(False, "Download timm hub weights (needs network).")
    custom_weights_path: Optional[str] = option_field(None, "Local weights: .pth, .pth.tar or .safetensors (state "
                                                      "dict or whole checkpoint; head re-initialised when its shape "
                                                      "differs).", metavar="PATH")
    allow_partial_weights: bool = option_field(False, "Accept backbone key mismatches in --custom-weights-path "
                                               "(report only).")
    drop_rate: float = option_field(0.0, "Dropout before the classifier head (timm drop_rate).", ge=0.0, lt=1.0)
    bn_stats: Literal["auto", "frozen", "train"] = option_field(
        "auto", "BatchNorm running statistics (auto: frozen with pretrained/custom weights, train for random init).")
    channels_last: bool = option_field(False, "Model and inputs in channels-last memory format (as timm's train.py).")
    compile: bool = option_field(False, "torch.compile the model (as timm's train.py --torchcompile).")
    grad_checkpointing: bool = option_field(False, "Recompute activations in the backward pass instead of keeping "
                                            "them (timm set_grad_checkpointing): less memory, ~30 % slower.")

    @field_validator("custom_weights_path")
    @classmethod
    def _path(cls, v: Optional[str]) -> Optional[str]:
        return absolute_path(v)


class TransformsConfig(ConfigSection):
    """Input size and augmentation."""

    img_size: int = option_field(224, "Network input side in pixels.", ge=16, le=1024)
    augment: Literal["auto", "fundus", "none"] = option_field(
        "auto", "auto: none for the linear probe, so its feature cache applies; fundus otherwise.")
    clahe: bool = option_field(False, "Add CLAHE (p=0.3) to the fundus augmentation.")
    mixup: float = option_field(0.0, "Mixup alpha (0: off); uses soft-target cross-entropy.", ge=0.0)
    cutmix: float = option_field(0.0, "CutMix alpha (0: off).", ge=0.0)


class StrategyConfig(ConfigSection):
    """The fine-tuning strategy and its layer groups."""

    ft_strategy: str = option_field("gradual", "Fine-tuning strategy: {strategies} (`finetune-kit strategies` "
                                    "describes each).")
    linear_probe_epochs: int = option_field(10, "Epochs of the linear probe trained by epochs (--linear-probe-solver "
                                            "epochs); ignored by the lbfgs solver, which solves the probe exactly.",
                                            ge=1)
    linear_probe_solver: Literal["lbfgs", "epochs"] = option_field(
        "lbfgs", "lbfgs: the linear probe solved exactly (L-BFGS logistic regression on cached features, L2 "
        "strength chosen on validation; no epochs or LR); epochs: trained with AdamW.")
    probe_init: Optional[bool] = option_field(None, "Start the head from the exact linear probe (default: lp_ft "
                                              "always, gradual unless --no-probe-init, the others not).")
    gradual_patience: int = option_field(3, "gradual: epochs without val improvement before the next unfreezing "
                                         "stage.", ge=1)
    llrd_decay: float = option_field(0.9, "full/llrd, lp_ft, gradual: LR factor per layer group of depth (head "
                                     "gets 1; RETFound's --layer-decay, 0.65 there).", gt=0.0, le=1.0,
                                     aliases=("--layer-decay",))
    unfreeze_schedule: str = option_field("2,4", "progressive: completed epochs after which stages 1,2 unfreeze "
                                          "(2,4: stage 1 trains from epoch 3, stage 2 from epoch 5).")
    unfreeze_warmup_epochs: int = option_field(2, "progressive, gradual: LR ramp of newly unfrozen groups, epochs.",
                                               ge=0)
    layer_stages: Optional[list[list[str]]] = option_field(
        None, "gradual/progressive stages instead of the family default: stages by ';', group keys by ',' (e.g. "
        "'head;layer4;layer3;re:.'); cumulative.", cli="text")
    layer_patterns: Optional[list[str]] = option_field(
        None, "Layer groups from regexes instead of timm's group_matcher: repeatable, stem first, NAME=REGEX or "
        "REGEX matched at the start of parameter names; a numeric capture gives one group per value "
        "('layer=^layer(\\d)\\.'), use (?:a|b) for alternatives; the head is added last.")
    layer_preset: Optional[str] = option_field(None, "Named layer-group preset: vit|resnet|convnext|hpcm (default: "
                                               "the model's own timm group_matcher).")
    layer_granularity: Literal["stages", "blocks"] = option_field(
        "stages", "timm group_matcher coarse (layer4) or fine (layer4.1) groups, for LLRD depth and unfreezing.")
    strategy_kwargs: dict[str, Any] = option_field(
        default_factory=dict, description="Option of the chosen strategy (a plugin's too), repeatable: NAME=VALUE, "
        "VALUE read as JSON when it parses (3, 0.5, true, [1,2]), else a string; merged over the named strategy "
        "options above (compare: each strategy gets the ones it accepts).")

    @field_validator("ft_strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        from finetune_kit.strategy import strategy_class  # start-up time: the registry imports torch

        strategy_class(v)  # raises UnknownStrategyError listing the registered names
        return v

    @field_validator("layer_stages", mode="before")
    @classmethod
    def _stages(cls, v):
        """``"head;head,layer4;re:."`` (stages by ``;``, group keys by ``,``) -> list of lists."""
        if isinstance(v, str):
            v = [[k.strip() for k in stage.split(",") if k.strip()] for stage in v.split(";") if stage.strip()]
        return v or None

    @field_validator("strategy_kwargs", mode="before")
    @classmethod
    def _strategy_kwargs(cls, v):
        """``["name=value", ...]`` (the CLI's repeatable ``--strategy_kwargs``) -> dict; dicts pass."""
        if v is None:
            return {}
        if isinstance(v, (list, tuple)):
            return parse_strategy_kwargs(v)
        return v


class OptimConfig(ConfigSection):
    """Optimisation: epochs, AdamW, schedule, regularisation and the best epoch."""

    num_epochs: int = option_field(20, "Epochs for lp_ft, gradual, full and progressive.", aliases=("--epochs",), ge=1)
    # one default for classify and compare: 5e-4 with a 10x head trained full fine-tuning on ~500 ACRIMA images,
    # 1e-3 with head x1 broke it (validation AUROC 0.35): a random new head needs a faster LR than the backbone
    learning_rate: float = option_field(5e-4, "Peak AdamW learning rate (per step, after warm-up).",
                                        aliases=("--lr",), gt=0.0)
    head_lr_mult: float = option_field(10.0, "LR multiplier of the (new) classifier head when the backbone trains "
                                       "too (not for the linear probe or a probed head: lp_ft, gradual).", gt=0.0)
    weight_decay: float = option_field(0.05, "AdamW decoupled weight decay (0 for norms/biases).", ge=0.0)
    warmup_epochs: float = option_field(1.0, "Linear LR warm-up, epochs (then cosine to --min-lr).", ge=0.0)
    min_lr: float = option_field(1e-6, "LR at the end of the cosine decay.", ge=0.0)
    batch_size: int = option_field(32, "Images per forward pass (training: per micro-batch, times --accum-steps per optimizer step).",
                                   aliases=("-b",), ge=1)
    accum_steps: int = option_field(1, "Gradient accumulation: micro-batches of --batch-size per optimizer step "
                                    "(effective batch = batch size x N; LR schedule in optimizer steps).", ge=1)
    grad_clip: Optional[float] = option_field(1.0, "Max global gradient L2 norm (0: off).", gt=0.0)
    smoothing: float = option_field(0.1, "Label smoothing.", ge=0.0, lt=1.0)
    ema: bool = option_field(False, "Keep an EMA of the weights (timm ModelEmaV3) and evaluate it.")
    ema_decay: float = option_field(0.998, "Decay of the --ema weights per optimizer step.", gt=0.0, lt=1.0)
    monitor: Literal["auroc", "accuracy", "balanced_accuracy", "loss"] = option_field(
        "auroc", "Validation metric choosing the best epoch.")
    early_stopping_patience: int = option_field(0, "Stop after this many epochs without val improvement (0: off).",
                                                ge=0)

    @field_validator("grad_clip", mode="before")
    @classmethod
    def _clip_off(cls, v):
        """``0`` (the command line's "off") -> None."""
        return None if v == 0 else v


class CalibrationConfig(ConfigSection):
    """After training: the calibrator and the out-of-distribution detector."""

    calibration: Literal["auto", "temperature", "vector", "isotonic", "none"] = option_field(
        "auto", "auto: chosen on validation (none, temperature, vector or isotonic), kept only when out-of-fold NLL "
        "improves beyond its bootstrap spread; or one of them.")
    ood: bool = option_field(True, "Fit a Mahalanobis OOD detector on penultimate features after training "
                             "(RUN/ood.npz; predict/evaluate report ood_score and in_distribution).")


class RuntimeConfig(ConfigSection):
    """Where and how the run executes."""

    device: str = option_field("auto", "auto (CUDA when available, else CPU), cpu, cuda or cuda:N.",
                               validate_default=True)
    seed: int = option_field(0, "Seed of initialisation, sampling and augmentation.")
    num_threads: Optional[int] = option_field(None, "torch CPU threads (default: torch's).", aliases=("--threads",),
                                              ge=1)
    num_workers: int = option_field(0, "DataLoader worker processes augmenting images beside training (0: in the "
                                    "main process; use several on a GPU). Runs with the same value repeat exactly.",
                                    aliases=("--workers",), ge=0)
    amp: bool = option_field(False, "Mixed precision (CUDA fp16/bf16; CPU bf16 only with native support, else fp32 "
                             "with a notice).")
    amp_dtype: Literal["auto", "bf16", "fp16"] = option_field(
        "auto", "With --amp (auto: bf16 where the device has it, else fp16 with a GradScaler on CUDA).")
    feature_cache: bool = option_field(True, "Head-only epochs train on cached backbone features (same gradients, "
                                       "much faster); --no-feature-cache runs the backbone every step.")
    progress: bool = option_field(True, "Rich progress bars.")
    stop_after_epoch: Optional[int] = option_field(None, "Stop after the N-th epoch (counted from 1) as if "
                                                   "interrupted, leaving a run that --resume continues.", ge=0)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        """``auto`` -> ``cuda`` when torch sees a CUDA device, else ``cpu``; others pass unchanged."""
        return resolve_auto_device(v)


class OutputConfig(ConfigSection):
    """The run folder and logging."""

    output_dir: str = option_field("runs", "Parent folder: each run gets its own folder under it.",
                                   aliases=("--output", "-o"), metavar="PATH")
    experiment_tag: Optional[str] = option_field(None, "Run-folder prefix and wandb run name (default "
                                                 "MODEL-STRATEGY).")
    run_dir: Optional[str] = option_field(None, "The run's own folder (recorded by the run; not an option).")
    wandb: Literal["disabled", "offline", "online"] = option_field(
        "offline", "offline: RUN/wandb, `wandb sync` later.")
    wandb_project: str = option_field("finetune-kit", "wandb project.")

    @field_validator("output_dir")
    @classmethod
    def _path(cls, v: Optional[str]) -> Optional[str]:
        return absolute_path(v)
