"""Typed, validated configuration of the compression commands (validated once, at the edge).

``lmbda`` is the rate-distortion trade-off of ``lmbda * 255^2 * MSE + bpp`` (MSE on [0, 1]
images) or ``lmbda * (1 - MS-SSIM) + bpp``. The HPCM paper trains MSE models with
:data:`PAPER_LAMBDAS`; ``quality`` (1..6) picks one of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import AliasChoices, ConfigDict, Field, field_validator, model_validator

from finetune_kit.tasks.config_base import ConfigSection

from finetune_kit.tasks.compression.models.zoo import MODEL_NAMES

__all__ = ["PAPER_LAMBDAS", "RunConfigBase", "TrainConfig", "EvalConfig", "DEFAULT_ANCHORS", "check_device",
           "require_image_folder", "normalize_model_name", "absolute_path"]

#: lambdas of the HPCM paper's MSE models, lowest rate first (quality 1..6)
PAPER_LAMBDAS = (0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483)

#: Published R-D points on Kodak (VTM, HM, BPG, JPEG, CompressAI models, HPCM-Base/Large), shipped
#: with the package (``anchors/kodak_rd.json``; sources listed in the file).
DEFAULT_ANCHORS = Path(__file__).resolve().parent / "anchors" / "kodak_rd.json"


def normalize_model_name(name: str) -> str:
    """``hpcm_base``, ``HPCM-Base``, `` hpcm-base `` -> ``hpcm-base`` (lower case, dashes), the zoo's spelling."""
    return str(name).strip().lower().replace("_", "-")


def _check_model(name: str) -> str:
    norm = normalize_model_name(name)
    if norm not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}: use one of {', '.join(MODEL_NAMES)}")
    return norm


def absolute_path(v: Optional[Path]) -> Optional[Path]:
    """Config validator: a path made absolute (``~`` expanded, symlinks kept), so the run's
    ``config.json`` reproduces it from any working folder."""
    import os

    return None if v is None else Path(os.path.abspath(os.path.expanduser(str(v))))


def check_device(v: str) -> str:
    """Config validator: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, and the CUDA device must exist here.

    Returns the device string (stripped; ``auto`` resolved to ``cuda`` when torch sees a CUDA
    device, else ``cpu``). Raises:
        ValueError: one line naming the device and the fix (unknown form, no CUDA, no such GPU).
    """
    import re

    from finetune_kit.device import resolve_auto_device

    v = resolve_auto_device(v)
    m = re.fullmatch(r"cpu|cuda(?::(\d+))?", v)
    if m is None:
        raise ValueError(f"device {v!r} is not one of cpu, cuda, cuda:N: pass e.g. --device cuda:0")
    if v != "cpu":
        import torch

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


