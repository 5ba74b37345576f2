"""Typed, validated configuration of the compression commands (validated once, at the edge).

``lmbda`` is the rate-distortion trade-off of ``lmbda * 255^2 * MSE + bpp`` (MSE on [0, 1]
images) or ``lmbda * (1 - MS-SSIM) + bpp``. The HPCM paper trains MSE models with
:data:`PAPER_LAMBDAS`; ``quality`` (1..6) picks one of them. The validators here are shared by
:class:`EvalConfig` and the run's config (:mod:`finetune_kit.tasks.compression.run.config`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from finetune_kit.device import resolve_auto_device
from finetune_kit.tasks.config_base import ConfigSection

__all__ = ["CudaFlag", "MODEL_NAMES", "HPCM_PRESETS", "PAPER_LAMBDAS", "EvalConfig", "ConvertConfig", "DEFAULT_ANCHORS", "check_device", "check_model_name",
           "require_image_folder", "normalize_model_name", "absolute_path"]

#: the HPCM presets (:mod:`finetune_kit.tasks.compression.models.hpcm.model`)
HPCM_PRESETS = ("hpcm-tiny", "hpcm-small", "hpcm-base", "hpcm-large")
#: every model name the compression commands accept (built by
#: :func:`finetune_kit.tasks.compression.models.zoo.build_model`; kept here, free of torch, for the options)
MODEL_NAMES = HPCM_PRESETS + ("bmshj2018-hyperprior", "mbt2018-mean", "cheng2020-anchor", "elic2022-chandelier")

#: lambdas of the HPCM paper's MSE models, lowest rate first (quality 1..6)
PAPER_LAMBDAS = (0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483)

#: Published R-D points on Kodak (VTM, HM, BPG, JPEG, CompressAI models, HPCM-Base/Large), shipped
#: with the package (``anchors/kodak_rd.json``; sources listed in the file).
DEFAULT_ANCHORS = Path(__file__).resolve().parent / "anchors" / "kodak_rd.json"


def normalize_model_name(name: str) -> str:
    """``hpcm_base``, ``HPCM-Base``, `` hpcm-base `` -> ``hpcm-base`` (lower case, dashes), the zoo's spelling."""
    return str(name).strip().lower().replace("_", "-")


def check_model_name(name: str) -> str:
    """Config validator: the zoo's spelling of ``name`` (:func:`normalize_model_name`).

    Raises:
        ValueError: not one of :data:`~finetune_kit.tasks.compression.models.zoo.MODEL_NAMES`.
    """
    norm = normalize_model_name(name)
    if norm not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}: use one of {', '.join(MODEL_NAMES)}")
    return norm


def absolute_path(v: Optional[Path]) -> Optional[Path]:
    """Config validator: a path made absolute (``~`` expanded, symlinks kept), so the run's
    ``config.json`` reproduces it from any working folder."""
    return None if v is None else Path(os.path.abspath(os.path.expanduser(str(v))))


def check_device(v: str) -> str:
    """Config validator: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, and the CUDA device must exist here.

    Returns the device string (stripped; ``auto`` resolved to ``cuda`` when torch sees a CUDA
    device, else ``cpu``). Raises:
        ValueError: one line naming the device and the fix (unknown form, no CUDA, no such GPU).
    """
    v = resolve_auto_device(v)
    m = re.fullmatch(r"cpu|cuda(?::(\d+))?", v)
    if m is None:
        raise ValueError(f"device {v!r} is not one of cpu, cuda, cuda:N: pass e.g. --device cuda:0")
    if v != "cpu":
        import torch  # local: the options are declared from this module, and --help stays free of torch (start-up time)

        if not torch.cuda.is_available():
            raise ValueError(f"device {v!r}: CUDA is not available on this machine (torch {torch.__version__}): "
                             "use --device cpu")
        count = torch.cuda.device_count()
        if int(m.group(1) or 0) >= count:
            raise ValueError(f"device {v!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}: "
                             "pass one of them")
    return v


