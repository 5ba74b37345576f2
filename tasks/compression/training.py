"""Training compression models: loss, optimizers, one epoch, validation, and the full run.

The recipe follows CompressAI's example trainer and the HPCM paper (Sec. 4.1): Adam (lr 1e-4)
for the network, a separate Adam (lr 1e-3) for the entropy bottleneck's ``quantiles`` driven by
``model.aux_loss()``, gradient-norm clipping (1.0), random crops with flips, and the loss
``lmbda * 255^2 * MSE + bpp`` (or ``lmbda * (1 - MS-SSIM) + bpp``) from
``compressai.losses.RateDistortionLoss``. The building blocks hold no global state so the
fine-tuning command reuses them; they run on the model's device (batches are moved there), and
:func:`train` puts the model on ``cfg.device`` (``cpu`` by default) and writes checkpoints with
CPU tensors, which load on any device.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from finetune_kit.tasks.compression.metrics import bpp_per_scale

__all__ = ["RateDistortion", "build_optimizers", "train_one_epoch", "evaluate", "train"]

LossFn = Callable[[Mapping[str, Any], Tensor], dict]


class RateDistortion(nn.Module):
    """Rate-distortion loss with measured per-scale rates.

    ``loss = lmbda * 255^2 * MSE + bpp`` (``metric="mse"``) or ``lmbda * (1 - MS-SSIM) + bpp``
    (``"ms-ssim"``), computed by ``compressai.losses.RateDistortionLoss``; bpp counts the bits of
    all likelihoods over the original pixels.

    Returns (from ``forward(out, x)``, ``x [B,3,H,W]``) a dict of scalar tensors: ``loss``,
    ``bpp_loss``, ``mse_loss`` (always, for logging), ``ms_ssim_loss`` (MS-SSIM metric only)
    and ``bpp_y``, ``bpp_z``, plus ``bpp_s1``, ``bpp_s2``, ``bpp_s3`` for HPCM (from
    :func:`~finetune_kit.tasks.compression.metrics.bpp_per_scale`).

    Raises:
        ValueError: ``lmbda <= 0`` or unknown metric.
    """

    def __init__(self, lmbda: float, metric: str = "mse") -> None:
        super().__init__()
        if lmbda <= 0:
            raise ValueError(f"lmbda={lmbda}: must be positive (paper: 0.0018 ... 0.0483)")
        if metric not in ("mse", "ms-ssim"):
            raise ValueError(f"metric={metric!r}: use 'mse' or 'ms-ssim'")
        from compressai.losses import RateDistortionLoss

        self.lmbda, self.metric = lmbda, metric
        self.rd = RateDistortionLoss(lmbda=lmbda, metric=metric)

    def forward(self, out: Mapping[str, Any], x: Tensor) -> dict[str, Tensor]:
        res = dict(self.rd(out, x))
        if "mse_loss" not in res:
            res["mse_loss"] = F.mse_loss(out["x_hat"].detach(), x)
        n, _, h, w = x.shape
        for k, v in bpp_per_scale(out, n * h * w).items():
            if k != "total":
                res[f"bpp_{k}"] = v
        return res


def build_optimizers(model: nn.Module, lr: float = 1e-4, aux_lr: float = 1e-3
                     ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for the network and Adam for the entropy bottleneck quantiles (CompressAI convention).

    Parameters whose name ends in ``.quantiles`` go to the aux optimizer (trained only by
    ``model.aux_loss()``); every other parameter with ``requires_grad`` to the main one.

    Raises:
        ValueError: the model has no ``quantiles`` parameter (not a CompressAI model).
    """
    main = [p for n, p in model.named_parameters() if not n.endswith(".quantiles") and p.requires_grad]
    aux = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    if not aux:
        raise ValueError("model has no entropy_bottleneck quantiles: build it with finetune_kit.tasks.compression.models.zoo.build_model")
    return torch.optim.Adam(main, lr=lr), torch.optim.Adam(aux, lr=aux_lr)


class _Averager:
    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.n = 0

    def add(self, values: Mapping[str, Any], weight: int) -> None:
        for k, v in values.items():
            self.sums[k] += float(v) * weight
        self.n += weight

    def result(self) -> dict[str, float]:
        return {k: v / max(self.n, 1) for k, v in self.sums.items()}


