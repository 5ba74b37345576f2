"""Step 1 of a classification run: build everything the epochs need, then start the run folder.

:func:`build` reads the images (or a resumed run's ``split.csv``), splits them, builds the
model, the strategy, the transforms and the optimisation (AdamW on the strategy's parameter
groups, warm-up + cosine schedule, mixup, EMA, early stopping) into one :class:`TrainingRun`.
It writes nothing. :func:`start_run` then makes (or reopens) the run folder, writes the split
and config, and opens the logger and the checkpoint manager. The later steps
(:mod:`~finetune_kit.tasks.classification.loop`, :mod:`~finetune_kit.tasks.classification.report`)
take the :class:`TrainingRun` and change it in place.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3

from finetune_kit.amp import resolve_amp
from finetune_kit.distributed import (
    DDPTracker,
    broadcast_object,
    dist_info,
    epoch_sampler,
    init_distributed,
    is_distributed,
    is_main,
    local_device,
    per_rank_batch,
)
from finetune_kit.early_stopping import EarlyStopping
from finetune_kit.layer_groups import parameter_count, resolve_layer_groups
from finetune_kit.param_groups import parse_multipliers
from finetune_kit.runs.checkpoint import CheckpointManager
from finetune_kit.runs.logger import RunLogger
from finetune_kit.runs.run_dir import RunDir, new_run_dir
from finetune_kit.schedulers import build_lr_scheduler
from finetune_kit.seeding import seed_everything
from finetune_kit.strategy import get_strategy
from finetune_kit.tasks.classification.accumulation import optimizer_steps
from finetune_kit.tasks.classification.class_report import check_class_options
from finetune_kit.tasks.classification.config import ClassificationConfig, ConfigError, resolved_bn_stats
from finetune_kit.tasks.classification.data import LabelledImages, discover, read_split, stratified_split, write_split
from finetune_kit.tasks.classification.feature_cache import can_use_feature_cache
from finetune_kit.tasks.classification.folds import group_ids, grouped_split
from finetune_kit.tasks.classification.imbalance import ImbalanceError, balanced_sampler, build_criterion
from finetune_kit.tasks.classification.model import build_model, head_param_names
from finetune_kit.tasks.classification.multilabel_data import is_multilabel, label_values
from finetune_kit.tasks.classification.multilabel_setup import (multilabel_criterion_and_mixup, read_multilabel_images,
                                                                split_multilabel, write_run_split)
from finetune_kit.tasks.classification.transforms import CachedImageDataset, ImageCache, build_transforms
from finetune_kit.tasks.classification.weights_check import random_init_warning

__all__ = ["RunData", "Optimisation", "TrainingRun", "build", "build_strategy", "start_run", "epoch_seed",
           "image_loader"]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of every RNG at ``epoch`` (0-based; -1 for the unshuffled evaluation loaders)."""
    return (seed * 1_000_003 + 7919 * (epoch + 1)) % (2**31 - 1)


def _seed_worker(worker_id: int) -> None:
    """DataLoader worker start: seed its copy of the augmentation from the worker's torch seed
    (drawn from the epoch's generator), so runs with the same ``num_workers`` repeat exactly."""
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(info.seed % 2**32)


@dataclass
class RunData:
    """The images of a run: all of them, the three splits, their transforms and decoded cache,
    and the files skipped as corrupt."""

    images: Any  # LabelledImages
    train: list
    val: list
    test: list
    tf: Any  # Transforms
    cache: Any  # ImageCache
    skipped: list[str]


@dataclass
class Optimisation:
    """What steps the model: optimizer, LR schedule, loss (with mixup), AMP scaler, the steps per
    epoch, the monitored metric (``val_auroc``, ... with ``mode`` max/min) and early stopping."""

    groups: Any  # LayerGroups
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: Any
    criterion: torch.nn.Module
    mixup: Any
    steps: int
    monitor: str
    mode: str
    early: Any = None
    class_weights: Any = None  # (K,) numpy weights of --class-weights, or None


