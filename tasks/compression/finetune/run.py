"""``compress finetune``: fine-tune a trained compression model (HPCM or a CompressAI zoo model).

One run (:func:`finetune`) composes the pieces, each living in its own module:

- weights from ``--checkpoint`` (:func:`finetune_kit.tasks.compression.checkpoints.load_weights`: whole
  checkpoints, ``module.`` prefixes and post-``update()`` state dicts are accepted). Without a
  checkpoint the run warns that it trains *from scratch*. A fine-tune is a new run: the
  optimizer, the LR schedule and the epoch counter always start fresh, also (and especially) when
  the checkpoint was trained at another lambda (the new lambda is announced); ``--resume``
  continues a fine-tune run itself, with every state restored;
- layer groups (:func:`finetune_kit.layer_groups.resolve_layer_groups`, ``hpcm`` preset, which
  also groups the CompressAI zoo models: their context modules form ``context``) and a
  strategy from the registry: ``progressive`` with ``--progressive_unfreeze``, else ``full`` with
  no layer-wise decay; LR multipliers / freezing / weight decay from
  :mod:`finetune_kit.tasks.compression.finetune.lr_manager` (table printed and written to ``lr_table.json``);
- the loss (:mod:`finetune_kit.tasks.compression.finetune.objective`): ``lambda * 255^2 * MSE + bpp``, split
  into per-scale tasks with ``--use_hierarchical``, weighted by the balanced optimizer with
  ``--use_balanced`` whose gamma follows :mod:`finetune_kit.tasks.compression.finetune.gamma_schedules`;
- per-scale early stopping (:mod:`finetune_kit.scale_early_stopping`) on the validation R-D cost
  of each scale, or plain early stopping on the total with ``--early_stopping_patience`` alone;
- :class:`finetune_kit.runs.checkpoint.CheckpointManager` (last N + best M by validation R-D cost),
  :class:`finetune_kit.runs.run_dir.RunDir` and :class:`finetune_kit.runs.logger.RunLogger`.

Balanced steps re-evaluate the same batch after the model step with the same random
quantization noise (the RNG state of the model's device is replayed), so ``delta`` measures the
parameter change only. ``--device`` (``cpu`` default, ``cuda``, ``cuda:N``) holds the model and the
batches; checkpoints are written with CPU tensors and load on any device. They keep the
``compress train`` layout (``state_dict``, ``model``, ``config`` with ``lmbda`` ...) so
``compress eval`` reads them, plus a ``finetune`` entry with every extra state.

Resuming (``--resume``) continues from the chosen checkpoint: ``metrics.jsonl`` and
``steps.jsonl`` are cut back to that epoch, and tracked checkpoints of later epochs (an abandoned
trajectory, when resuming from an earlier checkpoint than the latest) are deleted.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from finetune_kit.tasks.compression.finetune.config import FinetuneConfig
from finetune_kit.tasks.compression.finetune.objective import FinetuneObjective, replay_rng, rng_snapshot, validate

__all__ = ["finetune", "FromScratchWarning", "DEFAULT_LAMBDA"]

DEFAULT_LAMBDA = 0.0067


class FromScratchWarning(UserWarning):
    """``compress finetune`` started without a checkpoint: the model trains from random weights."""


def _source(cfg: FinetuneConfig) -> tuple[str, dict | None, float | None]:
    """``(model name, source checkpoint or None, its lambda or None)``; warns when there is none."""
    from finetune_kit.runs.checkpoint import load_checkpoint
    from finetune_kit.tasks.compression.checkpoints import checkpoint_model_name, default_checkpoint

    if cfg.checkpoint is None:
        warnings.warn("no --checkpoint given: training starts FROM SCRATCH (random weights), which is not a "
                      "fine-tune; pass --checkpoint RUN/checkpoints/best.pt", FromScratchWarning, stacklevel=3)
        return cfg.model or "hpcm-tiny", None, None
    ckpt = load_checkpoint(default_checkpoint(cfg.checkpoint))
    name = cfg.model or checkpoint_model_name(ckpt)
    if name is None:
        raise ValueError(f"{cfg.checkpoint} records no model name (a bare state dict?): pass --model, e.g. hpcm-tiny")
    src_cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    return name, ckpt, src_cfg.get("lmbda")


def _loaders(cfg: FinetuneConfig):
    from torch.utils.data import DataLoader, RandomSampler

    from finetune_kit.tasks.compression.data import RandomCropDataset, list_images, split_train_val

    paths = list_images(cfg.data)
    train_p, val_p = (paths, list_images(cfg.val_data)) if cfg.val_data else split_train_val(paths, cfg.val_fraction, cfg.seed)
    train_ds = RandomCropDataset(train_p, cfg.patch_size, train=True, cache=cfg.cache_images)
    val_ds = RandomCropDataset(val_p, cfg.val_patch_size, train=False, cache=cfg.cache_images)
    sampler = (RandomSampler(train_ds, replacement=True, num_samples=cfg.steps_per_epoch * cfg.batch_size)
               if cfg.steps_per_epoch else None)
    train = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                       num_workers=cfg.num_workers, drop_last=len(train_ds) >= cfg.batch_size)
    val = DataLoader(val_ds, batch_size=min(cfg.batch_size, len(val_ds)), num_workers=cfg.num_workers)
    return train, val


def _scheduler(cfg: FinetuneConfig, optimizer, steps_per_epoch: int):
    if cfg.lr_schedule == "discriminative":
        from finetune_kit.tasks.compression.finetune.discriminative_lr import DiscriminativeLR

        return DiscriminativeLR(optimizer, base_lr=cfg.learning_rate, steps_per_epoch=steps_per_epoch,
                                warmups=cfg.discriminative_warmups, decay_rate=cfg.decay_rate,
                                decay_every=cfg.decay_every, warmup_start=cfg.warmup_start)
    from finetune_kit.schedulers import build_lr_scheduler

    return build_lr_scheduler(optimizer, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                              warmup_epochs=cfg.warmup_epochs, min_lr=cfg.min_lr, kind=cfg.lr_schedule,
                              warmup_lr_init=cfg.learning_rate * cfg.warmup_start)


def _truncate_steps(path: Path, before_epoch: int) -> None:
    """Keep only the ``steps.jsonl`` records of epochs before ``before_epoch`` (resume), atomically."""
    from finetune_kit.runs.checkpoint import atomic_write_text

    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("epoch", -1) < before_epoch]
    atomic_write_text("".join(line + "\n" for line in kept), path)


def _layer_groups(model, model_name: str):
    """The ``hpcm`` preset's groups of ``model``; a model it cannot group fails in one line."""
    from finetune_kit.layer_groups import resolve_layer_groups
    from finetune_kit.tasks.compression.models.zoo import MODEL_NAMES

    try:
        return resolve_layer_groups(model, preset="hpcm")
    except ValueError as exc:
        raise ValueError(f"cannot split {model_name} into layer groups ({str(exc).split(':')[0]}): compress finetune "
                         f"supports {', '.join(MODEL_NAMES)}") from None


