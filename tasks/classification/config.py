"""Typed configuration of a classification run, validated once at the edge (CLI -> here).

:class:`ClassificationConfig` nests the sections of
:mod:`~finetune_kit.tasks.classification.config_sections` (``data``, ``model``, ``transforms``,
``strategy``, ``optim``, ``calibration``, ``runtime``, ``output``); every field has a default.
The CLI, ``train_classification.py`` and ``compare`` build one and pass it to
:func:`finetune_kit.tasks.classification.train.run_training`. A run writes ``config.model_dump()``
(nested) to ``RUN/config.json``; ``--resume``, ``rerun``, ``predict`` and ``evaluate`` read it back,
and the flat ``config.json`` of earlier versions too: flat keys are put in their section on
validation (:func:`~finetune_kit.tasks.config_base.nest`), so ``ClassificationConfig(learning_rate=1e-4)``
works as well. The command-only options (``--resume``, ``compare --strategies`` ...) are the small
models at the end.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from pydantic import Field, model_validator

from finetune_kit.tasks.classification.classes_config import ClassesConfig
from finetune_kit.tasks.classification.forgetting_config import ForgettingConfig
from finetune_kit.tasks.classification.config_sections import (
    CalibrationConfig, DataConfig, ModelConfig, OptimConfig, OutputConfig, RuntimeConfig, StrategyConfig,
    TransformsConfig, parse_strategy_kwargs)
from finetune_kit.tasks.config_base import ConfigSection, config_options, deep_merge, nest, option_field

__all__ = ["ClassificationConfig", "DataConfig", "ModelConfig", "TransformsConfig", "StrategyConfig", "OptimConfig",
           "CalibrationConfig", "RuntimeConfig", "OutputConfig", "ConfigError", "STRATEGY_FIELDS",
           "RECORDED_FIELDS", "ONE_OFF_FIELDS", "parse_strategy_kwargs", "resolved_bn_stats", "ResumeOptions", "CompareOptions",
           "PredictOptions", "EvaluateOptions", "COMPARE_DEFAULTS", "DEMO_OVERRIDES", "DEMO_HEAD_LR"]

#: The built-in strategies' options that are also named config fields (``--llrd_decay`` ...), all in
#: the ``strategy`` section. Each goes only to a strategy that accepts it; set explicitly for one
#: that does not, it is an error.
STRATEGY_FIELDS = ("gradual_patience", "llrd_decay", "unfreeze_schedule", "unfreeze_warmup_epochs", "layer_stages")

#: Fields a run records about itself in ``config.json`` (not settings): a ``--config`` file or
#: ``finetune-kit rerun`` drops them, so the new run gets its own folder.
RECORDED_FIELDS = ("run_dir",)
#: One-off controls of a single invocation (not settings of the experiment): a ``--config`` file or
#: ``finetune-kit rerun`` drops them too, so a rerun of a stopped-then-resumed run trains to the end.
ONE_OFF_FIELDS = ("stop_after_epoch",)


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the option and the fix."""


