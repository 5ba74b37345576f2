"""The options of domain adaptation: adapters (``adapter`` section) and the source-domain
evaluation (``domain`` section), sections of the compression run's config
(:class:`finetune_kit.tasks.compression.run.config.RunConfig`). Light (no torch), so ``--help``
stays fast; what they drive is in :mod:`~finetune_kit.tasks.compression.finetune.adapters` and
:mod:`~finetune_kit.tasks.compression.finetune.domain`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional

from pydantic import field_validator

from finetune_kit.tasks.compression.config import absolute_path
from finetune_kit.tasks.config_base import ConfigSection, option_field

__all__ = ["AdapterSection", "DomainSection", "ADAPTER_KINDS"]

ADAPTER_KINDS = ("none", "lora", "conv")


class AdapterSection(ConfigSection):
    """Adapters in a frozen codec (arXiv 2409.11111): LoRA or residual 1x1 conv adapters."""

    adapter: Literal["none", "lora", "conv"] = option_field(
        "none", "Train only adapters in the frozen model: lora (PEFT LoRA on each Conv2d) or conv (residual 1x1 "
                "bottleneck after each conv); none: train the model's own weights.")
    adapter_rank: int = option_field(8, "Rank r of each adapter (LoRA rank, or the conv adapter's bottleneck "
                                        "channels).", ge=1)
    adapter_targets: str = option_field("g_s", "Where adapters go: module prefixes (g_s, g_s.3, h_s; comma-"
                                               "separated) or re:REGEX on module names.")

    @field_validator("adapter_targets")
    @classmethod
    def _targets(cls, v: str) -> str:
        if v.startswith("re:"):
            try:
                re.compile(v[3:])
            except re.error as exc:
                raise ValueError(f"adapter_targets {v!r} is not a valid regex ({exc}): e.g. re:^g_s\\.\\d+\\.mlp")
        elif not v.strip(" ,"):
            raise ValueError("adapter_targets is empty: pass a module prefix such as g_s")
        return v


class DomainSection(ConfigSection):
    """Evaluation on the source domain besides the target (real bitstreams, before and after)."""

    source_data: Optional[Path] = option_field(None, "Source-domain images (e.g. ../shared/data/kodak) coded before "
                                                     "and after the run with real bitstreams, with the target's "
                                                     "held-out images; unset: no domain evaluation.", metavar="DIR")
    source_limit: Optional[int] = option_field(None, "Code at most this many source images; unset: all.", ge=1)

    @field_validator("source_data")
    @classmethod
    def _source(cls, v: Optional[Path]) -> Optional[Path]:
        if v is None:
            return None
        # local: data imports torch (start-up time of --help)
        from finetune_kit.tasks.compression.data import list_images

        try:
            list_images(v)
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"source_data: {exc}; pass a folder of source-domain images such as "
                             "../shared/data/kodak") from None
        return absolute_path(v)