def require_image_folder(v: Optional[Path]) -> Optional[Path]:
    """Config validator: ``v`` (when given) must be an existing folder.

    Raises:
        ValueError: one line naming the folder and the fix.
    """
    if v is not None and not Path(v).is_dir():
        raise ValueError(f"image folder {v} does not exist: pass a folder of PNG/JPEG images")
    return v


def _aliases(*names: str) -> dict:
    return {"aliases": list(names)}


class CudaFlag(ConfigSection):
    """The ``--cuda`` flag of CompressAI's scripts, shared by every compression command's config:
    ``--cuda`` means ``--device cuda``."""

    cuda: bool = Field(False, description="CompressAI's flag: the same as --device cuda.")

    @model_validator(mode="before")
    @classmethod
    def _cuda(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("cuda"):
            data = {**data, "device": "cuda"}
        return data


class EvalConfig(CudaFlag):
    """Options of ``finetune-kit compress eval`` (real bitstreams, R-D curve, BD-rate)."""

    checkpoints: list[Path] = Field(min_length=1, description="Checkpoint files (one per lambda for an R-D curve).")
    data: Path = Field(description="Folder of test images, e.g. ../shared/data/kodak.",
                       json_schema_extra=_aliases("-d", "--dataset"))
    output: Path = Field(Path("runs/compression-eval"), description="Folder for results.json, per_image.json, "
                                                                   "bd.json, rd.png.", json_schema_extra=_aliases("-o"))
    model: Optional[str] = Field(None, description="Model name if the checkpoint does not record it.",
                                 json_schema_extra=_aliases("-m"))
    limit: Optional[int] = Field(None, ge=1, description="Evaluate only the first N images (sorted by name); unset: all.")
    anchors: Optional[Path] = Field(None, description="Anchors JSON of R-D curves; unset: the shipped kodak_rd.json.")
    anchor: str = Field("VTM", description="Anchor curve for BD-rate / BD-PSNR.")
    bd_method: Literal["akima", "pchip", "cubic"] = Field("akima", description="BD interpolation.")
    name: Optional[str] = Field(None, description="Curve name in the JSON and plot; unset: the model name.")
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads; unset: the free cores (CPUs minus the "
                                                                   "load average, at least 1).",
                                   json_schema_extra=_aliases("--num-threads", "--num_threads"))
    device: str = Field("cpu", description="auto (CUDA when available, else CPU), cpu, cuda or cuda:N: transforms and "
                                           "context model run there, rANS coding on the CPU.")
    progress: bool = Field(True, description="Show progress bars and per-checkpoint lines.")
    pad: Literal["edge", "centred"] = Field("edge", description="Padding to the model's side multiple: edge "
                                                                "(right/bottom, replicate) or centred (zeros, multiple "
                                                                "of 256: the official HPCM test.py).")

    @field_validator("model")
    @classmethod
    def _model(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else check_model_name(v)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @field_validator("checkpoints")
    @classmethod
    def _ckpts(cls, v: list[Path]) -> list[Path]:
        for p in v:
            if not Path(p).is_file():
                raise ValueError(f"checkpoint {p} does not exist: pass .pt files written by 'compress train'")
        return [absolute_path(p) for p in v]

    @field_validator("data")
    @classmethod
    def _data(cls, v: Path) -> Path:
        if not Path(v).is_dir():
            raise ValueError(f"image folder {v} does not exist: pass e.g. ../shared/data/kodak")
        return absolute_path(v)

    @field_validator("anchors")
    @classmethod
    def _anchors(cls, v: Optional[Path]) -> Optional[Path]:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"anchors file {v} does not exist: pass a JSON like ../shared/data/anchors/kodak_rd.json")
        return v


class ConvertConfig(ConfigSection):
    """Options of ``finetune-kit compress convert-official`` (the checkpoint itself is the argument)."""

    arch: Literal["base", "large"] = Field(description="Official architecture: base (HPCM_Base) or large (HPCM_Large).")
    output: Optional[Path] = Field(None, description="Checkpoint to write; unset: CKPT.hpcm-ARCH.pt beside it.",
                                   json_schema_extra=_aliases("-o"))
    lmbda: Optional[float] = Field(None, gt=0, description="Lambda it was trained for; unset: read from the file name.",
                                   json_schema_extra=_aliases("--lambda"))