@dataclass
class TrainingRun:
    """The state of one classification run, passed from step to step.

    Built by :func:`build`; ``run``, ``logger`` and ``checkpoints`` are set by :func:`start_run`.
    ``start_epoch``, ``global_step``, ``feature_s`` (seconds spent extracting cached features),
    ``features`` (the cache itself) and ``peak_memory`` change as the run goes.
    """

    cfg: ClassificationConfig
    resume: bool
    console: Any
    device: torch.device
    amp: Any
    data: RunData
    model: torch.nn.Module
    weights_report: Any
    strategy: Any
    opt: Optimisation
    ema: Any
    use_feature_cache: bool
    total_params: int
    t_start: float = field(default_factory=time.perf_counter)
    run: Any = None
    logger: Any = None
    checkpoints: Any = None
    start_epoch: int = 0
    global_step: int = 0
    feature_s: float = 0.0
    features: dict = field(default_factory=dict)
    peak_memory: tuple[float, float] | None = None
    ddp: Any = None  # finetune_kit.distributed.DDPTracker: the DDP wrapper, re-made after unfreezing
    forgetting: Any = None  # forgetting_run.ForgettingState: pretrained weights, source head, L2-SP

    @property
    def eval_model(self) -> torch.nn.Module:
        """The module validated and reported: the EMA when ``--ema``, else the model."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def bn_frozen(self) -> bool:
        """Whether BatchNorm running statistics stay fixed (``--bn_stats``, resolved)."""
        return resolved_bn_stats(self.cfg) == "frozen"


def image_loader(state: TrainingRun, samples, transform, epoch: int | None = None, drop_last: bool = False):
    """A DataLoader over ``samples`` (decoded images from the run's cache) through ``transform``;
    shuffled with the epoch's seed when ``epoch`` is given, else in order."""


    cfg = state.cfg
    ds = CachedImageDataset(state.data.cache, [s.path for s in samples], label_values(samples), transform)
    g = torch.Generator().manual_seed(epoch_seed(cfg.runtime.seed, -1 if epoch is None else epoch))
    batch, sampler = cfg.optim.batch_size, None
    if epoch is not None and cfg.classes.sampler == "balanced":  # --sampler balanced (one process only)
        sampler = balanced_sampler([s.label for s in samples], epoch_seed(cfg.runtime.seed, epoch))
    elif is_distributed() and epoch is not None:  # DDP: this rank's share of the global batch and of the epoch
        batch = per_rank_batch(cfg.optim.batch_size)
        sampler = epoch_sampler(ds, epoch_seed(cfg.runtime.seed, epoch))  # the order one process draws
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=epoch is not None and sampler is None,
                                       generator=None if sampler is not None else g, sampler=sampler,
                                       drop_last=drop_last and len(samples) >= cfg.optim.batch_size,
                                       num_workers=cfg.runtime.num_workers, pin_memory=state.device.type == "cuda",
                                       worker_init_fn=_seed_worker if cfg.runtime.num_workers else None)