class ClassificationConfig(ConfigSection):
    """All options of one fine-tuning run, in sections (see ``finetune-kit classify --help``)."""

    data: DataConfig = Field(default_factory=DataConfig, title="Data")
    model: ModelConfig = Field(default_factory=ModelConfig, title="Model")
    transforms: TransformsConfig = Field(default_factory=TransformsConfig, title="Transforms")
    strategy: StrategyConfig = Field(default_factory=StrategyConfig, title="Strategy")
    optim: OptimConfig = Field(default_factory=OptimConfig, title="Optimisation")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig, title="Calibration")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, title="Runtime")
    output: OutputConfig = Field(default_factory=OutputConfig, title="Outputs")
    forgetting: ForgettingConfig = Field(default_factory=ForgettingConfig, title="Forgetting")
    classes: ClassesConfig = Field(default_factory=ClassesConfig, title="Classes")

    @model_validator(mode="before")
    @classmethod
    def _nest(cls, values: Any) -> Any:
        """Flat keys (an older flat ``config.json``, ``ClassificationConfig(learning_rate=...)``) -> sections."""
        return nest(cls, values) if isinstance(values, dict) else values

    def layer_group_options(self) -> dict:
        """Keyword arguments of :func:`finetune_kit.layer_groups.resolve_layer_groups`.
        ``layer_patterns`` entries written ``NAME=REGEX`` name their groups; plain regexes are
        named after what they match."""
        st = self.strategy
        patterns = st.layer_patterns or None
        if patterns and all(re.match(r"^[A-Za-z_][\w.]*=", p) for p in patterns):
            patterns = dict(p.split("=", 1) for p in patterns)
        return dict(patterns=patterns, preset=st.layer_preset, coarse=st.layer_granularity == "stages")

    @property
    def epochs(self) -> int:
        """Epochs this run trains: 1 (the solve) for the exact linear probe, ``linear_probe_epochs`` for a
        linear probe trained by epochs, else ``num_epochs``."""
        from finetune_kit.strategy import strategy_class  # start-up time: the registry imports torch

        if strategy_class(self.strategy.ft_strategy).name != "linear":
            return self.optim.num_epochs
        return 1 if self.exact_linear_probe else self.strategy.linear_probe_epochs

    @property
    def exact_linear_probe(self) -> bool:
        """Whether a linear probe of this config is solved exactly (L-BFGS on cached features): solver
        ``lbfgs``, feature cache on, no random augmentation and no mixup/cutmix."""
        tf = self.transforms
        return (self.strategy.linear_probe_solver == "lbfgs" and self.runtime.feature_cache
                and tf.augment in ("auto", "none") and not tf.mixup and not tf.cutmix)

    @property
    def probes_head(self) -> bool:
        """Whether the run solves the head as the exact linear probe before its first epoch (LP-FT's
        first step, ULMFiT's head stage solved): always for a strategy with ``probe_required``
        (``lp_ft``), else ``probe_init`` when given, else the strategy's ``probe_first`` (``gradual``).
        The ``linear`` strategy's own exact solve is :attr:`exact_linear_probe`."""
        from finetune_kit.strategy import strategy_class  # start-up time: the registry imports torch

        cls = strategy_class(self.strategy.ft_strategy)
        if cls.probe_required:
            return True
        return self.strategy.probe_init if self.strategy.probe_init is not None else cls.probe_first

    @property
    def tag(self) -> str:
        """Experiment tag (wandb run name, run-folder prefix); default ``MODEL-STRATEGY``."""
        return self.output.experiment_tag or f"{self.model.model_name}-{self.strategy.ft_strategy}"

    def strategy_options(self) -> dict[str, Any]:
        """Keyword options for :func:`finetune_kit.strategy.get_strategy` of ``strategy.ft_strategy``.

        The named fields of :data:`STRATEGY_FIELDS` go in when the strategy accepts them (their
        config defaults included) or when they were set explicitly (then ``get_strategy`` rejects
        those it does not accept); ``monitor_mode="min"`` goes to strategies that accept it when
        ``optim.monitor`` is ``loss``; ``strategy_kwargs`` are merged over all of these.
        """
        from finetune_kit.strategy import strategy_options  # start-up time: the registry imports torch

        st = self.strategy
        accepted = strategy_options(st.ft_strategy)
        opts: dict[str, Any] = {}
        for name in STRATEGY_FIELDS:
            value = getattr(st, name)
            if value is not None and (name in accepted or name in st.model_fields_set):
                opts[name] = value
        if self.optim.monitor == "loss" and "monitor_mode" in accepted:
            opts["monitor_mode"] = "min"
        opts.update(st.strategy_kwargs)
        return opts

    def for_strategy(self, name: str, **updates: Any) -> "ClassificationConfig":
        """This config for strategy ``name`` (plus ``updates``: leaf names, e.g. ``learning_rate=5e-3``),
        keeping only that strategy's options.

        Named fields of :data:`STRATEGY_FIELDS` it does not accept go back to their defaults (as if
        never given) and ``strategy_kwargs`` keeps only the keys it accepts, so one set of options
        can serve several strategies (``compare``) and a saved config validates again (``--resume``).

        Raises:
            UnknownStrategyError: unknown ``name``.
            pydantic.ValidationError: a bad value in ``updates``.
        """
        from finetune_kit.strategy import strategy_options  # start-up time: the registry imports torch

        accepted = strategy_options(name)
        data = deep_merge(self.model_dump(exclude_unset=True), {"data": self.data.model_dump()})
        data = deep_merge(data, nest(ClassificationConfig, {**updates, "ft_strategy": name}))
        strategy = data["strategy"]
        for field in STRATEGY_FIELDS:
            if field not in accepted and field not in updates:
                strategy.pop(field, None)
        strategy["strategy_kwargs"] = {k: v for k, v in dict(strategy.get("strategy_kwargs") or {}).items()
                                       if k in accepted}
        return ClassificationConfig.model_validate(data)

    def replace(self, **leaves: Any) -> "ClassificationConfig":
        """A copy with leaf fields changed, by leaf name (``cfg.replace(run_dir="...", folds=None)``);
        like ``model_copy(update=...)``, the values are not validated again.

        Raises:
            KeyError: a name that is no field of the config.
        """
        paths = {o.name: o.path for o in config_options(ClassificationConfig)}
        updates: dict[str, dict[str, Any]] = {}
        for name, value in leaves.items():
            section, field = paths[name]
            updates.setdefault(section, {})[field] = value
        return self.model_copy(update={s: getattr(self, s).model_copy(update=u) for s, u in updates.items()})

    def resolved_augment(self, head_only: bool) -> str:
        """``auto`` -> ``none`` for head-only strategies (so the feature cache applies), else ``fundus``.
        With ``auto``, epochs in which only the head trains (gradual/progressive stage 0) also run on
        cached un-augmented features; augmentation starts once backbone layers train."""
        if self.transforms.augment != "auto":
            return self.transforms.augment
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
        weights = self.model.custom_weights_path
        if weights and not Path(weights).is_file():
            raise ConfigError(f"--custom_weights_path {weights}: no such file; pass a .pth, .pth.tar or "
                              ".safetensors file")


