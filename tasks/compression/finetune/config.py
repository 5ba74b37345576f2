"""Typed configuration of ``finetune-kit compress finetune`` (validated once, loadable from YAML).

Field names follow the user's guides (``freeze_entropy``, ``context_lr_ratio``, ``use_balanced``
...); ``lambda`` and ``learning-rate`` are accepted as aliases of ``lmbda`` / ``learning_rate``
(in YAML too). Units: epochs are passes over the training set (or ``steps_per_epoch`` batches);
LRs are absolute for ``learning_rate`` and multipliers elsewhere; ``lmbda`` weighs
``lmbda * 255^2 * MSE + bpp``.

Options that would be silently ignored get one :class:`OptionWarning` each at validation:
``--gamma``/``--gamma_final``/... without ``--use_balanced``, ``--gamma_final`` with a constant
gamma, and an ``--unfreeze_schedule`` epoch at or past ``--epochs`` (that stage never unfreezes).
``--gamma_strategy`` alone turns the schedule on (``--adaptive_gamma`` is implied, as in the
guides, which always give both).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import AliasChoices, ConfigDict, Field, field_validator, model_validator

from finetune_kit.tasks.compression.config import RunConfigBase, absolute_path
from finetune_kit.tasks.compression.finetune.gamma_schedules import GAMMA_STRATEGIES, SCALE_GAMMA_STRATEGIES
from finetune_kit.tasks.compression.finetune.lr_manager import DEFAULT_LR_MULTS

__all__ = ["FinetuneConfig", "OptionWarning", "load_yaml_config", "SCALE_MODULATION_PRESETS", "resolve_scale_modulation",
           "check_hierarchical_effect"]

#: named ``--scale_modulation`` values. ``guides``: the guides' coarse-first emphasis, their fixed
#: distortion shares 0.40 / 0.35 / 0.25 (s1 / s2 / s3) relative to an even third each
#: (x3: 1.2 / 1.05 / 0.75). ``uniform``: every scale 1 (the plain R-D loss).
SCALE_MODULATION_PRESETS = {"guides": "s1:1.2,s2:1.05,s3:0.75", "uniform": "s1:1.0,s2:1.0,s3:1.0"}


def resolve_scale_modulation(value: Optional[str], use_hierarchical: bool = True,
                             use_balanced: bool = False) -> dict[str, float]:
    """``{"s1", "s2", "s3": factor}`` of a ``--scale_modulation`` value: a preset name of
    :data:`SCALE_MODULATION_PRESETS` or ``"s1:1.2,s2:1.0,s3:0.8"`` (missing scales 1). ``None``
    is ``guides`` for the hierarchical loss without balancing (so it is never a no-op), else uniform.

    Raises:
        ValueError: an unknown scale key or a factor <= 0.
    """
    from finetune_kit.param_groups import parse_multipliers

    if value is None:
        value = "guides" if use_hierarchical and not use_balanced else "uniform"
    raw = parse_multipliers(SCALE_MODULATION_PRESETS.get(str(value).strip(), value))
    bad = [k for k in raw if k not in ("s1", "s2", "s3")]
    if bad or any(v <= 0 for v in raw.values()):
        raise ValueError(f"--scale_modulation {value!r}: give s1/s2/s3 factors > 0 (e.g. s1:1.2,s2:1.05,s3:0.75) or a "
                         f"preset ({', '.join(SCALE_MODULATION_PRESETS)})")
    return {"s1": 1.0, "s2": 1.0, "s3": 1.0, **raw}


def check_hierarchical_effect(use_hierarchical: bool, use_balanced: bool, scale_modulation: Optional[str]) -> None:
    """The hierarchical loss alone is never a silent no-op: its tasks sum to the plain R-D loss, so
    without balancing it needs per-scale factors that are not all equal.

    Raises:
        ValueError: ``--use_hierarchical`` without ``--use_balanced`` and a uniform ``--scale_modulation``
            (names both options that give it an effect); a bad modulation value.
    """
    if not use_hierarchical:
        return
    mod = resolve_scale_modulation(scale_modulation, use_hierarchical, use_balanced)
    if not use_balanced and len(set(mod.values())) == 1:
        raise ValueError(f"--use_hierarchical with --scale_modulation {scale_modulation} and no --use_balanced changes "
                         "nothing (the per-scale tasks sum to the plain R-D loss, scaled by one factor): add --use_balanced, "
                         "or give unequal factors, e.g. --scale_modulation guides (s1:1.2,s2:1.05,s3:0.75)")


class OptionWarning(UserWarning):
    """An option was given that has no effect with the other options (the message names both)."""


class FinetuneConfig(RunConfigBase):
    """Options of ``compress finetune``; see ``docs/compression_finetuning.md`` for each one.

    Shared options (data, crops, batch size, device, seed, run folder ...) are in
    :class:`~finetune_kit.tasks.compression.config.RunConfigBase`; defaults that differ here:
    ``output_dir`` ``runs/compression-finetune``, ``epochs`` 500, ``keep_last`` 2."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # source, data, run
    checkpoint: Optional[Path] = Field(None, description="trained checkpoint to fine-tune (None: from scratch, warned)")
    model: Optional[str] = Field(None, description="model name; default: the checkpoint's, else hpcm-tiny")
    output_dir: Path = Path("runs/compression-finetune")
    epochs: int = Field(500, ge=1, description="guides: 500 epochs instead of 3000+ from scratch")
    val_max_batches: Optional[int] = Field(None, ge=1)
    lmbda: Optional[float] = Field(None, gt=0, validation_alias=AliasChoices("lmbda", "lambda"),
                                   description="new lambda; default: the checkpoint's (else 0.0067)")
    # optimization
    learning_rate: float = Field(1e-5, gt=0, validation_alias=AliasChoices("learning_rate", "learning-rate", "lr"))
    lr_schedule: Literal["constant", "cosine", "discriminative"] = "constant"
    warmup_epochs: float = Field(0.0, ge=0)
    min_lr: float = Field(1e-7, ge=0)
    discriminative_warmups: str = "10,10,20,20,50"
    decay_rate: float = Field(0.5, gt=0, le=1)
    decay_every: int = Field(100, ge=1)
    # layer-wise LRs and freezing
    lr_mults: str = DEFAULT_LR_MULTS
    context_lr_ratio: Optional[float] = Field(None, ge=0)
    freeze_entropy: bool = False
    freeze_patterns: list[str] = Field(default_factory=list)
    weight_decay: float = Field(0.0, ge=0)
    weight_decay_map: Optional[str] = None
    clip_map: Optional[str] = None
    # progressive unfreezing
    progressive_unfreeze: bool = False
    unfreeze_schedule: str = "100,200"
    unfreeze_warmup_epochs: int = Field(5, ge=0)
    warmup_start: float = Field(0.1, gt=0, le=1)
    # hierarchical loss
    use_hierarchical: bool = False
    decomposition: Literal["measured", "fixed", "adaptive"] = "measured"
    pyramid: Literal["haar", "laplacian"] = "haar"
    pyramid_levels: int = Field(3, ge=2)
    scale_modulation: Optional[str] = Field(None, description="'s1:1.2,s2:1.05,s3:0.75' or a preset name "
                                            "(guides, uniform); hierarchical without balancing: default guides")
    # early stopping
    scale_early_stopping: bool = False
    early_stopping_patience: Optional[int] = Field(None, ge=1, description="epochs; default 50 with scale early stopping")
    early_stopping_min_delta: float = Field(0.0, ge=0)
    max_patience: Optional[int] = Field(None, ge=1)
    adaptive_patience: bool = True
    # balanced R-D
    use_balanced: bool = False
    gamma: Optional[float] = Field(None, ge=0, description="two-task default 0.001; hierarchical: scales s1 gamma")
    gamma_final: Optional[float] = Field(None, ge=0)
    adaptive_gamma: bool = False
    gamma_strategy: Optional[str] = Field(None, description="default: hpcm (two-task) / hierarchical (per scale)")
    scale_gammas: Optional[str] = Field(None, description="'s1:0.008,s2:0.006,s3:0.004'")
    w_lr: float = Field(0.025, gt=0)
    gamma_window: int = Field(5, ge=1, validation_alias=AliasChoices("gamma_window", "adaptive_window"))
    gamma_threshold: float = Field(1e-3, ge=0, validation_alias=AliasChoices("gamma_threshold", "adaptive_threshold"))
    step_epochs: list[int] = Field(default_factory=list, description="step gamma: decay at exactly these epochs")
    # run plumbing
    keep_last: int = Field(2, ge=1)
    keep_best: int = Field(1, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _recorded(cls, data: Any) -> Any:
        """A run's ``config.json`` validates: ``source_lmbda`` (recorded from the checkpoint) is dropped."""
        if isinstance(data, dict) and "source_lmbda" in data:
            data = {k: v for k, v in data.items() if k != "source_lmbda"}
        return data

    @field_validator("checkpoint")
    @classmethod
    def _ckpt(cls, v: Optional[Path]) -> Optional[Path]:
        if v is not None and not Path(v).exists():
            raise ValueError(f"checkpoint {v} does not exist: pass a .pt file or a run folder of 'compress train'")
        return absolute_path(v)

    @model_validator(mode="after")
    def _resolve(self) -> "FinetuneConfig":
        if self.gamma_strategy is not None:
            names = GAMMA_STRATEGIES + SCALE_GAMMA_STRATEGIES
            if self.gamma_strategy not in names:
                raise ValueError(f"unknown gamma_strategy {self.gamma_strategy!r}: use one of {', '.join(dict.fromkeys(names))}")
            if self.gamma_strategy in ("hierarchical", "hierarchical-guides") and not self.use_hierarchical:
                raise ValueError("gamma_strategy 'hierarchical' schedules per-scale gammas: add --use_hierarchical")
        if self.decomposition != "measured" and not self.use_hierarchical:
            raise ValueError(f"--decomposition {self.decomposition} applies to the hierarchical loss: add --use_hierarchical")
        check_hierarchical_effect(self.use_hierarchical, self.use_balanced, self.scale_modulation)
        if self.step_epochs and (sorted(self.step_epochs) != self.step_epochs or min(self.step_epochs) < 1):
            raise ValueError(f"step_epochs={self.step_epochs}: give increasing epoch numbers >= 1, e.g. --step_epochs 1000 2000")
        self._warn_ignored()
        return self

    def _warn_ignored(self) -> None:
        """One :class:`OptionWarning` per option that the other options make ineffective."""
        from finetune_kit.strategies.progressive import parse_schedule

        given = self.model_fields_set
        gamma_opts = [f"--{k}" for k in ("gamma", "gamma_final", "gamma_strategy", "adaptive_gamma", "scale_gammas")
                      if k in given and getattr(self, k) not in (None, False)]
        if self.step_epochs and "step" != self.resolved_gamma_strategy:
            warnings.warn(f"--step_epochs only act on --gamma_strategy step (in effect: {self.resolved_gamma_strategy}): "
                          "add --gamma_strategy step", OptionWarning, stacklevel=2)
        if self.use_hierarchical and not self.use_balanced and self.scale_modulation is None:
            warnings.warn("--use_hierarchical without --use_balanced: applying --scale_modulation guides "
                          f"({SCALE_MODULATION_PRESETS['guides']}) so the per-scale tasks change the gradient; pass "
                          "--scale_modulation or --use_balanced to choose", OptionWarning, stacklevel=2)
        if gamma_opts and not self.use_balanced:
            warnings.warn(f"{', '.join(gamma_opts)} only act on the balanced optimizer and are ignored: add "
                          "--use_balanced", OptionWarning, stacklevel=2)
        elif self.gamma_final is not None and self.resolved_gamma_strategy in ("constant", "fixed"):
            warnings.warn(f"--gamma_final {self.gamma_final:g} is ignored with a constant gamma: add --adaptive_gamma "
                          "(or --gamma_strategy hpcm/linear/cosine/...)", OptionWarning, stacklevel=2)
        if self.progressive_unfreeze:
            late = [e for e in parse_schedule(self.unfreeze_schedule) if e >= self.epochs]
            if late:
                warnings.warn(f"--unfreeze_schedule {self.unfreeze_schedule}: epoch(s) {', '.join(map(str, late))} are "
                              f">= --epochs {self.epochs}, so those stages never unfreeze: lower them or raise --epochs",
                              OptionWarning, stacklevel=2)
        elif "unfreeze_schedule" in given:
            warnings.warn("--unfreeze_schedule is ignored without --progressive_unfreeze", OptionWarning, stacklevel=2)

    @property
    def resolved_gamma_strategy(self) -> str:
        """The gamma schedule in effect: ``constant`` (``fixed`` per scale) unless ``adaptive_gamma`` or a
        ``gamma_strategy`` is given (a strategy implies scheduling); the default schedule is ``hpcm``, or
        ``hierarchical`` with the hierarchical loss."""
        if not self.adaptive_gamma and self.gamma_strategy is None:
            return "fixed" if self.use_hierarchical else "constant"
        return self.gamma_strategy or ("hierarchical" if self.use_hierarchical else "hpcm")


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of :class:`FinetuneConfig` fields (dashes in keys become underscores,
    except the aliases ``lambda`` and ``learning-rate``).

    Raises:
        FileNotFoundError: the file does not exist. ValueError: it is not a YAML mapping.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist: pass a YAML file of finetune options")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of options (key: value), not {type(data).__name__}")
    out = {}
    for k, v in data.items():
        key = str(k)
        key = {"learning-rate": "learning_rate", "lambda": "lmbda"}.get(key, key.replace("-", "_"))
        out[key] = v
    return out