def build(cfg: ClassificationConfig, *, resume: bool = False, image_cache=None, console=None) -> TrainingRun:
    """Everything a run needs, in memory: data and split, model, strategy, optimisation.

    Args:
        cfg: the validated config (``cfg.output.run_dir`` set when resuming; its ``split.csv`` is read).
        resume: use the split of ``cfg.output.run_dir`` instead of splitting the data.
        image_cache: an ``ImageCache`` of decoded images to share between runs (``compare``); a
            new one is made when None or of another size.
        console: a rich Console for messages (default: stderr).

    Raises:
        ConfigError, DataError, CorruptImageError, ModelError, UnknownStrategyError,
        StrategyOptionError: bad input, with one-line messages.
        ValueError: an empty training or validation split, an odd batch size with mixup/cutmix,
            or a strategy's layer groups that the model lacks.
    """


    console = console or Console(stderr=True)
    t_start = time.perf_counter()
    cfg.check_paths()
    build_strategy(cfg)  # options the strategy does not accept fail before any data is read

    init_distributed(cfg.runtime.device)  # torchrun: open the process group (gloo on CPU, NCCL on CUDA)
    console.quiet = console.quiet or not is_main()
    per_rank_batch(cfg.optim.batch_size)  # the global batch must split over the processes
    if cfg.classes.sampler == "balanced" and dist_info().world_size > 1:
        raise ImbalanceError("--sampler balanced runs in one process only; drop --nproc/torchrun or use "
                             "--class-weights balanced instead")
    device = local_device(cfg.runtime.device)
    if cfg.runtime.num_threads:
        torch.set_num_threads(cfg.runtime.num_threads)
    amp = resolve_amp(cfg.runtime.amp, device, cfg.runtime.amp_dtype)
    if amp.notice:
        console.print(f"[yellow]{amp.notice}[/]")
    images = _read_images(cfg, resume)
    seed_everything(cfg.runtime.seed)
    m = cfg.model
    model, weights_report = build_model(m.model_name, len(images.class_names), pretrained=m.pretrained,
                                        custom_weights_path=m.custom_weights_path,
                                        allow_partial_weights=m.allow_partial_weights, drop_rate=m.drop_rate,
                                        img_size=cfg.transforms.img_size)
    if weights_report is not None:
        console.print(weights_report.summary())
    if m.grad_checkpointing:  # timm: recompute activations block by block in the backward pass
        if not callable(getattr(model, "set_grad_checkpointing", None)):
            raise ConfigError(f"--grad-checkpointing: {m.model_name} has no set_grad_checkpointing; drop the option")
        model.set_grad_checkpointing(True)
    if warning := random_init_warning(m.model_name, m.pretrained, m.custom_weights_path):
        console.print(f"[bold yellow]{warning}[/]", soft_wrap=True)  # one line in logs
    strategy = build_strategy(cfg, model)
    model = strategy.prepare_model(model)  # e.g. LoRA adapters, before the groups and the optimizer
    model.to(device)
    if cfg.model.channels_last:  # as timm's train.py --channels-last
        model.to(memory_format=torch.channels_last)
    if cfg.model.compile:  # in place (nn.Module.compile): parameter names and state_dict keys unchanged
        model.compile()
    data = _prepare_data(cfg, images, model, strategy, image_cache, console, split=not resume)
    if is_multilabel(cfg):  # the per-class options of a K-class run have no multi-label meaning
        if cfg.classes.sampler == "balanced" or cfg.classes.ordinal_classes:
            raise ConfigError("--sampler balanced / --ordinal-classes: K-class options; drop them for --task "
                              "multilabel (use --class-weights balanced: per-label pos_weight)")
    else:
        check_class_options(cfg.classes, images.class_names, [s.label for s in data.val])
    opt = _build_optimisation(cfg, model, strategy, amp, len(images.class_names))
    if is_multilabel(cfg):  # masked BCE / focal loss; mixup/cutmix off (logged)
        opt.criterion, opt.mixup = multilabel_criterion_and_mixup(cfg, data.train, console)
    else:
        opt.criterion, opt.class_weights = _imbalance_criterion(cfg, data, opt.criterion)
    ema = _build_ema(cfg, model)
    state = TrainingRun(cfg=cfg, resume=resume, console=console, device=device, amp=amp, data=data, model=model,
                        weights_report=weights_report, strategy=strategy, opt=opt, ema=ema, use_feature_cache=False,
                        total_params=parameter_count(model), t_start=t_start)
    state.use_feature_cache = _feature_cache_allowed(state) and not _ddp_world(state)
    state.ddp = DDPTracker(model, device)
    opt.steps = len(image_loader(state, data.train, data.tf.train, epoch=0, drop_last=opt.mixup is not None))
    opt.schedule = _build_schedule(cfg, opt)
    return state


def build_strategy(cfg: ClassificationConfig, model: torch.nn.Module | None = None):
    """The strategy of ``cfg``: ``get_strategy(cfg.strategy.ft_strategy, **cfg.strategy_options())``; with
    ``model`` and ``--head_lr_mult`` != 1 (and a strategy that trains more than the head), the head's
    parameters get that LR multiplier, under any ``lr_mults`` given in ``strategy_kwargs``.

    Raises:
        UnknownStrategyError, StrategyOptionError: unknown name or option; ValueError: bad value.
    """

    options = cfg.strategy_options()
    strategy = get_strategy(cfg.strategy.ft_strategy, **options)
    if model is None or cfg.optim.head_lr_mult == 1.0 or strategy.head_only or cfg.probes_head:
        return strategy  # a probed head starts solved: one LR for all (LP-FT, Kumar et al. 2022)

    # the new head learns faster than the pretrained body
    head = {n: cfg.optim.head_lr_mult for n in head_param_names(model)}
    lr_mults = {**head, **parse_multipliers(options.get("lr_mults"))}
    return get_strategy(cfg.strategy.ft_strategy, **{**options, "lr_mults": lr_mults})


