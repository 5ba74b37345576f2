"""The configuration sections of the objectives: ``hierarchical`` and ``balanced``.

Each field is one option of ``compress train`` and ``compress finetune`` (the CLI generates the
option from the field: name, type, default, description, aliases). Checks that involve another
section (``gamma_strategy hierarchical`` needs ``use_hierarchical``, a hierarchical loss that would
change nothing) are made by the run's config
(:class:`finetune_kit.tasks.compression.run.config.RunConfig`) with :func:`check_objectives`.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import AliasChoices, Field, field_validator

from finetune_kit.tasks.config_base import ConfigSection

__all__ = ["HierarchicalSection", "BalancedSection", "resolved_gamma_strategy", "check_objectives", "SCALES",
           "GAMMA_STRATEGIES", "SCALE_GAMMA_STRATEGIES", "SCALE_MODULATION_PRESETS", "resolve_scale_modulation",
           "check_hierarchical_effect"]

#: the HPCM coding scales (s1 = 4x sub-sampled y, s2 = 2x, s3 = full resolution)
SCALES = ("s1", "s2", "s3")
GAMMA_STRATEGIES = ("constant", "linear", "cosine", "step", "adaptive", "hpcm", "hpcm-guides")
SCALE_GAMMA_STRATEGIES = ("fixed", "linear", "cosine", "adaptive", "hierarchical", "hierarchical-guides")

#: named ``--scale_modulation`` values. ``guides``: the guides' coarse-first emphasis, their fixed
#: distortion shares 0.40 / 0.35 / 0.25 (s1 / s2 / s3) relative to an even third each
#: (x3: 1.2 / 1.05 / 0.75). ``uniform``: every scale 1 (the plain R-D loss).
SCALE_MODULATION_PRESETS = {"guides": "s1:1.2,s2:1.05,s3:0.75", "uniform": "s1:1.0,s2:1.0,s3:1.0"}


def resolve_scale_modulation(value: str | None, use_hierarchical: bool = True,
                             use_balanced: bool = False) -> dict[str, float]:
    """``{"s1", "s2", "s3": factor}`` of a ``--scale_modulation`` value: a preset name of
    :data:`SCALE_MODULATION_PRESETS` or ``"s1:1.2,s2:1.0,s3:0.8"`` (missing scales 1). ``None``
    is ``guides`` for the hierarchical loss without balancing (so it is never a no-op), else uniform.

    Raises:
        ValueError: an unknown scale key or a factor <= 0.
    """
    if value is None:
        value = "guides" if use_hierarchical and not use_balanced else "uniform"
    from finetune_kit.param_groups import parse_multipliers  # local: param_groups imports torch; --help stays free of it

    raw = parse_multipliers(SCALE_MODULATION_PRESETS.get(str(value).strip(), value))
    bad = [k for k in raw if k not in SCALES]
    if bad or any(v <= 0 for v in raw.values()):
        raise ValueError(f"--scale_modulation {value!r}: give s1/s2/s3 factors > 0 (e.g. s1:1.2,s2:1.05,s3:0.75) or a "
                         f"preset ({', '.join(SCALE_MODULATION_PRESETS)})")
    return {"s1": 1.0, "s2": 1.0, "s3": 1.0, **raw}


def check_hierarchical_effect(use_hierarchical: bool, use_balanced: bool, scale_modulation: str | None) -> None:
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

_GAMMA = ("constant, linear, cosine, step, adaptive, hpcm, hpcm-guides (one gamma); fixed, linear, cosine, adaptive, "
          "hierarchical, hierarchical-guides (per scale)")


def _aliases(*names: str) -> dict:
    return {"aliases": list(names)}


class HierarchicalSection(ConfigSection):
    """Per-scale R-D tasks (:mod:`finetune_kit.tasks.compression.objectives.hierarchical`)."""

    use_hierarchical: bool = Field(False, description="Per-scale R-D tasks (rate of s1/s2/s3/z, multi-scale "
                                                      "distortion).")
    decomposition: Literal["measured", "fixed", "adaptive"] = Field(
        "measured", description="Task split: measured, fixed (the guides' ratios) or adaptive (learned ratios).")
    pyramid: Literal["haar", "laplacian"] = Field("haar", description="Distortion split: haar (exact) or laplacian.")
    pyramid_levels: int = Field(3, ge=2, description="Levels of the distortion pyramid.")
    scale_modulation: Optional[str] = Field(
        None, description="Per-scale task factors, e.g. s1:1.2,s2:1.05,s3:0.75, or a preset (guides, uniform); "
                          "unset: guides without --use-balanced, else uniform.")


class BalancedSection(ConfigSection):
    """Balanced R-D optimization and its gamma schedule (:mod:`.balanced`, :mod:`.gamma_schedules`)."""

    use_balanced: bool = Field(False, description="Balanced R-D: learned task weights (Zhang et al., CVPR 2025).")
    adaptive_gamma: bool = Field(False, description="Schedule gamma (hpcm, or hierarchical per scale, unless "
                                                    "--gamma-strategy names another); else gamma is constant.")
    gamma_strategy: Optional[str] = Field(None, description=f"Gamma schedule (implies --adaptive-gamma): {_GAMMA}.")
    gamma: Optional[float] = Field(None, ge=0, description="Start gamma; unset: 0.001 (two tasks), s1's 0.008 "
                                                           "(hierarchical, s2 and s3 in proportion).")
    gamma_final: Optional[float] = Field(None, ge=0, description="End gamma of the schedule; unset: gamma/10.")
    scale_gammas: Optional[str] = Field(None, description="Per-scale start gammas, e.g. s1:0.008,s2:0.006,s3:0.004.")
    w_lr: float = Field(0.025, gt=0, description="Adam LR of the task-weight logits.")
    gamma_window: int = Field(5, ge=1, validation_alias=AliasChoices("gamma_window", "adaptive_window"),
                              description="adaptive gamma: epochs of the trend window.",
                              json_schema_extra=_aliases("--adaptive-window", "--adaptive_window"))
    gamma_threshold: float = Field(1e-3, ge=0, validation_alias=AliasChoices("gamma_threshold", "adaptive_threshold"),
                                   description="adaptive gamma: relative change counted as a trend.",
                                   json_schema_extra=_aliases("--adaptive-threshold", "--adaptive_threshold"))
    step_epochs: list[int] = Field(default_factory=list, description="step gamma: halve gamma at exactly these "
                                                                     "epochs, e.g. --step_epochs 1000 2000 (or 1000,2000).",
                                     json_schema_extra={"cli": "text"})
    gamma_decay: float = Field(0.5, gt=0, description="step gamma: factor applied at each step (at --step-epochs, "
                                                      "else every quarter of the run).")

    @field_validator("gamma_strategy")
    @classmethod
    def _strategy(cls, v: Optional[str]) -> Optional[str]:
        names = GAMMA_STRATEGIES + SCALE_GAMMA_STRATEGIES
        if v is not None and v not in names:
            raise ValueError(f"unknown gamma_strategy {v!r}: use one of {', '.join(dict.fromkeys(names))}")
        return v

    @field_validator("step_epochs", mode="before")
    @classmethod
    def _step_epochs(cls, v):
        """``1000,2000``, ``"1000 2000"`` or a list; increasing epoch numbers >= 1."""
        if isinstance(v, str):
            v = v.replace(",", " ").split()
        if isinstance(v, (list, tuple)):
            v = [int(x) for item in v for x in str(item).replace(",", " ").split()]
            if sorted(v) != v or (v and min(v) < 1):
                raise ValueError(f"step_epochs={v}: give increasing epoch numbers >= 1, e.g. --step_epochs 1000 2000")
        return v


def resolved_gamma_strategy(balanced: BalancedSection, use_hierarchical: bool) -> str:
    """The gamma schedule in effect: ``constant`` (``fixed`` per scale) unless ``adaptive_gamma`` or a
    ``gamma_strategy`` is given (a strategy implies scheduling); the default schedule is ``hpcm``, or
    ``hierarchical`` with the hierarchical loss."""
    if not balanced.adaptive_gamma and balanced.gamma_strategy is None:
        return "fixed" if use_hierarchical else "constant"
    return balanced.gamma_strategy or ("hierarchical" if use_hierarchical else "hpcm")


def check_objectives(hierarchical: HierarchicalSection, balanced: BalancedSection) -> None:
    """The checks across the two sections.

    Raises:
        ValueError: a per-scale gamma strategy without ``use_hierarchical``; a non-measured
            ``decomposition`` without it; a hierarchical loss that changes nothing
            (:func:`~finetune_kit.tasks.compression.objectives.hierarchical.check_hierarchical_effect`).
    """
    if balanced.gamma_strategy in ("hierarchical", "hierarchical-guides") and not hierarchical.use_hierarchical:
        raise ValueError("gamma_strategy 'hierarchical' schedules per-scale gammas: add --use_hierarchical")
    if hierarchical.decomposition != "measured" and not hierarchical.use_hierarchical:
        raise ValueError(f"--decomposition {hierarchical.decomposition} applies to the hierarchical loss: add "
                         "--use_hierarchical")
    check_hierarchical_effect(hierarchical.use_hierarchical, balanced.use_balanced, hierarchical.scale_modulation)