def train_one_epoch(model: nn.Module, loader: Iterable[Tensor], optimizer: torch.optim.Optimizer,
                    aux_optimizer: Optional[torch.optim.Optimizer], loss_fn: LossFn, *,
                    clip_max_norm: float = 1.0, max_steps: Optional[int] = None,
                    progress: bool = False, description: str = "train",
                    on_step: Optional[Callable[[int, dict], None]] = None) -> dict[str, float]:
    """One pass over ``loader`` (batches ``[B,3,H,W]`` in [0,1]).

    Each step: ``loss_fn(model(x), x)["loss"].backward()``, clip the gradient norm to
    ``clip_max_norm`` (0 disables), ``optimizer.step()``; then ``model.aux_loss()`` with
    ``aux_optimizer`` (skipped when None, e.g. with frozen quantiles).

    Args:
        max_steps: stop after this many steps (default: the whole loader).
        progress: show a tqdm bar. on_step: called as ``on_step(step, values)`` after each step.

    Returns:
        image-weighted means of every ``loss_fn`` entry and ``aux_loss``, plus ``steps``,
        ``images`` and ``seconds``.

    Raises:
        FloatingPointError: the loss became NaN/inf (names the step; lower the lr).
    """
    from tqdm.auto import tqdm

    model.train()
    avg = _Averager()
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    steps = 0
    total = max_steps if max_steps is not None else (len(loader) if hasattr(loader, "__len__") else None)
    bar = tqdm(loader, total=total, disable=not progress, desc=description, leave=False, dynamic_ncols=True)
    for x in bar:
        if max_steps is not None and steps >= max_steps:
            break
        x = x.to(device)
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        losses = loss_fn(out, x)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss.detach())} at step {steps}: lower --lr or check the data")
        loss.backward()
        if clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
        optimizer.step()
        values = {k: v.detach() for k, v in losses.items()}
        if aux_optimizer is not None:
            aux_optimizer.zero_grad(set_to_none=True)
            aux_loss = model.aux_loss()
            aux_loss.backward()
            aux_optimizer.step()
            values["aux_loss"] = aux_loss.detach()
        avg.add(values, x.shape[0])
        steps += 1
        if progress:
            bar.set_postfix(loss=f"{float(values['loss']):.4f}", bpp=f"{float(values['bpp_loss']):.3f}")
        if on_step is not None:
            on_step(steps, values)
    res = avg.result()
    res.update(steps=steps, images=avg.n, seconds=time.perf_counter() - t0)
    return res


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Tensor], loss_fn: LossFn, *,
             max_batches: Optional[int] = None) -> dict[str, float]:
    """Validation in eval mode (rounded latents, estimated rates) over ``loader``.

    Returns image-weighted means of every ``loss_fn`` entry (``loss``, ``bpp_loss``,
    ``mse_loss``, ``bpp_s1``... for HPCM), ``aux_loss`` and ``psnr`` (dB, from the mean MSE).
    The model's training mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    avg = _Averager()
    try:
        for i, x in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x = x.to(device)
            avg.add(loss_fn(model(x), x), x.shape[0])
        res = avg.result()
        res["aux_loss"] = float(model.aux_loss().detach())
        mse = res.get("mse_loss")
        if mse is not None:
            res["psnr"] = float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)
    finally:
        model.train(was_training)
    return res


def train(cfg: "TrainConfig") -> dict[str, Any]:  # noqa: F821 - imported lazily
    """Run ``compress train``: build data, model and optimizers, train, validate, checkpoint.

    Writes the run folder (``config.json``, ``environment.json``, ``status.json``,
    ``metrics.jsonl``, ``metrics.json``, ``checkpoints/``); ``cfg.resume`` (a run folder or a
    checkpoint) continues from that checkpoint's epoch with optimizer, scheduler and RNG states
    restored (checkpoints of later epochs, an abandoned trajectory, are deleted). The model and
    batches live on ``cfg.device``. Returns the final metrics (with ``run_dir`` and ``checkpoint``).

    Raises:
        ValueError: a resumed checkpoint was trained with another model, lambda or metric.
    """
    from torch.utils.data import DataLoader, RandomSampler

    from finetune_kit.runs.checkpoint import CheckpointManager, load_checkpoint
    from finetune_kit.runs.run_dir import RunDir, new_run_dir
    from finetune_kit.runs.logger import RunLogger
    from finetune_kit.seeding import rng_state, seed_everything, set_rng_state
    from finetune_kit.tasks.compression.checkpoints import default_checkpoint, load_weights, to_cpu_state
    from finetune_kit.tasks.compression.data import RandomCropDataset, list_images, split_train_val
    from finetune_kit.tasks.compression.models.zoo import build_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    resume_ckpt = None
    if cfg.resume is not None:
        ckpt_path = default_checkpoint(cfg.resume)
        resume_ckpt = load_checkpoint(ckpt_path)
        prev = resume_ckpt.get("config", {})
        for key in ("model", "lmbda", "metric"):
            if key in prev and prev[key] != getattr(cfg, key):
                raise ValueError(f"cannot resume {ckpt_path}: it was trained with {key}={prev[key]!r}, not "
                                 f"{getattr(cfg, key)!r}; --resume continues the same run (use 'compress finetune' "
                                 "to start from it with new settings)")
        parent = ckpt_path.resolve().parent
        run_path = parent.parent if parent.name == "checkpoints" else parent
    else:
        run_path = new_run_dir(cfg.output_dir, cfg.name or f"{cfg.model}-{cfg.metric}-lambda{cfg.lmbda:g}")
    rd = RunDir(run_path)
    rd.start(cfg)
    logger = RunLogger(rd, wandb_mode=cfg.wandb, project="finetune-kit-compression",
                       name=run_path.name, config=cfg)
    try:
        paths = list_images(cfg.data)
        if cfg.val_data is not None:
            train_paths, val_paths = paths, list_images(cfg.val_data)
        else:
            train_paths, val_paths = split_train_val(paths, cfg.val_fraction, cfg.seed)
        train_ds = RandomCropDataset(train_paths, cfg.patch_size, train=True, cache=cfg.cache_images)
        val_ds = RandomCropDataset(val_paths, cfg.val_patch_size, train=False, cache=cfg.cache_images)
        sampler = None
        if cfg.steps_per_epoch is not None:
            sampler = RandomSampler(train_ds, replacement=True, num_samples=cfg.steps_per_epoch * cfg.batch_size)
        train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                                  num_workers=cfg.num_workers, drop_last=len(train_ds) >= cfg.batch_size)
        val_loader = DataLoader(val_ds, batch_size=min(cfg.batch_size, len(val_ds)), num_workers=cfg.num_workers)

        model = build_model(cfg.model).to(torch.device(cfg.device))
        optimizer, aux_optimizer = build_optimizers(model, cfg.lr, cfg.aux_lr)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.lr_milestones, gamma=cfg.lr_gamma)
        loss_fn = RateDistortion(cfg.lmbda, cfg.metric)
        manager = CheckpointManager(rd.checkpoints, keep_last=cfg.keep_last, keep_best=1,
                                    metric="val_loss", mode="min")
        start_epoch = 0
        if resume_ckpt is not None:
            load_weights(model, resume_ckpt, model_name=cfg.model)
            optimizer.load_state_dict(resume_ckpt["optimizer"])
            aux_optimizer.load_state_dict(resume_ckpt["aux_optimizer"])
            scheduler.load_state_dict(resume_ckpt["lr_scheduler"])
            if "rng_state" in resume_ckpt:
                set_rng_state(resume_ckpt["rng_state"])
            start_epoch = int(resume_ckpt["epoch"]) + 1
            rd.truncate_history(start_epoch)
            manager.truncate(start_epoch - 1)

        final: dict[str, Any] = {}
        for epoch in range(start_epoch, cfg.epochs):
            lr = optimizer.param_groups[0]["lr"]
            tr = train_one_epoch(model, train_loader, optimizer, aux_optimizer, loss_fn,
                                 clip_max_norm=cfg.clip_max_norm, progress=cfg.progress,
                                 description=f"epoch {epoch + 1}/{cfg.epochs}")
            va = evaluate(model, val_loader, loss_fn)
            scheduler.step()
            record = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in tr.items()},
                      **{f"val_{k}": v for k, v in va.items()}}
            logger.log(record, step=epoch)
            state = {"state_dict": to_cpu_state(model.state_dict()), "optimizer": to_cpu_state(optimizer.state_dict()),
                     "aux_optimizer": to_cpu_state(aux_optimizer.state_dict()),
                     "lr_scheduler": scheduler.state_dict(), "epoch": epoch, "model": cfg.model,
                     "config": cfg.model_dump(mode="json"), "metrics": record, "rng_state": rng_state(),
                     "preset": model.config() if hasattr(model, "config") else None}
            path = manager.save(state, epoch, {"val_loss": va["loss"], "val_bpp": va["bpp_loss"],
                                               "val_psnr": va.get("psnr", float("nan"))})
            final = {**record, "checkpoint": str(path)}
            if cfg.progress:
                print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {tr['loss']:.4f} | val loss {va['loss']:.4f} "
                      f"bpp {va['bpp_loss']:.4f} psnr {va.get('psnr', float('nan')):.2f} dB ({tr['seconds']:.1f} s)")
        if not final and resume_ckpt is not None:
            final = {**resume_ckpt.get("metrics", {}), "checkpoint": str(manager.last())}
        final["run_dir"] = str(run_path)
        rd.write_json("metrics.json", final)
        logger.summary(final)
        rd.set_status("completed")
        return final
    except BaseException as exc:
        rd.set_status("failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        logger.finish()