def _read_images(cfg: ClassificationConfig, resume: bool):
    """The labelled images: a resumed run's ``split.csv`` (split included), else ``cfg.data``."""

    if is_multilabel(cfg):
        return read_multilabel_images(cfg, resume)
    if resume:
        samples, class_names = read_split(RunDir(cfg.output.run_dir).path / "split.csv")
        return LabelledImages(samples, class_names, "split.csv")
    return discover(cfg.data)


def _prepare_data(cfg, images, model, strategy, image_cache, console, *, split: bool) -> RunData:
    """Transforms, decoded images (corrupt ones skipped with ``--skip_corrupt``) and the split.

    Raises:
        ValueError: an empty training or validation split.
    """

    tf = build_transforms(model, cfg.transforms.img_size, augment=cfg.resolved_augment(strategy.head_only),
                          clahe=cfg.transforms.clahe, seed=cfg.runtime.seed)
    cache = image_cache if image_cache is not None and image_cache.size == tf.cache_size else ImageCache(tf.cache_size)
    skipped = cache.load([s.path for s in images.samples], skip_corrupt=cfg.data.skip_corrupt)
    if skipped:
        console.print(f"[yellow]skipped {len(skipped)} corrupt image(s), e.g. {skipped[0]}[/]")
        images.samples = [s for s in images.samples if s.path not in set(skipped)]
    if split and is_multilabel(cfg):
        split_multilabel(cfg, images)
    elif split and cfg.data.group_column and cfg.data.layout in ("auto", "csv") and str(cfg.data.data).endswith(".csv"):
        groups = group_ids([s.path for s in images.samples], csv_path=cfg.data.data, column=cfg.data.group_column,
                           path_column=cfg.data.path_column)  # --group-column: no patient in two splits
        grouped_split(images, groups, val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction,
                      seed=cfg.data.split_seed)
    elif split:
        stratified_split(images, val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction,
                         seed=cfg.data.split_seed)
    train, val, test = images.subset("train"), images.subset("val"), images.subset("test")
    if not train or not val:
        raise ValueError(f"{cfg.data.data}: the split has {len(train)} training and {len(val)} validation images; "
                         "both must be non-empty (add images or change --val_fraction)")
    return RunData(images=images, train=train, val=val, test=test, tf=tf, cache=cache, skipped=list(skipped))


def _build_optimisation(cfg, model, strategy, amp, num_classes: int) -> Optimisation:
    """AdamW on the strategy's parameter groups, the loss (soft targets with mixup/cutmix), the AMP
    scaler and early stopping; ``steps`` and ``schedule`` are filled in by :func:`build`.

    Raises:
        ValueError: an odd batch size with mixup/cutmix; strategy layer groups the model lacks.
    """


    groups = resolve_layer_groups(model, **cfg.layer_group_options())
    # foreach: one multi-tensor update per group instead of a Python loop over ~150 tensors; the same
    # arithmetic (bit-identical on CPU, PyTorch's default on CUDA), ~10 % less optimizer time on CPU
    optimizer = torch.optim.AdamW(strategy.build_param_groups(groups, weight_decay=cfg.optim.weight_decay),
                                  lr=cfg.optim.learning_rate, foreach=True)
    use_mix = cfg.transforms.mixup > 0 or cfg.transforms.cutmix > 0
    if use_mix and cfg.optim.batch_size % 2:
        raise ValueError(f"--batch_size {cfg.optim.batch_size}: mixup/cutmix needs an even batch size")
    # a probed head (LP-FT, gradual): no label smoothing -- a smoothed target penalises the solved head's
    # confident logits, and those large early gradients distort the very features the probe was solved
    # on (Kumar et al. 2022)
    smoothing = 0.0 if cfg.probes_head else cfg.optim.smoothing
    mixup = Mixup(mixup_alpha=cfg.transforms.mixup, cutmix_alpha=cfg.transforms.cutmix, label_smoothing=smoothing,
                  num_classes=num_classes) if use_mix else None
    criterion = SoftTargetCrossEntropy() if use_mix else torch.nn.CrossEntropyLoss(label_smoothing=smoothing)
    monitor, mode = f"val_{cfg.optim.monitor}", ("min" if cfg.optim.monitor == "loss" else "max")
    patience = cfg.optim.early_stopping_patience
    early = EarlyStopping(patience=patience, mode=mode) if patience else None
    return Optimisation(groups=groups, optimizer=optimizer, schedule=None, scaler=amp.grad_scaler(), criterion=criterion,
                        mixup=mixup, steps=0, monitor=monitor, mode=mode, early=early)