def resolved_bn_stats(cfg: ClassificationConfig) -> str:
    """``auto`` -> ``frozen`` when pretrained weights are loaded (keep their running statistics,
    the usual choice for small medical sets with batches of ~32), ``train`` for random init."""
    model = cfg.model
    if model.bn_stats != "auto":
        return model.bn_stats
    return "frozen" if (model.pretrained or model.custom_weights_path) else "train"


# -- options of one command, not of the run -------------------------------------------------------

#: ``compare``'s own defaults: shorter runs (several strategies in one command); the LR and head multiplier
#: are the run defaults, the same as ``classify``'s.
COMPARE_DEFAULTS = {"num_epochs": 8}
#: ``compare --demo``: the SYNTHETIC set, a small randomly initialised ResNet-18 at 64 px.
DEMO_OVERRIDES = dict(model_name="resnet18", img_size=64, num_epochs=10, linear_probe_epochs=20, batch_size=32,
                      learning_rate=3e-3, head_lr_mult=1.0, gradual_patience=1, unfreeze_schedule="2,4",
                      unfreeze_warmup_epochs=1, warmup_epochs=0.5, num_threads=1)
#: ``compare --demo``: LR of the linear probe (random-init features are small, so it is high).
DEMO_HEAD_LR = 3e-2


class ResumeOptions(ConfigSection):
    """``classify --resume RUN`` and ``compare --resume COMPARE_FOLDER``."""

    resume: Optional[str] = option_field(None, "Continue the interrupted run in this folder (compare: finish the "
                                         "comparison folder: completed strategies kept, unfinished ones continued, "
                                         "missing ones run); its saved config is used, other options are ignored.",
                                         metavar="RUN")


class CompareOptions(ConfigSection):
    """What ``compare`` adds to a run's options."""

    strategies: str = option_field("linear,gradual,full,progressive", "Comma-separated strategies to run.")
    head_learning_rate: float = option_field(5e-3, "Peak AdamW LR of the linear probe.", gt=0.0)
    demo: bool = option_field(False, "Short run on the generated SYNTHETIC set with a small random-init ResNet-18 "
                              "at 64 px (no files needed; a few minutes on 2 CPU cores); fills only the options you "
                              "do not give, and says which.")


class PredictOptions(ConfigSection):
    """What ``predict`` adds to the data and runtime options it shares."""

    output: Optional[str] = option_field(None, "CSV to write (default RUN/predictions.csv).", aliases=("-o",),
                                         metavar="PATH")
    explain: bool = option_field(False, "Also write a Grad-CAM overlay PNG per image (predicted class and its "
                                 "probability in the name and title) to <CSV stem>-explain/ beside the CSV.")


class EvaluateOptions(ConfigSection):
    """What ``evaluate`` adds to the data options."""

    name: str = option_field("external", "Results go to RUN/eval-NAME/.")
