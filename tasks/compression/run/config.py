"""The configuration of the one compression run (``compress train`` and ``compress finetune``).

:class:`RunConfig` is made of sections of a few fields each (``data``, ``source``, ``run``,
``optim``, ``layer_lr``, ``unfreeze``, ``hierarchical``, ``balanced``, ``early_stop``); every
field is one command-line option of both commands. The two commands differ only in defaults:
:class:`TrainConfig` (from scratch: LR 1e-4, every layer group at x1, 10 epochs, ``hpcm-tiny`` at
lambda 0.0067) and :class:`FinetuneConfig` (from a checkpoint: LR 1e-5, the guides' layer-wise
multipliers, 500 epochs, the checkpoint's model and lambda).

A config validates from the nested sections or from the flat leaf keys (leaf names are unique
across sections; ``lambda``, ``learning-rate``, ``lr``, ``adaptive_window`` ... accepted as
written), so a run folder's flat ``config.json`` of any version is a valid config. The run
records its config flat (:meth:`RunConfig.flat`), which every reader of run folders
(``compress eval``, ``compare``, ``analyze``, ``rerun``) reads.

``lmbda`` is the rate-distortion trade-off of ``lmbda * 255^2 * MSE + bpp`` (MSE on [0, 1]
images) or ``lmbda * (1 - MS-SSIM) + bpp``. Options that the others make ineffective give one
:class:`OptionWarning` each at validation.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from pydantic import AliasChoices, Field, field_validator, model_validator

from finetune_kit.tasks.compression.config import (PAPER_LAMBDAS, CudaFlag, absolute_path, check_device,
                                                   check_model_name, require_image_folder)
from finetune_kit.tasks.compression.finetune.adaptation_config import AdapterSection, DomainSection
from finetune_kit.tasks.compression.finetune.config import LayerLRSection, UnfreezeSection
from finetune_kit.tasks.compression.objectives.config import (SCALE_MODULATION_PRESETS, BalancedSection,
                                                              HierarchicalSection, check_objectives,
                                                              resolved_gamma_strategy)
from finetune_kit.tasks.compression.run.workflow_name import workflow_tag
from finetune_kit.tasks.cli_options import nest
from finetune_kit.tasks.config_base import ConfigSection

__all__ = ["DataSection", "SourceSection", "RunSection", "OptimSection", "EarlyStopSection", "RunConfig",
           "TrainConfig", "FinetuneConfig", "OptionWarning", "RECORDED_KEYS", "LR_SCHEDULES"]

#: keys a run records about itself in ``config.json`` (not settings to repeat): dropped when read back
RECORDED_KEYS = ("run_dir", "source_lmbda", "command")

LR_SCHEDULES = ("constant", "cosine", "discriminative", "multistep")


class OptionWarning(UserWarning):
    """An option was given that has no effect with the other options (the message names both)."""


def _aliases(*names: str) -> dict:
    return {"aliases": list(names)}


class DataSection(ConfigSection):
    """Training images, random crops, batches and the validation split."""

    data: Path = Field(description="Folder of training images, e.g. ../shared/data/photos-train.",
                       json_schema_extra=_aliases("-d", "--dataset"))
    val_data: Optional[Path] = Field(None, description="Validation folder; unset: hold out --val-fraction of --data.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Held-out fraction of --data (without --val-data).")
    val_max_batches: Optional[int] = Field(None, ge=1, description="Validate on at most this many batches; unset: all.")
    batch_size: int = Field(8, ge=1, description="Images per batch (the global batch under torchrun).",
                            json_schema_extra=_aliases("-b"))
    patch_size: int = Field(256, ge=64, description="Training crop side, px, a multiple of 16.")
    val_patch_size: Optional[int] = Field(None, ge=64, description="Validation crop side; unset: --patch-size.")
    steps_per_epoch: Optional[int] = Field(None, ge=1, description="Batches per epoch, drawn with replacement; "
                                                                   "unset: one pass over the images.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.",
                             json_schema_extra=_aliases("--workers", "-n"))
    cache_images: bool = Field(True, description="Keep decoded images in memory.")

    @field_validator("data", "val_data")
    @classmethod
    def _folder_exists(cls, v: Optional[Path]) -> Optional[Path]:
        return absolute_path(require_image_folder(v))


class SourceSection(ConfigSection):
    """What the run starts from and what it optimizes: checkpoint, model, lambda, metric."""

    checkpoint: Optional[Path] = Field(None, description="Trained checkpoint (.pt or a run folder) to start from; "
                                                         "unset: random weights.",
                                       json_schema_extra=_aliases("--finetune"))
    model: Optional[str] = Field(None, description="Model: hpcm-tiny, hpcm-small, hpcm-base, hpcm-large, "
                                                   "bmshj2018-hyperprior, mbt2018-mean, cheng2020-anchor, "
                                                   "elic2022-chandelier (hpcm_base, HPCM-Base are read as hpcm-base); "
                                                   "unset: the checkpoint's.",
                                 json_schema_extra=_aliases("-m", "--preset"))
    lmbda: Optional[float] = Field(None, gt=0, validation_alias=AliasChoices("lmbda", "lambda"),
                                   description="R-D lambda (loss = lambda*255^2*MSE + bpp); unset: the checkpoint's.",
                                   json_schema_extra=_aliases("--lambda"))
    quality: Optional[int] = Field(None, ge=1, le=len(PAPER_LAMBDAS), description="Lambda from the HPCM paper's "
                                                                                  "list, 1..6 (replaces --lambda).")
    metric: Literal["mse", "ms-ssim"] = Field("mse", description="Distortion: mse or ms-ssim (crops >= 161 px).")

    @field_validator("model")
    @classmethod
    def _model(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else check_model_name(v)

    @field_validator("checkpoint")
    @classmethod
    def _ckpt(cls, v: Optional[Path]) -> Optional[Path]:
        if v is not None and not Path(v).exists():
            raise ValueError(f"checkpoint {v} does not exist: pass a .pt file or a run folder of 'compress train'")
        return absolute_path(v)


class RunSection(CudaFlag):
    """The run folder, its length, seed, device and logging."""

    output_dir: Path = Field(Path("runs/compression-finetune"), description="Parent of the run folder.",
                             json_schema_extra=_aliases("--output", "-o", "--save-path", "--save_path"))
    name: Optional[str] = Field(None, description="Run name; unset: MODEL-...-lambdaL.")
    resume: Optional[Path] = Field(None, description="Run folder or checkpoint to continue (every state restored).")
    epochs: int = Field(500, ge=1, description="Epochs (passes over the images, or --steps-per-epoch batches).",
                        json_schema_extra=_aliases("--num-epochs", "--num_epochs", "-e"))
    seed: int = Field(0, description="Random seed.")
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads; unset: the free cores (CPUs minus the "
                                                                   "load average, at least 1).",
                                   json_schema_extra=_aliases("--num-threads", "--num_threads"))
    device: str = Field("cpu", description="auto (CUDA when available, else CPU), cpu, cuda or cuda:N.")
    keep_last: int = Field(2, ge=1, description="Most recent checkpoints kept.")
    keep_best: int = Field(1, ge=0, description="Best checkpoints kept, by validation R-D cost.")
    wandb: Literal["offline", "disabled", "online"] = Field("offline", description="Weights & Biases mode.")
    progress: bool = Field(True, description="Print the LR table and one line per epoch.")

    @field_validator("output_dir", "resume")
    @classmethod
    def _absolute(cls, v: Optional[Path]) -> Optional[Path]:
        return absolute_path(v)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)


class OptimSection(ConfigSection):
    """Optimizers, LR schedule and gradient clipping."""

    learning_rate: float = Field(1e-5, gt=0, validation_alias=AliasChoices("learning_rate", "learning-rate", "lr"),
                                 description="Base LR (AdamW); a group's LR is base x its multiplier x strategy factor.",
                                 json_schema_extra=_aliases("--lr", "--finetune-lr", "--finetune_lr"))
    aux_lr: float = Field(1e-3, gt=0, description="Adam LR of the quantiles (aux loss).")
    clip_max_norm: float = Field(1.0, ge=0, description="Global gradient-norm clip (0 disables).")
    lr_schedule: Literal["constant", "cosine", "discriminative", "multistep"] = Field(
        "constant", description="constant, cosine (timm, honours multipliers), discriminative (per-group warm-ups, "
                                "step decay) or multistep (x --lr-gamma at --lr-milestones).")
    warmup_epochs: float = Field(0.0, ge=0, description="Global LR warm-up, epochs (constant/cosine).")
    min_lr: float = Field(1e-7, ge=0, description="End LR of the cosine schedule.")
    lr_milestones: list[int] = Field(default_factory=list, description="multistep: epochs after which the LR is "
                                                                       "multiplied by --lr-gamma.")
    lr_gamma: float = Field(0.3, gt=0, le=1, description="multistep: LR factor at each milestone.")
    discriminative_warmups: str = Field("10,10,20,20,50", description="discriminative: per-group warm-up epochs "
                                                                      "(g_a,g_s,h_a,h_s,context, or group:epochs).")
    decay_rate: float = Field(0.5, gt=0, le=1, description="discriminative: step decay factor.")
    decay_every: int = Field(100, ge=1, description="discriminative: epochs between decays.")

    @field_validator("lr_milestones")
    @classmethod
    def _milestones(cls, v: list[int]) -> list[int]:
        if sorted(v) != v or any(m < 1 for m in v):
            raise ValueError(f"lr_milestones={v}: give increasing epoch numbers >= 1")
        return v


class EarlyStopSection(ConfigSection):
    """Early stopping on the validation R-D cost, per scale or on the total."""

    scale_early_stopping: bool = Field(False, description="Early stopping per scale on its validation R-D cost.")
    early_stopping_patience: Optional[int] = Field(None, ge=1, description="Patience, epochs (50 per scale when "
                                                                           "unset); alone: plain early stopping.")
    early_stopping_min_delta: float = Field(0.0, ge=0, description="Smallest improvement of the R-D cost.")
    max_patience: Optional[int] = Field(None, ge=1, description="Ceiling of adaptive patience; unset: 2x patience.")
    adaptive_patience: bool = Field(True, description="Scale early stopping adapts its patience to the gains.")


#: section name -> section class of :class:`RunConfig` (the order of ``config.json`` and of the help)
SECTIONS = ("source", "data", "run", "optim", "layer_lr", "unfreeze", "hierarchical", "balanced", "early_stop",
            "adapter", "domain")


class RunConfig(ConfigSection):
    """One compression run; see the module docstring. Read the values as ``cfg.optim.learning_rate`` ...

    Raises (at validation):
        ValueError: a missing image folder or checkpoint, a bad device, an unknown model, a patch
            size that is not a multiple of 16, MS-SSIM with crops under 161 px, balanced R-D with
            MS-SSIM, inconsistent objective options (:func:`check_objectives`).
    """

    #: the command this config is the options of (recorded in ``config.json`` as ``command``)
    command: ClassVar[str] = "finetune"
    #: warn (:class:`~finetune_kit.tasks.compression.run.source.FromScratchWarning`) without a checkpoint
    warn_from_scratch: ClassVar[bool] = True
    #: validation always reports per-scale R-D costs (``val_rd_s1`` ...; a probe forward tells whether
    #: the model has scales). Otherwise only runs with per-scale or balanced tasks or per-scale early
    #: stopping probe: the probe's random input shifts the run's random stream.
    measure_scales: ClassVar[bool] = True

    source: SourceSection = Field(default_factory=SourceSection)
    data: DataSection
    run: RunSection = Field(default_factory=RunSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    layer_lr: LayerLRSection = Field(default_factory=LayerLRSection)
    unfreeze: UnfreezeSection = Field(default_factory=UnfreezeSection)
    hierarchical: HierarchicalSection = Field(default_factory=HierarchicalSection)
    balanced: BalancedSection = Field(default_factory=BalancedSection)
    early_stop: EarlyStopSection = Field(default_factory=EarlyStopSection)
    adapter: AdapterSection = Field(default_factory=AdapterSection)
    domain: DomainSection = Field(default_factory=DomainSection)

    @model_validator(mode="before")
    @classmethod
    def _nest(cls, data: Any) -> Any:
        """Flat leaf keys (a run folder's ``config.json``, a ``--config`` file) go to their section;
        keys the run records about itself (:data:`RECORDED_KEYS`) are dropped; unknown keys stay at
        the top, where they fail as unknown."""
        if not isinstance(data, dict):
            return data
        return nest(cls, {k: v for k, v in data.items() if str(k).replace("-", "_") not in RECORDED_KEYS})

    @model_validator(mode="after")
    def _resolve(self) -> "RunConfig":
        src, data, optim = self.source, self.data, self.optim
        if src.quality is not None:
            src.lmbda = PAPER_LAMBDAS[src.quality - 1]
        if data.val_patch_size is None:
            data.val_patch_size = data.patch_size
        if data.patch_size % 16:
            raise ValueError(f"patch_size={data.patch_size}: use a multiple of 16 px (e.g. 128 or 256)")
        if src.metric == "ms-ssim" and min(data.patch_size, data.val_patch_size) < 161:
            raise ValueError(f"metric ms-ssim needs crops of at least 161 px (5-scale MS-SSIM); "
                             f"patch_size={data.patch_size}: pass --patch-size 256")
        if src.metric != "mse" and (self.balanced.use_balanced or self.hierarchical.use_hierarchical):
            raise ValueError("--use_balanced and --use_hierarchical split lambda*255^2*MSE and bpp: use --metric mse")
        if optim.lr_milestones and "lr_schedule" not in optim.model_fields_set:
            optim.lr_schedule = "multistep"  # a compress train config.json of before the merge
        check_objectives(self.hierarchical, self.balanced)
        self._warn_ignored()
        return self

    @property
    def gamma_strategy(self) -> str:
        """The gamma schedule in effect (:func:`resolved_gamma_strategy`)."""
        return resolved_gamma_strategy(self.balanced, self.hierarchical.use_hierarchical)

    def default_run_name(self, model_name: str, lmbda: float) -> str:
        """The run folder's name when ``--name`` is not given (a timestamp is appended):
        ``MODEL-finetune-WORKFLOW-lambdaL``, WORKFLOW from :func:`workflow_tag` (e.g. ``balanced-hpcm``)."""
        return f"{model_name}-finetune-{workflow_tag(self)}-lambda{lmbda:g}"

    def flat(self) -> dict[str, Any]:
        """The config as flat leaf keys (JSON types), as run folders record it."""
        return {k: v for section in SECTIONS for k, v in getattr(self, section).model_dump(mode="json").items()}

    def _warn_ignored(self) -> None:
        """One :class:`OptionWarning` per option that the other options make ineffective."""
        bal, hier, unf = self.balanced, self.hierarchical, self.unfreeze
        given = bal.model_fields_set
        gamma_opts = [f"--{k}" for k in ("gamma", "gamma_final", "gamma_strategy", "adaptive_gamma", "scale_gammas")
                      if k in given and getattr(bal, k) not in (None, False)]
        strat = self.gamma_strategy
        if bal.step_epochs and strat != "step":
            warnings.warn(f"--step_epochs only act on --gamma_strategy step (in effect: {strat}): "
                          "add --gamma_strategy step", OptionWarning, stacklevel=2)
        if "gamma_decay" in given and strat != "step":
            warnings.warn(f"--gamma_decay only acts on --gamma_strategy step (in effect: {strat}): "
                          "add --gamma_strategy step", OptionWarning, stacklevel=2)
        if hier.use_hierarchical and not bal.use_balanced and hier.scale_modulation is None:
            warnings.warn("--use_hierarchical without --use_balanced: applying --scale_modulation guides "
                          f"({SCALE_MODULATION_PRESETS['guides']}) so the per-scale tasks change the gradient; pass "
                          "--scale_modulation or --use_balanced to choose", OptionWarning, stacklevel=2)
        if gamma_opts and not bal.use_balanced:
            warnings.warn(f"{', '.join(gamma_opts)} only act on the balanced optimizer and are ignored: add "
                          "--use_balanced", OptionWarning, stacklevel=2)
        elif bal.gamma_final is not None and strat in ("constant", "fixed"):
            warnings.warn(f"--gamma_final {bal.gamma_final:g} is ignored with a constant gamma: add --adaptive_gamma "
                          "(or --gamma_strategy hpcm/linear/cosine/...)", OptionWarning, stacklevel=2)
        if unf.progressive_unfreeze:
            from finetune_kit.strategies.progressive import parse_schedule  # local: strategies import torch (start-up time of --help)

            late = [e for e in parse_schedule(unf.unfreeze_schedule) if e >= self.run.epochs]
            if late:
                warnings.warn(f"--unfreeze_schedule {unf.unfreeze_schedule}: epoch(s) {', '.join(map(str, late))} are "
                              f">= --epochs {self.run.epochs}, so those stages never unfreeze: lower them or raise "
                              "--epochs", OptionWarning, stacklevel=2)
        elif "unfreeze_schedule" in unf.model_fields_set:
            warnings.warn("--unfreeze_schedule is ignored without --progressive_unfreeze", OptionWarning, stacklevel=2)
        if self.optim.lr_milestones and self.optim.lr_schedule != "multistep":
            warnings.warn(f"--lr-milestones only act on --lr-schedule multistep (in effect: {self.optim.lr_schedule})",
                          OptionWarning, stacklevel=2)


class FinetuneConfig(RunConfig):
    """``compress finetune``: the run from a checkpoint, with :class:`RunConfig`'s defaults (LR 1e-5,
    the guides' layer-wise multipliers, 500 epochs, ``runs/compression-finetune``)."""


class TrainRunSection(RunSection):
    """:class:`RunSection` with ``compress train``'s defaults (10 epochs, ``runs/compression``, last checkpoint)."""

    output_dir: Path = Field(Path("runs/compression"), description="Parent of the run folder.",
                             json_schema_extra=_aliases("--output", "-o", "--save-path", "--save_path"))
    epochs: int = Field(10, ge=1, description="Epochs (passes over the images, or --steps-per-epoch batches).",
                        json_schema_extra=_aliases("--num-epochs", "--num_epochs", "-e"))
    keep_last: int = Field(1, ge=1, description="Most recent checkpoints kept.")


class TrainSourceSection(SourceSection):
    """:class:`SourceSection` with ``compress train``'s defaults (``hpcm-tiny`` at lambda 0.0067)."""

    model: Optional[str] = Field("hpcm-tiny", description=SourceSection.model_fields["model"].description,
                                 json_schema_extra=_aliases("-m", "--preset"))
    lmbda: Optional[float] = Field(PAPER_LAMBDAS[2], gt=0, validation_alias=AliasChoices("lmbda", "lambda"),
                                   description="R-D lambda (loss = lambda*255^2*MSE + bpp).",
                                   json_schema_extra=_aliases("--lambda"))


class TrainOptimSection(OptimSection):
    """:class:`OptimSection` with ``compress train``'s LR (1e-4, the HPCM paper's)."""

    learning_rate: float = Field(1e-4, gt=0, validation_alias=AliasChoices("learning_rate", "learning-rate", "lr"),
                                 description=OptimSection.model_fields["learning_rate"].description,
                                 json_schema_extra=_aliases("--lr", "--finetune-lr", "--finetune_lr"))


class TrainLayerLRSection(LayerLRSection):
    """:class:`LayerLRSection` with ``compress train``'s multipliers: every group at x1."""

    lr_mults: str = Field("", description=LayerLRSection.model_fields["lr_mults"].description)


class TrainConfig(RunConfig):
    """``compress train``: the run with no source checkpoint and the ``full`` strategy (LR 1e-4,
    every group at x1, 10 epochs, ``hpcm-tiny`` at lambda 0.0067, ``runs/compression``)."""

    command: ClassVar[str] = "train"
    warn_from_scratch: ClassVar[bool] = False
    measure_scales: ClassVar[bool] = False

    source: TrainSourceSection = Field(default_factory=TrainSourceSection)
    run: TrainRunSection = Field(default_factory=TrainRunSection)
    optim: TrainOptimSection = Field(default_factory=TrainOptimSection)
    layer_lr: TrainLayerLRSection = Field(default_factory=TrainLayerLRSection)

    def default_run_name(self, model_name: str, lmbda: float) -> str:
        """``MODEL-METRIC-lambdaL``, or ``MODEL-METRIC-WORKFLOW-lambdaL`` when the objective is not the
        plain one (e.g. ``balanced-step``, :func:`workflow_tag`); a timestamp is appended."""
        tag = workflow_tag(self)
        return f"{model_name}-{self.source.metric}{'' if tag == 'all' else '-' + tag}-lambda{lmbda:g}"

    @field_validator("source")
    @classmethod
    def _no_source(cls, v: SourceSection) -> SourceSection:
        if v.checkpoint is not None:
            raise ValueError("compress train starts from random weights: use 'compress finetune --checkpoint' to "
                             "start from a checkpoint")
        return v
