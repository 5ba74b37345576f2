"""Typed configuration of a classification run, validated once at the edge (CLI -> here).

Every field has a default; the CLI, ``train_classification.py`` and ``compare`` build a
:class:`ClassificationConfig` and pass it to :func:`finetune_kit.tasks.classification.train.run_training`.
A run writes ``config.model_dump()`` to ``RUN/config.json``; ``--resume`` reads it back.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from finetune_kit.tasks.classification.forgetting_config import ForgettingConfig

__all__ = ["ClassificationConfig", "DataConfig", "ConfigError", "STRATEGY_FIELDS", "RECORDED_FIELDS",
           "parse_strategy_kwargs"]

#: The built-in strategies' options that are also named config fields (``--llrd_decay`` ...).
#: Each goes only to a strategy that accepts it; set explicitly for one that does not, it is an error.
STRATEGY_FIELDS = ("gradual_patience", "llrd_decay", "unfreeze_schedule", "unfreeze_warmup_epochs", "layer_stages")

#: Fields a run records about itself in ``config.json`` (not settings): a ``--config`` file or
#: ``finetune-kit rerun`` drops them, so the new run gets its own folder.
RECORDED_FIELDS = ("run_dir",)


def _absolute(v: Optional[str]) -> Optional[str]:
    """A path as an absolute string (``~`` expanded, symlinks kept), so config.json reproduces anywhere."""
    import os

    return None if v is None else os.path.abspath(os.path.expanduser(str(v)))


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the option and the fix."""