def _imbalance_criterion(cfg: ClassificationConfig, data: RunData, criterion):
    """``--class-weights`` / ``--loss focal``: the weighted (focal) loss on the training labels, else
    ``criterion`` unchanged; and the class weights (None without them)."""
    smoothing = 0.0 if cfg.probes_head else cfg.optim.smoothing
    loss, weights = build_criterion(cfg.classes, [s.label for s in data.train], len(data.images.class_names),
                                    smoothing=smoothing, class_names=data.images.class_names)
    return (loss or criterion), weights


def _build_ema(cfg: ClassificationConfig, model: torch.nn.Module):
    """A timm ``ModelEmaV3`` of the model with ``--ema`` (decay ``--ema_decay``), else None."""
    if not cfg.optim.ema:
        return None

    return ModelEmaV3(model, decay=cfg.optim.ema_decay)


def _build_schedule(cfg: ClassificationConfig, opt: Optimisation):
    """Linear warm-up then cosine to ``--min_lr``, applied per optimizer step."""

    return build_lr_scheduler(opt.optimizer, epochs=cfg.epochs, steps_per_epoch=optimizer_steps(opt.steps,
                                                                                                cfg.optim.accum_steps),
                              warmup_epochs=cfg.optim.warmup_epochs, min_lr=cfg.optim.min_lr)


def _ddp_world(state: TrainingRun) -> bool:
    """Whether more than one process trains (DDP): the feature cache is then off."""

    return dist_info().world_size > 1


def _feature_cache_allowed(state: TrainingRun) -> bool:
    """Whether head-only epochs may train on cached backbone features.

    They may when the images are not randomly augmented -- or when augmentation is "auto", which
    then means "augment once backbone layers train" (a linear probe first, then fine-tuning: LP-FT).
    """

    cfg = state.cfg
    return can_use_feature_cache(state.model, head_only=True,
                                 random_train=state.data.tf.random_train and cfg.transforms.augment != "auto",
                                 mixup=state.opt.mixup is not None, enabled=cfg.runtime.feature_cache)


def start_run(state: TrainingRun) -> TrainingRun:
    """Make the run folder (or reopen a resumed one): ``split.csv``, ``config.json``,
    ``environment.json`` (with fingerprints of the data folder, the split file and any custom
    weights) and status ``running`` for a new run; then the logger (``metrics.jsonl``,
    wandb) and the checkpoint manager. Sets ``state.cfg.output.run_dir`` to the folder.

    Returns:
        ``state``, with ``run``, ``logger`` and ``checkpoints`` set.
    """
    cfg, main = state.cfg, is_main()  # under DDP only rank 0 writes; the others get its folder's path
    if state.resume:
        run = RunDir(cfg.output.run_dir, enabled=main)
    else:
        path = cfg.output.run_dir or (str(new_run_dir(cfg.output.output_dir, cfg.tag)) if main else None)
        run = RunDir(broadcast_object(path), enabled=main)
        cfg = state.cfg = cfg.replace(run_dir=str(run.path))
        if main:
            write_run_split(state.data.images, run.path / "split.csv", write_split)
        run.start(cfg, inputs={"data": cfg.data.data, "split": run.path / "split.csv",
                               "weights": cfg.model.custom_weights_path}, command="classify")
    state.run = run
    # the manager first: it refuses a folder another process runs on (a second --resume) before anything is
    # written; under DDP rank 0 alone writes checkpoints, so the other ranks hold no manager (and no lock)
    state.checkpoints = CheckpointManager(run.checkpoints, keep_last=1, keep_best=1, metric=state.opt.monitor,
                                          mode=state.opt.mode) if main else None
    state.logger = RunLogger(run, wandb_mode=cfg.output.wandb, project=cfg.output.wandb_project, name=cfg.tag,
                             config=cfg)
    return state
