"""The configuration sections only a fine-tune needs: ``layer_lr`` and ``unfreeze``.

Both are sections of the compression run's config
(:class:`finetune_kit.tasks.compression.run.config.RunConfig`); ``compress train`` has them too
(its defaults: every group at LR x 1, no unfreezing), so the two commands share one set of options.
``layer_lr`` becomes the layer-wise multipliers, freezing and weight decay of a registered strategy
(:class:`~finetune_kit.tasks.compression.finetune.lr_manager.LayerLRConfig`); ``unfreeze`` the
``progressive`` strategy's stages.
"""
from __future__ import annotations

from typing import Optional

from pydantic import AliasChoices, Field, field_validator

from finetune_kit.tasks.config_base import ConfigSection

__all__ = ["LayerLRSection", "UnfreezeSection", "DEFAULT_LR_MULTS"]

#: the guides' layer-wise LR multipliers
DEFAULT_LR_MULTS = "g_a:1.0,g_s:1.0,h_a:0.5,h_s:0.5,context:0.1"


class LayerLRSection(ConfigSection):
    """Layer-wise LRs, freezing and weight decay (keys: module prefixes such as ``g_a`` or ``g_a.0``,
    or ``re:REGEX``; the longest match wins)."""

    lr_mults: str = Field(DEFAULT_LR_MULTS, description="Layer-wise LR multipliers, e.g. g_a:1.0,context:0.1.")
    context_lr_ratio: Optional[float] = Field(None, ge=0, description="LR multiplier of the context model "
                                                                      "(overrides lr_mults' context).")
    freeze_entropy: bool = Field(False, description="Freeze the entropy bottleneck (incl. quantiles) and the "
                                                    "Gaussian conditional.")
    freeze_patterns: list[str] = Field(default_factory=list,
                                       validation_alias=AliasChoices("freeze_patterns", "freeze_pattern"),
                                       description="Regex of parameters that never train (repeatable).",
                                       json_schema_extra={"aliases": ["--freeze-pattern", "--freeze_pattern"]})
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay (AdamW); biases and norms never decay.")
    weight_decay_map: Optional[str] = Field(None, description="Per-group weight decay, e.g. context:1e-4.")
    clip_map: Optional[str] = Field(None, description="Per-group gradient-norm limits, e.g. context:0.5 "
                                                      "(applied before the global clip).")

    @field_validator("freeze_patterns", mode="before")
    @classmethod
    def _patterns(cls, v):
        return [v] if isinstance(v, str) else v


class UnfreezeSection(ConfigSection):
    """Progressive unfreezing (g_a+g_s, then +h_a+h_s+entropy bottleneck, then +context)."""

    progressive_unfreeze: bool = Field(False, description="Train g_a+g_s first, then +h_a+h_s+entropy bottleneck, "
                                                          "then +context.")
    unfreeze_schedule: str = Field("100,200", description="Completed epochs after which the 2nd and 3rd stages "
                                                          "unfreeze (epochs counted from 1).")
    unfreeze_warmup_epochs: int = Field(5, ge=0, description="LR ramp of newly unfrozen groups, epochs.")
    warmup_start: float = Field(0.1, gt=0, le=1, description="LR fraction at the start of a ramp.")
