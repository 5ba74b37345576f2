"""Typed options of ``finetune-kit compress compare`` (validated once, at the edge)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from finetune_kit.tasks.compression.compare.workflows import WORKFLOWS
from finetune_kit.tasks.compression.config import CudaFlag, absolute_path, check_device, require_image_folder

__all__ = ["CompareConfig"]


class CompareConfig(CudaFlag):
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

    checkpoint: Path = Field(description="Base checkpoint (.pt or run folder) every fine-tune starts from.")
    lambdas: list[float] = Field(min_length=1, description="Target lambda(s), e.g. 0.0035,0.013; two or more give "
                                                           "BD-rates.", json_schema_extra={"aliases": ["--lambda"],
                                                                                           "cli": "text"})
    steps: int = Field(ge=1, description="Optimizer steps per workflow (the same budget for all; a multiple of "
                                         "--epochs).")
    data: Path = Field(description="Training images, e.g. ../shared/data/photos-train.",
                       json_schema_extra={"aliases": ["-d", "--dataset"]})
    eval_data: Path = Field(description="Evaluation images (real bitstreams), e.g. ../shared/data/kodak.")
    epochs: int = Field(5, ge=1, description="Epochs the budget is cut into (validation after each).",
                        json_schema_extra={"aliases": ["-e"]})
    eval_limit: Optional[int] = Field(None, ge=1, description="Evaluate only the first N images, sorted by name; "
                                                              "unset: all.")
    val_data: Optional[Path] = Field(None, description="Validation folder; unset: hold out --val-fraction of --data.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Held-out fraction of --data.")
    val_max_batches: Optional[int] = Field(None, ge=1, description="Validate on at most this many batches.")
    batch_size: int = Field(8, ge=1, description="Images per batch.", json_schema_extra={"aliases": ["-b"]})
    patch_size: int = Field(256, ge=64, description="Training crop side, px, multiple of 16.")
    learning_rate: float = Field(1e-4, gt=0, description="Base LR of the fine-tunes (groups get it x their multiplier).",
                                 json_schema_extra={"aliases": ["--lr"]})
    scratch_learning_rate: float = Field(1e-4, gt=0, description="LR of the from-scratch run.")
    workflows: list[str] = Field(default_factory=lambda: list(WORKFLOWS),
                                 description=f"Subset, comma-separated: {','.join(WORKFLOWS)}.",
                                 json_schema_extra={"cli": "text"})
    output_dir: Path = Field(Path("runs/compression-compare"), description="Parent of the comparison folder.",
                             json_schema_extra={"aliases": ["--output", "-o"]})
    name: Optional[str] = Field(None, description="Comparison folder name; unset: compare-MODEL.")
    resume: Optional[Path] = Field(None, description="Comparison folder to continue (its config.json; finished cells "
                                                     "kept).")
    anchors: Optional[Path] = Field(None, description="Anchors JSON drawn on the plot; unset: the shipped kodak_rd.json.")
    seed: int = Field(0, description="Random seed (the same for every workflow).")
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads; unset: the free cores (CPUs minus the "
                                                                   "load average, at least 1).",
                                   json_schema_extra={"aliases": ["--num-threads", "--num_threads"]})
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.",
                             json_schema_extra={"aliases": ["--workers", "-n"]})
    device: str = Field("cpu", description="auto (CUDA when available, else CPU), cpu, cuda or cuda:N.")
    wandb: Literal["offline", "disabled", "online"] = Field("disabled", description="Weights & Biases mode of the "
                                                                                    "fine-tunes.")
    progress: bool = Field(True, description="Per-epoch lines of each fine-tune.")

    @field_validator("lambdas", "workflows", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        """``0.0035,0.013`` (or a list of such strings) -> a list."""
        if isinstance(v, str):
            v = [v]
        if isinstance(v, (list, tuple)):
            v = [x for item in v for x in (str(item).replace(",", " ").split() if isinstance(item, str) else [item])]
        return v

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
