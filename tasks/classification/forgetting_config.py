"""The ``forgetting`` section of a classification run's configuration.

One :class:`ForgettingConfig` holds every option of the forgetting measures and of the two cheap
controls, WiSE-FT and L2-SP: ``ClassificationConfig.forgetting``. Read it as ``cfg.forgetting.<field>``.
LoRA's options are the ``lora`` strategy's constructor keyword arguments (``--strategy-kwargs``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

from pydantic import field_validator

from finetune_kit.tasks.config_base import ConfigSection, option_field

__all__ = ["ForgettingConfig", "DEFAULT_WISE_FT_ALPHAS", "REFERENCE_EXTENSIONS", "default_reference_dir",
           "reference_images"]

#: WiSE-FT's grid of mixing coefficients (0 = the probed pretrained model, 1 = the fine-tuned one).
DEFAULT_WISE_FT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
#: Image files a reference folder may hold (case-insensitive).
REFERENCE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def default_reference_dir() -> Path:
    """The packaged reference set: 50 public-domain / CC0 photographs from scikit-image's samples,
    <= 160 px (see ``reference_images/README.md`` beside this module)."""
    return Path(__file__).resolve().parent / "reference_images"


def reference_images(folder: str | Path | None) -> list[Path]:
    """The image files of a reference folder (searched recursively, sorted); None = the packaged set.

    Raises:
        ValueError: the folder does not exist or holds no image (one line naming it and the fix).
    """
    path = default_reference_dir() if folder is None else Path(folder)
    if not path.is_dir():
        raise ValueError(f"reference_data {path}: no such folder; pass a folder of natural images (jpg/png) or "
                         "leave it unset for the packaged reference set")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in REFERENCE_EXTENSIONS)
    if not files:
        raise ValueError(f"reference_data {path}: the folder holds no image ({', '.join(REFERENCE_EXTENSIONS)}); "
                         "pass a folder of natural images or leave it unset for the packaged reference set")
    return files


class ForgettingConfig(ConfigSection):
    """Forgetting measures (source retention, feature and parameter drift, external data) and the
    WiSE-FT and L2-SP controls of one classification run."""

    measure_forgetting: bool = option_field(
        True, "After training, measure forgetting: source retention (top-1 agreement and KL under the pretrained "
              "head), CKA and per-group weight drift (metrics.json 'forgetting', drift.png).")
    reference_data: Optional[str] = option_field(
        None, "Folder of natural images for source retention and CKA (unset: the packaged set of 50 public-domain "
              "photographs).", metavar="DIR")
    external_data: Optional[str] = option_field(
        None, "Labelled external (shifted) data in any layout the data options accept, evaluated at the end with "
              "the test metrics (metrics.json 'external').", metavar="PATH")
    l2_sp: Optional[str] = option_field(
        None, "L2-SP penalty 'ALPHA[,BETA]': alpha/2*||w-w0||^2 on the pretrained weights + beta/2*||w||^2 on the "
              "new head (Li et al., ICML 2018; e.g. 0.01,0.01). Unset: off.", metavar="ALPHA[,BETA]")
    wise_ft: bool = option_field(
        False, "After training, WiSE-FT (Wortsman et al., CVPR 2022): interpolate the probed pretrained and the "
               "fine-tuned weights over --wise-ft-alphas and write the chosen model as a run folder.")
    wise_ft_alphas: Optional[list[float]] = option_field(
        None, "WiSE-FT mixing coefficients in [0, 1], comma-separated (0 = the probed pretrained model, 1 = the "
              "fine-tuned one; unset: 0, 0.1, ..., 1).", cli="text", metavar="A,B,...")

    @field_validator("reference_data", "external_data")
    @classmethod
    def _folder(cls, v: Optional[str], info) -> Optional[str]:
        """Stored absolute; a reference folder must hold images (one-line error otherwise)."""
        if v is None:
            return None
        v = os.path.abspath(os.path.expanduser(str(v)))
        if info.field_name == "reference_data":
            reference_images(v)
        elif not Path(v).exists():
            raise ValueError(f"external_data {v}: no such folder or CSV file; pass labelled images in a layout the "
                             "data options accept")
        return v

    @field_validator("l2_sp")
    @classmethod
    def _l2_sp(cls, v: Optional[str]) -> Optional[str]:
        if v is None or str(v).strip() == "":
            return None
        parse_l2_sp(str(v))
        return str(v).strip()

    @field_validator("wise_ft_alphas", mode="before")
    @classmethod
    def _alphas_text(cls, v):
        """``"0,0.5,1"`` (the command line) -> ``[0.0, 0.5, 1.0]``; lists pass."""
        if isinstance(v, str):
            try:
                return [float(a) for a in v.split(",") if a.strip()]
            except ValueError:
                raise ValueError(f"--wise-ft-alphas {v!r}: give comma-separated numbers in [0, 1], e.g. "
                                 "0,0.25,0.5,0.75,1") from None
        return v

    @field_validator("wise_ft_alphas")
    @classmethod
    def _alphas(cls, v: Optional[list[float]]) -> Optional[list[float]]:
        if v is None:
            return None
        bad = [a for a in v if not (0.0 <= a <= 1.0)]
        if bad or not v:
            raise ValueError(f"WiSE-FT alpha {bad[0] if bad else '(none)'} is outside [0, 1]: give mixing coefficients "
                             "between 0 (probed pretrained model) and 1 (fine-tuned), e.g. 0,0.25,0.5,0.75,1")
        return sorted(set(float(a) for a in v))

    @property
    def l2_sp_values(self) -> tuple[float, float] | None:
        """``(alpha, beta)`` of ``l2_sp`` (beta 0 when not given), or None when L2-SP is off."""
        return parse_l2_sp(self.l2_sp) if self.l2_sp else None


def parse_l2_sp(text: str) -> tuple[float, float]:
    """``"0.01"`` -> ``(0.01, 0.0)``; ``"0.1,0.01"`` -> ``(0.1, 0.01)``.

    Raises:
        ValueError: not one or two comma-separated finite numbers >= 0 (one line with an example).
    """
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or any(not math.isfinite(x) or x < 0 for x in values):
        raise ValueError(f"l2_sp {text!r} is not ALPHA[,BETA] with finite numbers >= 0 (e.g. 0.01,0.01)")
    return values[0], values[1] if len(values) == 2 else 0.0