class RunConfigBase(ConfigSection):
    """Options shared by ``compress train`` (:class:`TrainConfig`) and ``compress finetune``
    (:class:`~finetune_kit.tasks.compression.finetune.config.FinetuneConfig`).

    Data: ``data`` (image folder), ``val_data`` (default: hold out ``val_fraction`` of ``data``
    with ``seed``), crops of ``patch_size`` px (multiple of 16; validation ``val_patch_size``,
    default ``patch_size``), ``batch_size`` images per step, ``steps_per_epoch`` steps per
    epoch (default one pass), ``num_workers`` loader processes, ``cache_images``. Run:
    ``output_dir``/``name``, ``resume`` (a run folder or checkpoint), ``epochs``, ``keep_last``
    checkpoints, ``seed``, ``threads``, ``device`` (``cpu`` default, ``cuda``, ``cuda:N``),
    ``wandb``, ``progress``. Optimization: ``aux_lr`` (Adam of the quantiles, default 1e-3),
    ``clip_max_norm`` (gradient L2 limit, default 1.0, 0 disables), ``quality`` (1..6: picks
    ``lmbda`` from :data:`PAPER_LAMBDAS`). Subclasses declare ``model`` and ``lmbda``. Unknown
    options are refused (``extra="forbid"``).

    Raises (at validation):
        ValueError: a missing image folder, a bad device, an unknown model, a patch size that
            is not a multiple of 16.
    """

    model_config = ConfigDict(extra="forbid")

    data: Path
    val_data: Optional[Path] = None
    val_fraction: float = Field(0.1, gt=0, lt=1)
    output_dir: Path = Path("runs/compression")
    name: Optional[str] = None
    resume: Optional[Path] = None
    epochs: int = Field(10, ge=1)
    steps_per_epoch: Optional[int] = Field(None, ge=1, description="batches per epoch (default: one pass)")
    batch_size: int = Field(8, ge=1)
    patch_size: int = Field(256, ge=64)
    val_patch_size: Optional[int] = Field(None, ge=64)
    quality: Optional[int] = Field(None, ge=1, le=len(PAPER_LAMBDAS))
    aux_lr: float = Field(1e-3, gt=0)
    clip_max_norm: float = Field(1.0, ge=0)
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    threads: Optional[int] = Field(None, ge=1)
    device: str = Field("cpu", description="cpu (default here; the CLI's default is auto), auto, cuda or cuda:N")
    cache_images: bool = True
    keep_last: int = Field(1, ge=1)
    wandb: Literal["offline", "disabled", "online"] = "offline"
    progress: bool = True

    @field_validator("model", check_fields=False)
    @classmethod
    def _model(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else _check_model(v)

    @field_validator("data", "val_data")
    @classmethod
    def _folder_exists(cls, v: Optional[Path]) -> Optional[Path]:
        return absolute_path(require_image_folder(v))

    @field_validator("output_dir", "resume")
    @classmethod
    def _absolute(cls, v: Optional[Path]) -> Optional[Path]:
        return absolute_path(v)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @model_validator(mode="after")
    def _resolve_shared(self) -> "RunConfigBase":
        if self.quality is not None:
            self.lmbda = PAPER_LAMBDAS[self.quality - 1]
        if self.val_patch_size is None:
            self.val_patch_size = self.patch_size
        if self.patch_size % 16:
            raise ValueError(f"patch_size={self.patch_size}: use a multiple of 16 px (e.g. 128 or 256)")
        return self


class TrainConfig(RunConfigBase):
    """Options of ``finetune-kit compress train`` (see ``docs/compression.md``); shared ones in
    :class:`RunConfigBase`. ``lr`` (Adam, default 1e-4) is multiplied by ``lr_gamma`` at each
    epoch of ``lr_milestones``; ``metric`` ``ms-ssim`` needs crops of at least 161 px."""

    model: str = "hpcm-tiny"
    lmbda: float = Field(PAPER_LAMBDAS[2], gt=0)
    metric: Literal["mse", "ms-ssim"] = "mse"
    lr: float = Field(1e-4, gt=0)
    lr_milestones: list[int] = Field(default_factory=list)
    lr_gamma: float = Field(0.3, gt=0, le=1)
    # balanced R-D with a gamma schedule (the same options as compress finetune; Zhang et al., CVPR 2025)
    use_balanced: bool = False
    adaptive_gamma: bool = False
    gamma_strategy: Optional[str] = None
    gamma: Optional[float] = Field(None, ge=0)
    gamma_final: Optional[float] = Field(None, ge=0)
    w_lr: float = Field(0.025, gt=0)
    gamma_window: int = Field(5, ge=1, validation_alias=AliasChoices("gamma_window", "adaptive_window"))
    gamma_threshold: float = Field(1e-3, ge=0, validation_alias=AliasChoices("gamma_threshold", "adaptive_threshold"))
    step_epochs: list[int] = Field(default_factory=list)

    def balanced_config(self) -> Any:
        """The :class:`~finetune_kit.tasks.compression.finetune.config.FinetuneConfig` that carries this
        run's balanced/gamma options (validated the same way as in ``compress finetune``), or None
        without ``use_balanced``."""
        if not self.use_balanced:
            return None
        from finetune_kit.tasks.compression.finetune.config import FinetuneConfig

        keys = ("adaptive_gamma", "gamma_strategy", "gamma", "gamma_final", "w_lr", "gamma_window", "gamma_threshold",
                "step_epochs")
        given = {k: getattr(self, k) for k in keys if k in self.model_fields_set or k in ("w_lr",)}
        return FinetuneConfig(data=self.data, epochs=self.epochs, use_balanced=True, clip_max_norm=self.clip_max_norm,
                              device="cpu", **given)

    @model_validator(mode="after")
    def _resolve(self) -> "TrainConfig":
        if self.metric == "ms-ssim" and min(self.patch_size, self.val_patch_size) < 161:
            raise ValueError(f"metric ms-ssim needs crops of at least 161 px (5-scale MS-SSIM); "
                             f"patch_size={self.patch_size}: pass --patch-size 256")
        if sorted(self.lr_milestones) != self.lr_milestones or any(m < 1 for m in self.lr_milestones):
            raise ValueError(f"lr_milestones={self.lr_milestones}: give increasing epoch numbers >= 1")
        gamma_opts = [f"--{k}" for k in ("adaptive_gamma", "gamma_strategy", "gamma", "gamma_final", "step_epochs")
                      if k in self.model_fields_set and getattr(self, k) not in (None, False, [])]
        if gamma_opts and not self.use_balanced:
            raise ValueError(f"{', '.join(gamma_opts)} only act on the balanced optimizer: add --use_balanced")
        if self.use_balanced and self.metric != "mse":
            raise ValueError("--use_balanced balances lambda*255^2*MSE and bpp: use --metric mse")
        if self.use_balanced:
            self.balanced_config()  # bad gamma options fail here, with the finetune wording
        return self


class EvalConfig(ConfigSection):
    """Options of ``finetune-kit compress eval``."""

    model_config = ConfigDict(extra="forbid")

    checkpoints: list[Path] = Field(min_length=1)
    data: Path
    output: Path = Path("runs/compression-eval")
    model: Optional[str] = None
    limit: Optional[int] = Field(None, ge=1)
    anchors: Optional[Path] = None
    anchor: str = "VTM"
    bd_method: Literal["akima", "pchip", "cubic"] = "akima"
    name: Optional[str] = None
    threads: Optional[int] = Field(None, ge=1)
    device: str = Field("cpu", description="cpu (default), cuda or cuda:N; entropy coding itself runs on the CPU")
    progress: bool = True
    pad: Literal["edge", "centred"] = "edge"

    @field_validator("model")
    @classmethod
    def _model(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else _check_model(v)

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