def _stages(groups, progressive: bool) -> list[list[str]] | None:
    """Progressive stages of the preset limited to the groups the model has (bmshj2018 has no
    ``context``); None (the preset's default, with its trailing groups) when all exist."""
    stages = groups.preset.stages if groups.preset is not None else None
    if not progressive or not stages or all(k in groups.names for st in stages for k in st):
        return None
    return [[k for k in st if k in groups.names] for st in stages if any(k in groups.names for k in st)]


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run a fine-tune (see the module docstring). Returns the final metrics (with ``run_dir``, ``checkpoint``).

    Raises:
        ValueError: unreadable/mismatching checkpoint (names the keys), ``--scale_early_stopping`` or a
            measured decomposition on a model without per-scale rates, resuming a run of another model.
        FloatingPointError: the loss became NaN/inf (names the step).
    """
    from finetune_kit.runs.checkpoint import CheckpointManager, load_checkpoint
    from finetune_kit.early_stopping import EarlyStopping
    from finetune_kit.runs.run_dir import RunDir, new_run_dir
    from finetune_kit.runs.logger import RunLogger
    from finetune_kit.scale_early_stopping import ScaleEarlyStopping
    from finetune_kit.seeding import rng_state, seed_everything, set_rng_state
    from finetune_kit.strategy import get_strategy
    from finetune_kit.tasks.compression.checkpoints import default_checkpoint, load_weights, to_cpu_state
    from finetune_kit.tasks.compression.finetune.lr_manager import LayerLRConfig, clip_grad_norms, lr_table, print_lr_table, split_aux_groups
    from finetune_kit.tasks.compression.models.zoo import build_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    seed_everything(cfg.seed)
    resume = load_checkpoint(default_checkpoint(cfg.resume)) if cfg.resume else None
    model_name, source, src_lmbda = _source(cfg) if resume is None else (resume["model"], None, None)
    lmbda = cfg.lmbda or (resume["config"]["lmbda"] if resume else None) or src_lmbda or DEFAULT_LAMBDA
    notes = []
    if source is not None and src_lmbda is not None and not math.isclose(src_lmbda, lmbda):
        notes.append(f"checkpoint trained at lambda={src_lmbda:g}; fine-tuning to lambda={lmbda:g}: optimizer, LR "
                     "schedule and epoch counter start fresh")
    if resume is not None:
        run_path = Path(cfg.resume) if Path(cfg.resume).is_dir() else default_checkpoint(cfg.resume).resolve().parent.parent
    else:
        run_path = new_run_dir(cfg.output_dir, cfg.name or f"{model_name}-finetune-lambda{lmbda:g}")
    rd = RunDir(run_path)
    resolved = {**cfg.model_dump(mode="json"), "model": model_name, "lmbda": lmbda,
                "gamma_strategy": cfg.resolved_gamma_strategy, "source_lmbda": src_lmbda}
    rd.start(resolved)
    logger = RunLogger(rd, wandb_mode=cfg.wandb, project="finetune-kit-compression", name=run_path.name, config=resolved)
    steps_log = None
    try:
        for note in notes:
            print(f"note: {note}")
        train_loader, val_loader = _loaders(cfg)
        model = build_model(model_name)
        if source is not None:
            load_weights(model, source, model_name=model_name)
        model.to(device).eval()
        with torch.no_grad():  # probe: does forward() report per-scale rates (HPCM's y_scale_masks)?
            has_scales = bool(model(torch.rand(1, 3, 64, 64, device=device)).get("y_scale_masks"))
        if (cfg.scale_early_stopping or (cfg.use_hierarchical and cfg.decomposition != "fixed")) and not has_scales:
            raise ValueError(f"{model_name} reports no per-scale rates: --scale_early_stopping and measured/adaptive "
                             "decompositions need an HPCM model (or use --decomposition fixed without scale early stopping)")
        lrcfg = LayerLRConfig(lr_mults=cfg.lr_mults, context_lr_ratio=cfg.context_lr_ratio,
                              freeze_entropy=cfg.freeze_entropy, freeze_patterns=cfg.freeze_patterns,
                              weight_decay=cfg.weight_decay, weight_decay_map=cfg.weight_decay_map,
                              clip_map=cfg.clip_map, clip_max_norm=cfg.clip_max_norm)
        groups = _layer_groups(model, model_name)
        strategy = get_strategy("progressive" if cfg.progressive_unfreeze else "full", llrd_decay=1.0,
                                unfreeze_schedule=cfg.unfreeze_schedule, unfreeze_warmup_epochs=cfg.unfreeze_warmup_epochs,
                                warmup_start=cfg.warmup_start, layer_stages=_stages(groups, cfg.progressive_unfreeze),
                                **lrcfg.strategy_options(groups))
        main, aux = split_aux_groups(strategy.build_param_groups(groups, weight_decay=cfg.weight_decay))
        optimizer = torch.optim.AdamW(main, lr=cfg.learning_rate)
        for p in aux:  # quantiles follow --freeze_entropy only (the aux loss keeps them fitted otherwise)
            p.requires_grad_(not cfg.freeze_entropy)
        aux_opt = torch.optim.Adam(aux, lr=cfg.aux_lr) if aux and not cfg.freeze_entropy else None
        steps_per_epoch = len(train_loader)
        sched = _scheduler(cfg, optimizer, steps_per_epoch)
        tasks = FinetuneObjective(cfg, lmbda, has_scales)
        patience = cfg.early_stopping_patience or 50
        ses = (ScaleEarlyStopping(["s1", "s2", "s3"], patience=patience, min_delta=cfg.early_stopping_min_delta,
                                  adaptive=cfg.adaptive_patience, max_patience=cfg.max_patience,
                                  directory=run_path / "scale_best") if cfg.scale_early_stopping else None)
        es = (EarlyStopping(patience=cfg.early_stopping_patience, min_delta=cfg.early_stopping_min_delta, mode="min")
              if cfg.early_stopping_patience and ses is None else None)
        manager = CheckpointManager(rd.checkpoints, keep_last=cfg.keep_last, keep_best=cfg.keep_best,
                                    metric="val_rd", mode="min")
        start_epoch, history, scale_hist = 0, [], {"s1": [], "s2": [], "s3": []}
        if resume is not None:
            ft = resume["finetune"]
            load_weights(model, resume, model_name=model_name)
            optimizer.load_state_dict(resume["optimizer"])
            if aux_opt is not None and resume.get("aux_optimizer"):
                aux_opt.load_state_dict(resume["aux_optimizer"])
            strategy.load_state_dict(ft["strategy"])
            if tasks.balanced is not None:
                tasks.balanced.load_state_dict(ft["balanced"])
            if tasks.hier is not None:
                tasks.hier.load_state_dict(ft["hierarchical"])
            if ses is not None:
                ses.load_state_dict(ft["scale_early_stopping"])
            if es is not None:
                es.load_state_dict(ft["early_stopping"])
            history, scale_hist = ft["history"], ft["scale_history"]
            set_rng_state(resume["rng_state"])
            start_epoch = int(resume["epoch"]) + 1
            rd.truncate_history(start_epoch)
            _truncate_steps(run_path / "steps.jsonl", start_epoch)
            dropped = manager.truncate(start_epoch - 1)
            if dropped:
                print(f"note: resuming after epoch {start_epoch - 1}: deleted {len(dropped)} checkpoint(s) of later "
                      f"epochs ({', '.join(p.name for p in dropped)}) from the abandoned run")
        steps_log = open(run_path / "steps.jsonl", "a", encoding="utf-8")
        strategy.apply(optimizer, start_epoch)
        table = lr_table(optimizer, base_lr=cfg.learning_rate, clip_map=cfg.clip_map, aux_params=aux, aux_lr=cfg.aux_lr)
        rd.write_json("lr_table.json", {"base_lr": cfg.learning_rate, "global_clip": cfg.clip_max_norm, "groups": table})
        if cfg.progress:
            print_lr_table(table, title=f"{model_name}: layer-wise LRs at epoch {start_epoch} (base {cfg.learning_rate:g})",
                           caption=f"global gradient-norm clip {cfg.clip_max_norm:g}; LR 0 = frozen at this epoch")
        final: dict[str, Any] = {}
        t_run = time.perf_counter()
        for epoch in range(start_epoch, cfg.epochs):
            events = strategy.on_epoch_start(epoch, optimizer)
            for ev in events:  # pinned groups (--freeze_entropy, --freeze_pattern) are not in ev.groups
                print(f"epoch {epoch}: unfroze {', '.join(ev.groups)} ({ev.trainable_params:,} trainable parameters)")
            gamma_log = tasks.set_epoch_gamma(epoch, history, scale_hist)
            strategy.train_mode(model)
            t0, sums, n = time.perf_counter(), {}, 0
            for i, x in enumerate(train_loader):
                x = x.to(device, non_blocking=True)
                step = epoch * steps_per_epoch + i
                sched.apply(step)
                optimizer.zero_grad(set_to_none=True)
                rng = rng_snapshot(device)
                t, tk = tasks.terms(model(x), x)
                loss = tasks.loss(t, tk)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {float(loss.detach())} at epoch {epoch} step {i}: lower --learning-rate")
                loss.backward()
                norms = clip_grad_norms(optimizer.param_groups, clip_map=cfg.clip_map, clip_max_norm=cfg.clip_max_norm)
                optimizer.step()
                rec = {"epoch": epoch, "step": step, "loss": float(loss.detach()), "rd": float(t.rd.detach()),
                       "grad_norm": norms["total"]}
                if tasks.balanced is not None:
                    with torch.no_grad(), replay_rng(device, rng), tasks.frozen_split():  # same noise
                        _, tk2 = tasks.terms(model(x), x)
                    tasks.balanced.update(tk2)
                    rec.update(tasks.balanced.last_record)
                if aux_opt is not None:
                    aux_opt.zero_grad(set_to_none=True)
                    aux_loss = model.aux_loss()
                    aux_loss.backward()
                    aux_opt.step()
                    rec["aux_loss"] = float(aux_loss.detach())
                steps_log.write(json.dumps(rec) + "\n")
                logger.log(rec, to_file=False)
                for k in ("loss", "rd"):
                    sums[k] = sums.get(k, 0.0) + rec[k] * x.shape[0]
                sums["bpp"] = sums.get("bpp", 0.0) + float(t.bpp.detach()) * x.shape[0]
                sums["mse"] = sums.get("mse", 0.0) + float(t.mse.detach()) * x.shape[0]
                n += x.shape[0]
            steps_log.flush()
            train = {f"train_{k}": v / max(n, 1) for k, v in sums.items()}
            va = validate(model, val_loader, tasks, cfg.val_max_batches, device)
            history.append(va["rd"])
            for s in scale_hist:
                if f"rd_{s}" in va:
                    scale_hist[s].append(va[f"rd_{s}"])
            record = {"epoch": epoch, "lr": max(g["lr"] for g in optimizer.param_groups), **train,
                      **{f"val_{k}": v for k, v in va.items()}, **gamma_log, "seconds": time.perf_counter() - t0,
                      "trainable_params": strategy.trainable_params()}
            if tasks.balanced is not None:
                record.update({f"task_{k}": v for k, v in tasks.balanced.last_record.items() if k.startswith("weight/")})
            stop = False
            if ses is not None:
                signals = ses.step({s: va[f"rd_{s}"] for s in ("s1", "s2", "s3")}, epoch,
                                   state_fn=lambda: {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
                record.update({f"es_{s}": sig for s, sig in signals.items()})
                stop = ses.should_stop
            elif es is not None:
                es.step(va["rd"], epoch)
                stop = es.should_stop
            logger.log(record)
            state = {"state_dict": to_cpu_state(model.state_dict()), "optimizer": to_cpu_state(optimizer.state_dict()),
                     "aux_optimizer": to_cpu_state(aux_opt.state_dict()) if aux_opt else None,
                     "lr_scheduler": sched.state_dict(), "epoch": epoch, "model": model_name,
                     "config": resolved, "metrics": record, "rng_state": rng_state(),
                     "finetune": {"strategy": strategy.state_dict(),
                                  "balanced": tasks.balanced.state_dict() if tasks.balanced else None,
                                  "hierarchical": tasks.hier.state_dict() if tasks.hier else None,
                                  "scale_early_stopping": ses.state_dict() if ses else None,
                                  "early_stopping": es.state_dict() if es else None,
                                  "history": history, "scale_history": scale_hist}}
            path = manager.save(state, epoch, {"val_rd": va["rd"], "val_bpp": va["bpp"], "val_psnr": va["psnr"]})
            final = {**record, "checkpoint": str(path)}
            if cfg.progress:
                print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {train['train_loss']:.4f} | val R-D {va['rd']:.4f} "
                      f"bpp {va['bpp']:.4f} PSNR {va['psnr']:.2f} dB ({record['seconds']:.1f} s)")
            if stop:
                print(f"early stopping after epoch {epoch}: " + ("every scale stopped" if ses else "no improvement"))
                break
        if ses is not None:
            ses.save_history(run_path / "scale_early_stopping.json")
            ses.plot(run_path / "scale_convergence.png")
        final.update(run_dir=str(run_path), best_checkpoint=str(manager.best() or manager.last()),
                     wall_seconds=time.perf_counter() - t_run, lmbda=lmbda, notes=notes)
        rd.write_json("metrics.json", final)
        logger.summary(final)
        rd.set_status("completed")
        return final
    except BaseException as exc:
        rd.set_status("failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if steps_log is not None:
            steps_log.close()
        logger.finish()
