"""Typed options of ``finetune-kit compress compare`` (validated once, at the edge)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import ConfigDict, Field, field_validator, model_validator

from finetune_kit.tasks.config_base import ConfigSection

from finetune_kit.tasks.compression.compare.workflows import WORKFLOWS
from finetune_kit.tasks.compression.config import absolute_path, check_device, require_image_folder

__all__ = ["CompareConfig"]


class CompareConfig(ConfigSection):
    """Options of ``compress compare`` (see ``docs/compression_finetuning.md``).

    Budget: every workflow runs ``steps`` optimizer steps = ``epochs`` epochs of
    ``steps / epochs`` batches of ``batch_size`` random ``patch_size`` px crops (``steps`` must be
    a multiple of ``epochs``); validation (held-out ``val_fraction`` of ``data`` or ``val_data``)
    after every epoch gives the R-D cost curve for "steps to reach (a)'s final R-D cost".
    Evaluation: the first ``eval_limit`` images (sorted by name, default all) of ``eval_data``,
    real bitstreams. ``learning_rate`` (default 1e-4) is the base LR of the fine-tunes,
    ``scratch_learning_rate`` (default 1e-4) that of from-scratch training.

    Raises (at validation):
        ValueError: a missing checkpoint or folder, no lambda or a lambda <= 0, ``steps`` not a
            multiple of ``epochs``, an unknown workflow, a bad device.
    """

    model_config = ConfigDict(extra="forbid")

    checkpoint: Path
    lambdas: list[float] = Field(min_length=1)
    steps: int = Field(ge=1)
    data: Path
    eval_data: Path
    epochs: int = Field(5, ge=1)
    eval_limit: Optional[int] = Field(None, ge=1)
    val_data: Optional[Path] = None
    val_fraction: float = Field(0.1, gt=0, lt=1)
    val_max_batches: Optional[int] = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    patch_size: int = Field(256, ge=64)
    learning_rate: float = Field(1e-4, gt=0)
    scratch_learning_rate: float = Field(1e-4, gt=0)
    workflows: list[str] = Field(default_factory=lambda: list(WORKFLOWS))
    output_dir: Path = Path("runs/compression-compare")
    name: Optional[str] = None
    resume: Optional[Path] = None
    anchors: Optional[Path] = None
    seed: int = 0
    threads: Optional[int] = Field(None, ge=1)
    num_workers: int = Field(0, ge=0)
    device: str = "cpu"
    wandb: Literal["offline", "disabled", "online"] = "disabled"
    progress: bool = True

    @field_validator("checkpoint")
    @classmethod
    def _ckpt(cls, v: Path) -> Path:
        if not Path(v).exists():
            raise ValueError(f"checkpoint {v} does not exist: pass the base model's .pt (e.g. RUN/checkpoints/best.pt)")
        return absolute_path(v)

    @field_validator("data", "eval_data", "val_data")
    @classmethod
    def _folder(cls, v: Optional[Path]) -> Optional[Path]:
        return absolute_path(require_image_folder(v))

    @field_validator("output_dir", "resume", "anchors")
    @classmethod
    def _abs(cls, v: Optional[Path]) -> Optional[Path]:
        return absolute_path(v)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @field_validator("lambdas")
    @classmethod
    def _lambdas(cls, v: list[float]) -> list[float]:
        if any(x <= 0 for x in v):
            raise ValueError(f"lambdas {v}: every lambda must be > 0, e.g. --lambda 0.0035,0.013")
        return sorted(set(float(x) for x in v))

    @field_validator("workflows")
    @classmethod
    def _workflows(cls, v: list[str]) -> list[str]:
        bad = [w for w in v if w not in WORKFLOWS]
        if bad or not v:
            raise ValueError(f"unknown workflow(s) {', '.join(bad) or '(none given)'}: use some of {', '.join(WORKFLOWS)}")
        return [w for w in WORKFLOWS if w in v]  # table order; finetune-all first

    @model_validator(mode="after")
    def _budget(self) -> "CompareConfig":
        if self.steps % self.epochs:
            raise ValueError(f"steps={self.steps} is not a multiple of epochs={self.epochs}: every workflow runs "
                             f"epochs x steps/epochs steps; pass e.g. --steps {self.epochs * max(1, self.steps // self.epochs)}")
        if self.patch_size % 16:
            raise ValueError(f"patch_size={self.patch_size}: use a multiple of 16 px (e.g. 128 or 256)")
        return self

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch: ``steps / epochs``."""
        return self.steps // self.epochs