def parse_strategy_kwargs(items: Iterable[str]) -> dict[str, Any]:
    """``["myopt=3", "lr_mults={\"head\": 10}", "unfreeze_schedule=2,4"]`` -> ``{"myopt": 3, ...}``.

    Each item is ``NAME=VALUE``; VALUE becomes a JSON scalar, list or object when it parses as
    JSON (``3``, ``0.5``, ``true``, ``null``, ``[1, 2]``), otherwise it stays a string (``2,4``,
    ``head``). A later item with the same NAME wins.

    Raises:
        ValueError: an item without ``=`` or with an empty NAME.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"{item!r} is not NAME=VALUE (e.g. --strategy_kwargs llrd_decay=0.8)")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


class DataConfig(BaseModel):
    """Where the images are and how their labels are given.

    Attributes:
        data: an image folder (class sub-folders, or flat with a file-name rule), a CSV file
            (``path,label[,split]``), or ``"synthetic"`` for the embedded demo set.
        layout: ``auto`` (CSV when ``data`` ends in .csv; ``regex`` when a preset/regex is
            given; else ``imagefolder``), ``imagefolder``, ``csv`` or ``regex``.
        label_regex: regex searched in each file name; a match means the positive class
            (``positive_class``), otherwise ``negative_class``. ``acrima`` preset: ``_g_``.
        label_preset: named file-name rule (``acrima``).
        val_fraction / test_fraction: fractions of the images held out (stratified, seeded)
            when the data carries no split column.
        split_seed: seed of the stratified split (default 0).
        skip_corrupt: skip unreadable images with a warning instead of stopping.
        extensions: accepted image extensions, matched case-insensitively.
    """

    model_config = ConfigDict(extra="forbid")

    data: str = "synthetic"
    layout: Literal["auto", "imagefolder", "csv", "regex"] = "auto"
    label_regex: Optional[str] = None
    label_preset: Optional[Literal["acrima"]] = None
    positive_class: str = "glaucoma"
    negative_class: str = "normal"
    val_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.2, ge=0.0, lt=0.5)
    split_seed: int = 0
    skip_corrupt: bool = False
    extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

    @field_validator("extensions", mode="before")
    @classmethod
    def _extensions(cls, v):
        """``"jpg,png"`` or ``[".jpg", "png"]`` -> ``(".jpg", ".png")`` (lower case, with the dot)."""
        if v is None:
            return cls.model_fields["extensions"].default
        items = v.split(",") if isinstance(v, str) else v
        out = tuple("." + e.strip().lower().lstrip(".") for e in items if e.strip())
        if not out:
            raise ValueError("give at least one extension, e.g. --extensions jpg,png")
        return out
    synthetic_size: int = Field(160, ge=8, le=4096)

    @field_validator("data")
    @classmethod
    def _data_path(cls, v: str) -> str:
        """Folders and CSV files are stored absolute; ``synthetic`` stays the word."""
        return v if v == "synthetic" else _absolute(v)

    @model_validator(mode="after")
    def _fractions(self) -> "DataConfig":
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError(f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:.2f} leaves "
                             "too little to train: keep their sum below 0.8")
        return self


class ClassificationConfig(BaseModel):
    """All options of one fine-tuning run (see ``finetune-kit classify --help`` for each).

    Units: ``num_epochs``/``linear_probe_epochs``/``warmup_epochs`` in epochs; learning
    rates per optimizer step; ``img_size`` in pixels (square); ``grad_clip`` is a max L2 norm.
    """

    model_config = ConfigDict(extra="forbid")

    # data
    data: DataConfig = Field(default_factory=DataConfig)
    img_size: int = Field(224, ge=16, le=1024)
    augment: Literal["auto", "fundus", "none"] = "auto"
    clahe: bool = False
    # model
    model_name: str = "mobilenetv2_100"
    pretrained: bool = False
    custom_weights_path: Optional[str] = None
    allow_partial_weights: bool = False
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    bn_stats: Literal["auto", "frozen", "train"] = "auto"
    # strategy
    ft_strategy: str = "gradual"
    linear_probe_epochs: int = Field(10, ge=1)
    #: ``lbfgs``: the linear probe solved exactly on cached features (no epochs or LR used);
    #: ``epochs``: trained with AdamW for ``linear_probe_epochs`` (the old behaviour)
    linear_probe_solver: Literal["lbfgs", "epochs"] = "lbfgs"
    #: start the head from the exact linear probe: None = the strategy's default (``probe_first``:
    #: ``lp_ft`` always, ``gradual`` unless False), True/False = on/off for the other strategies
    probe_init: Optional[bool] = None
    #: ``--folds K`` (K >= 2): stratified K-fold cross-validation instead of one split
    folds: Optional[int] = Field(None, ge=2, le=20)
    #: regex whose first group (or whole match) in the file name is the patient id for grouped splits
    group_regex: Optional[str] = None
    #: after training: a Mahalanobis OOD detector on penultimate features (``RUN/ood.npz``)
    ood: bool = True
    #: post-hoc calibrator: ``auto`` (chosen on validation: none/temperature/vector/isotonic), or one of them
    calibration: Literal["auto", "temperature", "vector", "isotonic", "none"] = "auto"
    channels_last: bool = False
    compile: bool = False
    gradual_patience: int = Field(3, ge=1)
    llrd_decay: float = Field(0.9, gt=0.0, le=1.0)
    unfreeze_schedule: str = "2,4"
    unfreeze_warmup_epochs: int = Field(2, ge=0)
    layer_stages: Optional[list[list[str]]] = None
    layer_patterns: Optional[list[str]] = None
    layer_preset: Optional[str] = None
    layer_granularity: Literal["stages", "blocks"] = "stages"
    strategy_kwargs: dict[str, Any] = Field(default_factory=dict)
    # optimisation
    num_epochs: int = Field(20, ge=1)
    learning_rate: float = Field(1e-3, gt=0.0)
    head_lr_mult: float = Field(1.0, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    warmup_epochs: float = Field(1.0, ge=0.0)
    min_lr: float = Field(1e-6, ge=0.0)
    batch_size: int = Field(32, ge=1)
    grad_clip: Optional[float] = Field(1.0, gt=0.0)
    mixup: float = Field(0.0, ge=0.0)
    cutmix: float = Field(0.0, ge=0.0)
    smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    amp: bool = False
    amp_dtype: Literal["auto", "bf16", "fp16"] = "auto"
    ema: bool = False
    ema_decay: float = Field(0.998, gt=0.0, lt=1.0)
    monitor: Literal["auroc", "accuracy", "balanced_accuracy", "loss"] = "auroc"
    early_stopping_patience: int = Field(0, ge=0)
    feature_cache: bool = True
    seed: int = 0
    device: str = "cpu"
    num_threads: Optional[int] = Field(None, ge=1)
    num_workers: int = Field(0, ge=0)
    # outputs
    output_dir: str = "runs"
    experiment_tag: Optional[str] = None
    run_dir: Optional[str] = None
    wandb: Literal["disabled", "offline", "online"] = "offline"
    wandb_project: str = "finetune-kit"
    progress: bool = True
    stop_after_epoch: Optional[int] = Field(None, ge=0)
    # forgetting measures, WiSE-FT and L2-SP (issue 25)
    forgetting: ForgettingConfig = Field(default_factory=ForgettingConfig)

    @field_validator("custom_weights_path", "output_dir")
    @classmethod
    def _paths(cls, v: Optional[str]) -> Optional[str]:
        """Stored absolute, so a run's config.json reproduces it from any folder."""
        return _absolute(v)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        """``auto`` -> ``cuda`` when torch sees a CUDA device, else ``cpu``; others pass unchanged."""
        from finetune_kit.device import resolve_auto_device

        return resolve_auto_device(v)

    @field_validator("ft_strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        from finetune_kit.strategy import strategy_class

        strategy_class(v)  # raises UnknownStrategyError listing the registered names
        return v

    @field_validator("layer_stages", mode="before")
    @classmethod
    def _stages(cls, v):
        """``"head;head,layer4;re:."`` (stages by ``;``, group keys by ``,``) -> list of lists."""
        if isinstance(v, str):
            v = [[k.strip() for k in stage.split(",") if k.strip()] for stage in v.split(";") if stage.strip()]
        return v or None

    def layer_group_options(self) -> dict:
        """Keyword arguments of :func:`finetune_kit.layer_groups.resolve_layer_groups`.
        ``layer_patterns`` entries written ``NAME=REGEX`` name their groups; plain regexes are
        named after what they match."""
        patterns = self.layer_patterns or None
        if patterns and all(re.match(r"^[A-Za-z_][\w.]*=", p) for p in patterns):
            patterns = dict(p.split("=", 1) for p in patterns)
        return dict(patterns=patterns, preset=self.layer_preset, coarse=self.layer_granularity == "stages")

    @property
    def epochs(self) -> int:
        """Epochs this run trains: 1 (the solve) for the exact linear probe, ``linear_probe_epochs`` for a
        linear probe trained by epochs, else ``num_epochs``."""
        from finetune_kit.strategy import strategy_class

        if strategy_class(self.ft_strategy).name != "linear":
            return self.num_epochs
        return 1 if self.exact_linear_probe else self.linear_probe_epochs

    @property
    def exact_linear_probe(self) -> bool:
        """Whether a linear probe of this config is solved exactly (L-BFGS on cached features): solver
        ``lbfgs``, feature cache on, no random augmentation and no mixup/cutmix."""
        return (self.linear_probe_solver == "lbfgs" and self.feature_cache and self.augment in ("auto", "none")
                and not self.mixup and not self.cutmix)

    @property
    def probes_head(self) -> bool:
        """Whether the run solves the head as the exact linear probe before its first epoch (LP-FT's
        first step, ULMFiT's head stage solved): always for a strategy with ``probe_required``
        (``lp_ft``), else ``probe_init`` when given, else the strategy's ``probe_first`` (``gradual``).
        The ``linear`` strategy's own exact solve is :attr:`exact_linear_probe`."""
        from finetune_kit.strategy import strategy_class

        cls = strategy_class(self.ft_strategy)
        if cls.probe_required:
            return True
        return self.probe_init if self.probe_init is not None else cls.probe_first

    @property
    def tag(self) -> str:
        """Experiment tag (wandb run name, run-folder prefix); default ``MODEL-STRATEGY``."""
        return self.experiment_tag or f"{self.model_name}-{self.ft_strategy}"

    @field_validator("strategy_kwargs", mode="before")
    @classmethod
    def _strategy_kwargs(cls, v):
        """``["name=value", ...]`` (the CLI's repeatable ``--strategy_kwargs``) -> dict; dicts pass."""
        if v is None:
            return {}
        if isinstance(v, (list, tuple)):
            return parse_strategy_kwargs(v)
        return v

    def strategy_options(self) -> dict[str, Any]:
        """Keyword options for :func:`finetune_kit.strategy.get_strategy` of ``ft_strategy``.

        The named fields of :data:`STRATEGY_FIELDS` go in when the strategy accepts them (their
        config defaults included) or when they were set explicitly (then ``get_strategy`` rejects
        those it does not accept); ``monitor_mode="min"`` goes to strategies that accept it when
        ``monitor`` is ``loss``; ``strategy_kwargs`` are merged over all of these.
        """
        from finetune_kit.strategy import strategy_options

        accepted = strategy_options(self.ft_strategy)
        opts: dict[str, Any] = {}
        for name in STRATEGY_FIELDS:
            value = getattr(self, name)
            if value is not None and (name in accepted or name in self.model_fields_set):
                opts[name] = value
        if self.monitor == "loss" and "monitor_mode" in accepted:
            opts["monitor_mode"] = "min"
        opts.update(self.strategy_kwargs)
        return opts

    def for_strategy(self, name: str, **updates) -> "ClassificationConfig":
        """This config for strategy ``name`` (plus ``updates``), keeping only that strategy's options.

        Named fields of :data:`STRATEGY_FIELDS` it does not accept go back to their defaults (as if
        never given) and ``strategy_kwargs`` keeps only the keys it accepts, so one set of options
        can serve several strategies (``compare``) and a saved config validates again (``--resume``).

        Raises:
            UnknownStrategyError: unknown ``name``.
            pydantic.ValidationError: a bad value in ``updates``.
        """
        from finetune_kit.strategy import strategy_options

        accepted = strategy_options(name)
        data = self.model_dump(exclude_unset=True)
        data.update(self.model_dump(include={"data"}), ft_strategy=name, **updates)
        for field in STRATEGY_FIELDS:
            if field not in accepted and field not in updates:
                data.pop(field, None)
        data["strategy_kwargs"] = {k: v for k, v in dict(data.get("strategy_kwargs") or {}).items() if k in accepted}
        return ClassificationConfig.model_validate(data)

    def resolved_augment(self, head_only: bool) -> str:
        """``auto`` -> ``none`` for head-only strategies (so the feature cache applies), else ``fundus``.
        With ``auto``, epochs in which only the head trains (gradual/progressive stage 0) also run on
        cached un-augmented features; augmentation starts once backbone layers train."""
        if self.augment != "auto":
            return self.augment
        return "none" if head_only else "fundus"

    def check_paths(self) -> None:
        """Check files named by the config exist.

        Raises:
            ConfigError: missing data folder/CSV or weights file (names it and the fix).
        """
        d = self.data.data
        if d != "synthetic" and not Path(d).exists():
            raise ConfigError(f"--data {d}: no such folder or CSV file; pass an image folder, a CSV of path,label "
                              "or 'synthetic' for the demo set")
        if self.custom_weights_path and not Path(self.custom_weights_path).is_file():
            raise ConfigError(f"--custom_weights_path {self.custom_weights_path}: no such file; pass a .pth, "
                              ".pth.tar or .safetensors file")


def resolved_bn_stats(cfg: ClassificationConfig) -> str:
    """``auto`` -> ``frozen`` when pretrained weights are loaded (keep their running statistics,
    the usual choice for small medical sets with batches of ~32), ``train`` for random init."""
    if cfg.bn_stats != "auto":
        return cfg.bn_stats
    return "frozen" if (cfg.pretrained or cfg.custom_weights_path) else "train"
