"""The ``classes`` section of a classification run's configuration: class imbalance (class weights,
balanced sampling, focal loss), the ordinal classes of the quadratic weighted kappa and the
operating point chosen on validation. Read it as ``cfg.classes.<field>``; torch-free.
"""
from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import field_validator

from finetune_kit.tasks.config_base import ConfigSection, option_field

__all__ = ["ClassesConfig", "parse_operating_point", "parse_class_list"]

_OPERATING_POINT = re.compile(r"^\s*(sensitivity|specificity)\s*=\s*([^\s]+)\s*$")


def parse_operating_point(text: str) -> tuple[str, float]:
    """``"sensitivity=0.90"`` -> ``("sensitivity", 0.9)``.

    Raises:
        ValueError: not ``sensitivity=X`` / ``specificity=X``, or X outside the open interval (0, 1).
    """
    m = _OPERATING_POINT.match(str(text))
    if not m:
        raise ValueError(f"--operating-point {text!r}: write sensitivity=X or specificity=X with 0 < X < 1, "
                         "e.g. --operating-point specificity=0.90")
    try:
        target = float(m.group(2))
    except ValueError:
        target = float("nan")
    if not 0.0 < target < 1.0:
        raise ValueError(f"--operating-point {text!r}: the target must lie strictly between 0 and 1 (a fraction, "
                         "not a percentage), e.g. --operating-point sensitivity=0.90")
    return m.group(1), target


def parse_class_list(text: str | None) -> list[str]:
    """``"normal, npdr,pdr"`` -> ``["normal", "npdr", "pdr"]`` (empty items dropped)."""
    return [c.strip() for c in str(text or "").split(",") if c.strip()]


class ClassesConfig(ConfigSection):
    """Class imbalance, ordinal classes and the operating point."""

    class_weights: str = option_field(
        "none", "Loss weight per class: none, balanced (scikit-learn compute_class_weight on the training split: "
        "n / (K * count)) or one weight per class in class order, e.g. 1,1,2,4.", metavar="none|balanced|W1,W2,...")
    sampler: Literal["shuffle", "balanced"] = option_field(
        "shuffle", "Training order: shuffle, or balanced (torch WeightedRandomSampler, each class drawn equally "
        "often, with replacement; one process only).")
    loss: Literal["ce", "focal"] = option_field(
        "ce", "ce: cross-entropy; focal: softmax focal loss (Lin et al. 2017) with --focal-gamma.")
    focal_gamma: float = option_field(2.0, "Focusing parameter gamma of --loss focal (0 = cross-entropy).", ge=0.0)
    ordinal_classes: Optional[str] = option_field(
        None, "Ordered class names (e.g. normal,npdr,pdr): adds the quadratic weighted kappa over the test images of "
        "these classes, the prediction restricted to them.", metavar="C1,C2,...")
    operating_point: Optional[str] = option_field(
        None, "sensitivity=X or specificity=X (0 < X < 1): threshold chosen on validation for the positive class "
        "(multi-class: each class one-vs-rest), reported on test with CIs and applied by predict.",
        metavar="KIND=X")

    @field_validator("class_weights")
    @classmethod
    def _weights(cls, v: str) -> str:
        v = str(v).strip()
        if v in ("none", "balanced"):
            return v
        try:
            w = [float(x) for x in v.split(",")]
        except ValueError:
            w = []
        if not w or any(not (x > 0 and x < float("inf")) for x in w):
            raise ValueError(f"--class-weights {v!r}: use none, balanced or positive weights in class order, "
                             "e.g. 1,1,2,4")
        return ",".join(repr(x) for x in w)

    @field_validator("operating_point")
    @classmethod
    def _operating_point(cls, v: Optional[str]) -> Optional[str]:
        if v is None or not str(v).strip():
            return None
        kind, target = parse_operating_point(v)
        return f"{kind}={target:g}"

    @field_validator("ordinal_classes")
    @classmethod
    def _ordinal(cls, v: Optional[str]) -> Optional[str]:
        if v is None or not str(v).strip():
            return None
        names = parse_class_list(v)
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"--ordinal-classes {v!r}: give at least two distinct class names in order, e.g. "
                             "normal,npdr,pdr")
        return ",".join(names)
