"""The classification run: data -> model -> strategy hooks -> epochs -> calibrated test report.

:func:`run_training` is what ``finetune-kit classify`` and ``train_classification.py`` call.
Per epoch: reseed every RNG from ``(seed, epoch)`` (sampler order, augmentation, mixup,
dropout), ``strategy.on_epoch_start``, ``strategy.train_mode`` (frozen BatchNorm stays in
eval), one epoch of AdamW steps under the warm-up + cosine schedule, validation, then
``strategy.on_validation_end`` (plateau unfreezing). Every epoch writes ``last`` and, when
the monitored validation metric improves, ``best`` checkpoints atomically; a run resumed
from ``last.pt`` therefore repeats exactly what an uninterrupted run would have done.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from finetune_kit.tasks.classification.config import ClassificationConfig, resolved_bn_stats

__all__ = ["run_training", "resume_config"]


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + 7919 * (epoch + 1)) % (2**31 - 1)


def _seed_worker(worker_id: int) -> None:
    """DataLoader worker start: seed its copy of the augmentation from the worker's torch seed
    (drawn from the epoch's generator), so runs with the same ``num_workers`` repeat exactly."""
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(info.seed % 2**32)


def resume_config(run_path: str | Path) -> ClassificationConfig:
    """The saved config of an interrupted run, pointing at that run folder.

    Raises:
        FileNotFoundError: not a run folder or no ``last.pt`` yet (names the path).
    """
    from finetune_kit.runs.run_dir import RunDir

    run = RunDir(run_path)
    if not (run.checkpoints / "last.pt").exists():
        raise FileNotFoundError(f"--resume {run.path}: no checkpoints/last.pt there; pass the folder of a run that "
                                "finished at least one epoch")
    cfg = ClassificationConfig.model_validate(run.read_json("config.json"))
    return cfg.model_copy(update={"run_dir": str(run.path), "stop_after_epoch": None})


def _set_bn_eval(model: torch.nn.Module) -> None:
    from torch.nn.modules.batchnorm import _BatchNorm

    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.eval()


def run_training(cfg: ClassificationConfig, *, resume: bool = False, image_cache=None, console=None) -> dict:
    """Train, select the best epoch, calibrate, evaluate; returns the final metrics dict.

    Args:
        cfg: the validated config (``cfg.run_dir`` set when resuming, see :func:`resume_config`).
        resume: continue from ``RUN/checkpoints/last.pt``.
        image_cache: an :class:`~finetune_kit.tasks.classification.transforms.ImageCache` to share decoded
            images between runs (``compare``); made here when None or of another size.
        console: a rich Console for messages (default: stderr).

    Returns:
        The content of ``RUN/metrics.json`` (``{"status": "interrupted", ...}`` when stopped
        by ``stop_after_epoch``).

    Raises:
        ConfigError, DataError, CorruptImageError, ModelError, UnknownStrategyError: bad input,
        with one-line messages; the run folder's status says ``failed`` with the message.
    """
    from rich.console import Console

    from finetune_kit.amp import resolve_amp
    from finetune_kit.runs.run_dir import RunDir, new_run_dir
    from finetune_kit.runs.logger import RunLogger
    from finetune_kit.seeding import seed_everything
    from finetune_kit.strategy import get_strategy
    from finetune_kit.tasks.classification.data import LabelledImages, discover, read_split, stratified_split, write_split
    from finetune_kit.tasks.classification.model import build_model
    from finetune_kit.tasks.classification.transforms import ImageCache, build_transforms

    console = console or Console(stderr=True)
    t_start = time.perf_counter()
    cfg.check_paths()
    device = torch.device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    amp = resolve_amp(cfg.amp, device, cfg.amp_dtype)
    if amp.notice:
        console.print(f"[yellow]{amp.notice}[/]")

    # -- data and model ---------------------------------------------------------------
    if resume:
        run = RunDir(cfg.run_dir)
        samples, class_names = read_split(run.path / "split.csv")
        images = LabelledImages(samples, class_names, "split.csv")
    else:
        images = discover(cfg.data)
    seed_everything(cfg.seed)
    model, weights_report = build_model(cfg.model_name, len(images.class_names), pretrained=cfg.pretrained,
                                        custom_weights_path=cfg.custom_weights_path,
                                        allow_partial_weights=cfg.allow_partial_weights, drop_rate=cfg.drop_rate,
                                        img_size=cfg.img_size)
    if weights_report is not None:
        console.print(weights_report.summary())
    strategy = get_strategy(cfg.ft_strategy, **cfg.strategy_options())
    if cfg.head_lr_mult != 1.0 and not strategy.head_only:  # new head learns faster than the pretrained body
        from finetune_kit.tasks.classification.model import head_param_names

        strategy = get_strategy(cfg.ft_strategy, **cfg.strategy_options(),
                                lr_mults={n: cfg.head_lr_mult for n in head_param_names(model)})
    model.to(device)
    tf = build_transforms(model, cfg.img_size, augment=cfg.resolved_augment(strategy.head_only), clahe=cfg.clahe,
                          seed=cfg.seed)
    cache = image_cache if image_cache is not None and image_cache.size == tf.cache_size else ImageCache(tf.cache_size)
    skipped = cache.load([s.path for s in images.samples], skip_corrupt=cfg.data.skip_corrupt)
    if skipped:
        console.print(f"[yellow]skipped {len(skipped)} corrupt image(s), e.g. {skipped[0]}[/]")
        images.samples = [s for s in images.samples if s.path not in set(skipped)]
    if not resume:
        stratified_split(images, val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction,
                         seed=cfg.data.split_seed)
        run = RunDir(cfg.run_dir) if cfg.run_dir else RunDir(new_run_dir(cfg.output_dir, cfg.tag))
        cfg = cfg.model_copy(update={"run_dir": str(run.path)})
        write_split(images, run.path / "split.csv")
        run.start(cfg)
    else:
        run.set_status("running")
    train_s, val_s, test_s = images.subset("train"), images.subset("val"), images.subset("test")
    if not train_s or not val_s:
        raise ValueError(f"{cfg.data.data}: the split has {len(train_s)} training and {len(val_s)} validation images; "
                         "both must be non-empty (add images or change --val_fraction)")
    logger = RunLogger(run, wandb_mode=cfg.wandb, project=cfg.wandb_project, name=cfg.tag, config=cfg)
    try:
        result = _train(cfg=cfg, resume=resume, console=console, device=device, amp=amp, strategy=strategy,
                        images=images, model=model, weights_report=weights_report, tf=tf, cache=cache, skipped=skipped,
                        run=run, train_s=train_s, val_s=val_s, test_s=test_s, logger=logger, t_start=t_start)
        status = "interrupted" if result.get("status") == "interrupted" else "completed"
        run.set_status(status, None if status == "completed" else f"stopped after epoch {cfg.stop_after_epoch}; "
                       f"continue with --resume {run.path}")
        return result
    except KeyboardInterrupt:
        run.set_status("interrupted", f"interrupted by the user; continue with --resume {run.path}")
        raise
    except Exception as exc:
        run.set_status("failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        logger.finish()


def _train(*, cfg, resume, console, device, amp, strategy, images, model, weights_report, tf, cache, skipped, run,
           train_s, val_s, test_s, logger, t_start) -> dict:
    """The epochs and the final calibrated report of :func:`run_training` (same returns/raises)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy
    from timm.utils import ModelEmaV3

    from finetune_kit.runs.checkpoint import CheckpointManager, load_checkpoint
    from finetune_kit.early_stopping import EarlyStopping
    from finetune_kit.layer_groups import parameter_count, resolve_layer_groups
    from finetune_kit.schedulers import build_lr_scheduler
    from finetune_kit.seeding import rng_state, seed_everything, set_rng_state
    from finetune_kit.tasks.classification.engine import predict_logits, softmax, train_one_epoch, val_loss
    from finetune_kit.tasks.classification.evaluate import calibrated_report
    from finetune_kit.tasks.classification.feature_cache import can_use_feature_cache, extract_features, head_forward
    from finetune_kit.tasks.classification.memory import PeakMemory
    from finetune_kit.tasks.classification.metrics import classification_metrics
    from finetune_kit.tasks.classification.transforms import CachedImageDataset, normalize_batch

    K = len(images.class_names)
    bn_frozen = resolved_bn_stats(cfg) == "frozen"
    groups = resolve_layer_groups(model, **cfg.layer_group_options())
    optimizer = torch.optim.AdamW(strategy.build_param_groups(groups, weight_decay=cfg.weight_decay), lr=cfg.learning_rate)
    use_mix = cfg.mixup > 0 or cfg.cutmix > 0
    if use_mix and cfg.batch_size % 2:
        raise ValueError(f"--batch_size {cfg.batch_size}: mixup/cutmix needs an even batch size")
    mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing, num_classes=K) if use_mix else None
    criterion = SoftTargetCrossEntropy() if use_mix else torch.nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)
    # Feature cache: any epoch in which only the head trains runs on cached backbone features, when
    # the images are not randomly augmented -- or when augmentation is "auto", which then means
    # "augment once backbone layers train" (a linear probe first, then fine-tuning: LP-FT).
    cache_ok = can_use_feature_cache(model, head_only=True, random_train=tf.random_train and cfg.augment != "auto",
                                     mixup=use_mix, enabled=cfg.feature_cache)
    head_names = {g.name for g in groups.head}
    prepare = lambda x: normalize_batch(x, tf.mean, tf.std)  # noqa: E731
    identity = lambda x: x  # noqa: E731
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
    eval_module = lambda: ema.module if ema is not None else model  # noqa: E731

    def image_loader(samples, transform, epoch=None, drop_last=False):
        ds = CachedImageDataset(cache, [s.path for s in samples], [s.label for s in samples], transform)
        g = torch.Generator().manual_seed(_epoch_seed(cfg.seed, -1 if epoch is None else epoch))
        return torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=epoch is not None, generator=g,
                                           drop_last=drop_last and len(samples) >= cfg.batch_size,
                                           num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                                           worker_init_fn=_seed_worker if cfg.num_workers else None)

    feats, feature_s = {}, 0.0

    def cached_epoch() -> bool:
        """Whether this epoch trains only the head on cached features (extracted on first use)."""
        nonlocal feature_s
        if not (cache_ok and head_names and set(strategy.trainable) <= head_names):
            return False
        if not feats:
            t0 = time.perf_counter()
            for name, part in (("train", train_s), ("val", val_s)):
                feats[name] = extract_features(model, image_loader(part, tf.eval), prepare, device, amp.autocast)
            feature_s += time.perf_counter() - t0
            console.print(f"feature cache: {len(train_s) + len(val_s)} images through the frozen backbone once "
                          f"({feature_s:.1f} s); the head trains on cached features while only it trains")
        return True

    def train_batches(epoch, use_cache):
        if use_cache:
            g = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
            ds = torch.utils.data.TensorDataset(*feats["train"])
            return torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, generator=g)
        return image_loader(train_s, tf.train, epoch=epoch, drop_last=use_mix)

    def validate(use_cache):
        mod = eval_module()
        mod.eval()
        if use_cache:
            vb = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*feats["val"]), batch_size=256)
            return predict_logits(lambda f: head_forward(mod, f), vb, identity, amp, device)
        return predict_logits(mod, image_loader(val_s, tf.eval), prepare, amp, device)

    epochs = cfg.epochs
    steps = len(image_loader(train_s, tf.train, epoch=0, drop_last=use_mix))
    schedule = build_lr_scheduler(optimizer, epochs=epochs, steps_per_epoch=steps, warmup_epochs=cfg.warmup_epochs,
                                  min_lr=cfg.min_lr)
    scaler = amp.grad_scaler()
    monitor, mode = f"val_{cfg.monitor}", ("min" if cfg.monitor == "loss" else "max")
    manager = CheckpointManager(run.checkpoints, keep_last=1, keep_best=1, metric=monitor, mode=mode)
    early = EarlyStopping(patience=cfg.early_stopping_patience, mode=mode) if cfg.early_stopping_patience else None
    total_params = parameter_count(model)
    start_epoch, global_step = 0, 0
    if resume:
        ck = load_checkpoint(run.checkpoints / "last.pt")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        strategy.load_state_dict(ck["strategy"])
        scaler.load_state_dict(ck["scaler"])
        if ema is not None and ck.get("ema") is not None:
            ema.module.load_state_dict(ck["ema"])
        if early is not None and ck.get("early"):
            early.load_state_dict(ck["early"])
        set_rng_state(ck["rng"])
        skipped, feature_s = list(ck.get("skipped", skipped)), float(ck.get("feature_s", 0.0))
        start_epoch, global_step = int(ck["epoch"]) + 1, int(ck["global_step"])
        run.truncate_history(start_epoch)
        console.print(f"resuming {run.path} at epoch {start_epoch}")

    show = cfg.progress
    with PeakMemory(device) as mem, Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                             TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                                             disable=not show, transient=True) as bar:
        ep_task = bar.add_task(f"{cfg.ft_strategy} epochs", total=epochs, completed=start_epoch)
        b_task = bar.add_task("batches", total=steps)
        for epoch in range(start_epoch, epochs):
            seed_everything(_epoch_seed(cfg.seed, epoch))
            if tf.random_train:
                tf.train.set_random_seed(_epoch_seed(cfg.seed, epoch))
            events = list(strategy.on_epoch_start(epoch, optimizer))
            strategy.train_mode(model)
            if bn_frozen:
                _set_bn_eval(model)
            trainable = strategy.trainable_params()
            use_cache = cached_epoch()
            bar.reset(b_task, total=steps)
            stats, global_step = train_one_epoch(
                forward=(lambda f: head_forward(model, f)) if use_cache else model, batches=train_batches(epoch, use_cache),
                prepare=identity if use_cache else prepare, criterion=criterion, optimizer=optimizer,
                schedule=schedule, global_step=global_step, amp=amp, scaler=scaler, grad_clip=cfg.grad_clip,
                mixup=mixup, ema=ema, ema_model=model, device=device, on_batch=lambda: bar.advance(b_task))
            vl, vy = validate(use_cache)
            vm = classification_metrics(vy, softmax(vl), vl)
            record = {"epoch": epoch, "train_loss": stats.loss, "val_loss": val_loss(vl, vy), "val_auroc": vm["auroc"],
                      "val_accuracy": vm["accuracy"], "val_balanced_accuracy": vm["balanced_accuracy"],
                      "val_ece": vm["ece"], "lr": max(g["lr"] for g in optimizer.param_groups),
                      "trainable_params": trainable, "trainable_fraction": trainable / total_params,
                      "epoch_time_s": stats.seconds, "train_images_per_s": stats.images_per_s,
                      "global_step": global_step, "feature_cache": use_cache}
            metric = record[monitor]
            events += strategy.on_validation_end(epoch, metric, optimizer)
            record["unfrozen"] = [dataclasses.asdict(e) for e in events]
            logger.log(record, step=epoch)
            if early is not None:  # before the checkpoint, so a resumed run has this epoch's patience count
                early.step(metric, epoch)
            state = {"epoch": epoch, "global_step": global_step, "model": model.state_dict(),
                     "ema": ema.module.state_dict() if ema is not None else None,
                     "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                     "scheduler": schedule.state_dict(), "strategy": strategy.state_dict(),
                     "early": early.state_dict() if early is not None else None, "rng": rng_state(),
                     "skipped": skipped, "feature_s": feature_s,
                     "class_names": images.class_names, "config": cfg.model_dump()}
            worst = -math.inf if mode == "max" else math.inf  # a NaN epoch is never the best one
            manager.save(state, epoch, metrics={monitor: metric if metric == metric else worst})
            bar.advance(ep_task)
            ev = "; ".join(f"unfroze {', '.join(e['groups'])}" for e in record["unfrozen"])
            console.print(f"epoch {epoch + 1}/{epochs} loss {stats.loss:.4f} val_loss {record['val_loss']:.4f} "
                          f"val_auroc {vm['auroc']:.4f} val_acc {vm['accuracy']:.3f} {stats.images_per_s:.1f} img/s"
                          + (f" | {ev}" if ev else ""))
            if cfg.stop_after_epoch is not None and epoch >= cfg.stop_after_epoch and epoch + 1 < epochs:
                return {"status": "interrupted", "run_dir": str(run.path), "epoch": epoch}
            if early is not None and early.should_stop:
                console.print(f"early stopping: {monitor} did not improve for {early.patience} epochs")
                break
        peak, peak_increase = mem.read(), mem.increase_mb

    # -- best epoch: calibrate on validation, report on test ---------------------------
    best_path = manager.best() or manager.last()
    ck = load_checkpoint(best_path)
    eval_model = eval_module()
    eval_model.load_state_dict(ck["ema"] if ema is not None else ck["model"])
    eval_model.eval()
    vl, vy = predict_logits(eval_model, image_loader(val_s, tf.eval), prepare, amp, device)
    tl, ty = predict_logits(eval_model, image_loader(test_s, tf.eval), prepare, amp, device)
    np.savez(run.path / "logits.npz", val_logits=vl, val_labels=vy, test_logits=tl, test_labels=ty)
    history = run.history()
    report = calibrated_report(run.path, val_logits=vl, val_labels=vy, test_logits=tl, test_labels=ty, history=history)
    result = {
        "status": "completed", "run_dir": str(run.path), "model_name": cfg.model_name, "ft_strategy": cfg.ft_strategy,
        "class_names": images.class_names, "best_epoch": int(ck["epoch"]), "epochs_run": len(history),
        "temperature": report["temperature"], "val": report.get("val", {}), "test": report["test"],
        "n_images": {"train": len(train_s), "val": len(val_s), "test": len(test_s)},
        "skipped_corrupt": len(skipped), "skipped_files": skipped,
        "trainable_fraction_final": strategy.trainable_params() / total_params,
        "trainable_fraction_mean": float(np.mean([r["trainable_fraction"] for r in history])) if history else None,
        "total_params": total_params,
        "feature_cache": any(r.get("feature_cache") for r in history),
        "feature_cache_epochs": sum(bool(r.get("feature_cache")) for r in history), "feature_cache_s": feature_s,
        "train_time_s": feature_s + sum(r.get("epoch_time_s", 0.0) for r in history), "bn_stats": resolved_bn_stats(cfg), "amp": {"enabled": amp.enabled, "notice": amp.notice},
        "train_images_per_s_median": float(np.median([r["train_images_per_s"] for r in history])) if history else None,
        "peak_memory_mb": peak, "peak_memory_increase_mb": peak_increase,
        "wall_time_s": time.perf_counter() - t_start,
        "weights": dataclasses.asdict(weights_report) if weights_report else None,
        "unfreeze_events": [dataclasses.asdict(e) for e in strategy.events], "config": cfg.model_dump(),
    }
    if resume:
        result["resumed"] = True
    run.write_json("metrics.json", result)
    logger.summary({f"test_{k}": v for k, v in report["test"].items() if isinstance(v, float)})
    t = report["test"]
    if t:
        console.print(f"[bold]test[/]: AUROC {t['auroc']:.4f}  accuracy {t['accuracy']:.4f}  ECE {t['ece']:.4f} -> "
                      f"{t['ece_calibrated']:.4f} (T={report['temperature']:.3f})  run folder {run.path}")
    return result
