"""The training engine of the compression run (``compress train`` and ``compress finetune``).

One optimizer split (:func:`split_aux_groups`, :func:`build_optimizers`), one training step
(:func:`train_step`), one epoch loop (:func:`train_one_epoch`) and one validation
(:func:`evaluate`), driven by an *objective*: the run's
:class:`~finetune_kit.tasks.compression.objectives.objective.RunObjective` (R-D terms, hierarchical
tasks, balanced weights with their RNG replay, per-group clipping), or :class:`RDObjective` (the
plain R-D loss of :class:`~finetune_kit.tasks.compression.objectives.rate_distortion.RateDistortionLoss`
with a global gradient-norm clip, CompressAI's example trainer; benchmarks and small loops). An objective provides
``begin_step(model, x)``, ``compute(model, x) -> (loss, values)``, ``clip(optimizer, model)``,
``end_step(model, x)``, ``evaluation()`` (a context manager), ``validation_values(out, x)``,
``mse_key`` and ``lr_flag``.

Units: a *step* is one optimizer step on one batch ``[B, 3, H, W]`` (values in [0, 1]); an
*epoch* is one pass over the loader (or ``max_steps`` steps). The model's device holds the
batches. The entropy bottleneck's ``quantiles`` are trained by ``model.aux_loss()`` only, with
their own optimizer (CompressAI convention; HPCM paper Sec. 4.1: Adam 1e-4 / aux Adam 1e-3).
"""
from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from finetune_kit.distributed import all_reduce_sums, dist_info, is_distributed
from finetune_kit.tasks.compression.models.training_noise import per_sample_noise
from finetune_kit.tasks.compression.objectives.rate_distortion import RateDistortionLoss
from finetune_kit.tasks.compression.progress_bar import ProgressBar

__all__ = ["AUX_GROUP", "is_aux_param", "split_aux_groups", "build_optimizers", "RDObjective", "as_objective",
           "psnr_from_mse", "train_step", "train_one_epoch", "evaluate"]

#: layer group (``hpcm`` preset) of the parameters trained by the aux loss only
AUX_GROUP = "quantiles"

LossFn = Callable[[Mapping[str, Any], Tensor], dict]


def is_aux_param(name: str) -> bool:
    """Whether parameter ``name`` is an entropy bottleneck's ``quantiles`` (trained by the aux loss only)."""
    return name == "quantiles" or name.endswith(".quantiles")


def split_aux_groups(param_groups: list[dict]) -> tuple[list[dict], list[nn.Parameter]]:
    """Separate the aux-only parameters from the main optimizer groups.

    A parameter is aux when its group is named :data:`AUX_GROUP` (the ``hpcm`` layer preset's
    ``quantiles`` group) or its name (``param_names`` of the group, when given) ends in
    ``.quantiles``. Groups left without parameters are dropped; the others keep their options.

    Returns ``(main_groups, aux_params)``; ``aux_params`` is empty for models without quantiles.
    """
    main, aux = [], []
    for g in param_groups:
        if g.get("group_name") == AUX_GROUP:
            aux.extend(g["params"])
            continue
        names = g.get("param_names")
        if names is None or not any(is_aux_param(n) for n in names):
            main.append(g)
            continue
        keep = [(n, p) for n, p in zip(names, g["params"]) if not is_aux_param(n)]
        aux.extend(p for n, p in zip(names, g["params"]) if is_aux_param(n))
        if keep:
            main.append({**g, "params": [p for _, p in keep], "param_names": [n for n, _ in keep]})
    return main, aux


def build_optimizers(model: nn.Module, lr: float = 1e-4, aux_lr: float = 1e-3
                     ) -> tuple[torch.optim.Optimizer, Optional[torch.optim.Optimizer]]:
    """Adam (``lr``, default 1e-4) for the network and Adam (``aux_lr``, default 1e-3) for the quantiles.

    The split is :func:`split_aux_groups`; the main optimizer gets every other parameter with
    ``requires_grad`` (CompressAI convention). Models without ``quantiles`` (HPCM with the
    paper's mean-scale z model, which has no aux loss) get ``None`` as the aux optimizer.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or is_aux_param(n)]
    main, aux = split_aux_groups([{"params": [p for _, p in named], "param_names": [n for n, _ in named]}])
    aux_opt = torch.optim.Adam(aux, lr=aux_lr) if aux else None
    return torch.optim.Adam([p for g in main for p in g["params"]], lr=lr), aux_opt


class RDObjective:
    """The plain objective: ``criterion(model(x), x)["loss"]`` with a global gradient-norm clip.

    Args:
        criterion: a :class:`~finetune_kit.tasks.compression.objectives.rate_distortion.RateDistortionLoss` (or any
            callable ``(out, x) -> dict`` with ``loss`` and ``mse_loss``).
        clip_max_norm: L2 limit of the gradient over all parameters (paper 1.0; 0 disables).
    """

    mse_key = "mse_loss"
    lr_flag = "--lr"

    def __init__(self, criterion: LossFn, clip_max_norm: float = 1.0) -> None:
        self.criterion, self.clip_max_norm = criterion, clip_max_norm

    def begin_step(self, model: nn.Module, x: Tensor) -> None:
        """Called after ``zero_grad`` and before the forward pass (nothing here)."""

    def compute(self, model: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """``(loss to back-propagate, values to log)`` of one batch."""
        losses = self.criterion(model(x), x)
        return losses["loss"], dict(losses)

    def clip(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, float]:
        """Clip the gradient norm of every model parameter to ``clip_max_norm``; logs nothing."""
        if self.clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.clip_max_norm)
        return {}

    def end_step(self, model: nn.Module, x: Tensor) -> dict[str, Any]:
        """Called after ``optimizer.step()`` (nothing here); returns values to log."""
        return {}

    def evaluation(self) -> contextlib.AbstractContextManager:
        """Context of a validation pass (nothing to freeze here)."""
        return contextlib.nullcontext()

    def validation_values(self, out: Mapping[str, Any], x: Tensor) -> dict[str, float]:
        """Every criterion entry of one validation batch, as floats."""
        return {k: float(v) for k, v in self.criterion(out, x).items()}


def as_objective(loss_fn: Any, clip_max_norm: float = 1.0) -> Any:
    """``loss_fn`` itself when it is an objective (has ``compute``), else :class:`RDObjective` around it."""
    return loss_fn if hasattr(loss_fn, "compute") else RDObjective(loss_fn, clip_max_norm)


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of an MSE on [0, 1] images: ``10 log10(1 / mse)`` (``inf`` for 0)."""
    return float("inf") if mse <= 0 else 10 * math.log10(1.0 / mse)


class _Averager:
    """Image-weighted means of scalar values."""

    def __init__(self, keys: Optional[Sequence[str]] = None) -> None:
        self.keys = keys
        self.sums: dict[str, float] = defaultdict(float)
        self.n = 0

    def add(self, values: Mapping[str, Any], weight: int) -> None:
        for k in (self.keys if self.keys is not None else values):
            self.sums[k] += float(values[k]) * weight
        self.n += weight

    def result(self) -> dict[str, float]:
        return {k: v / max(self.n, 1) for k, v in self.sums.items()}


def train_step(model: nn.Module, x: Tensor, optimizer: torch.optim.Optimizer,
               aux_optimizer: Optional[torch.optim.Optimizer], objective: Any, *, where: str = "step 0",
               seeds: Optional[Sequence[int]] = None) -> dict[str, Any]:
    """One optimizer step on batch ``x [B, 3, H, W]`` (already on the model's device).

    ``zero_grad``; ``objective.begin_step``; ``loss, values = objective.compute(model, x)``;
    ``loss.backward()``; ``objective.clip``; ``optimizer.step()``; ``objective.end_step``; then
    ``model.aux_loss()`` with ``aux_optimizer`` (skipped when None, e.g. with frozen quantiles).
    With ``seeds`` (one per sample, from the torchrun loaders) the forward passes of ``compute``
    and ``end_step`` draw their quantization noise per sample
    (:func:`~finetune_kit.tasks.compression.models.training_noise.per_sample_noise`; ``end_step``
    replays the same noise).

    Returns the logged values (tensors detached): the objective's, its clip and end-step
    records and ``aux_loss``.

    Raises:
        FloatingPointError: the loss is NaN/inf (names ``where`` and the LR option to lower).
    """
    optimizer.zero_grad(set_to_none=True)
    objective.begin_step(model, x)
    with per_sample_noise(seeds):
        loss, values = objective.compute(model, x)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {float(loss.detach())} at {where}: lower {objective.lr_flag} "
                                 "or check the data")
    loss.backward()
    clipped = objective.clip(optimizer, model)
    optimizer.step()
    values = {k: v.detach() if isinstance(v, Tensor) else v for k, v in values.items()}
    values.update(clipped)
    with per_sample_noise(seeds):
        values.update(objective.end_step(model, x))
    if aux_optimizer is not None:
        aux_optimizer.zero_grad(set_to_none=True)
        aux_loss = model.aux_loss()
        aux_loss.backward()
        aux_optimizer.step()
        values["aux_loss"] = aux_loss.detach()
    return values


def train_one_epoch(model: nn.Module, loader: Iterable[Tensor], optimizer: torch.optim.Optimizer,
                    aux_optimizer: Optional[torch.optim.Optimizer], loss_fn: Any, *,
                    clip_max_norm: float = 1.0, max_steps: Optional[int] = None,
                    progress: bool = False, description: str = "train",
                    on_step: Optional[Callable[[int, dict], None]] = None,
                    before_step: Optional[Callable[[int], None]] = None,
                    train_mode: Optional[Callable[[nn.Module], Any]] = None,
                    average: Optional[Sequence[str]] = None, epoch: Optional[int] = None) -> dict[str, float]:
    """One pass of :func:`train_step` over ``loader`` (batches ``[B, 3, H, W]`` in [0, 1]).

    Args:
        loss_fn: an objective (see the module docstring) or a criterion such as
            :class:`~finetune_kit.tasks.compression.objectives.rate_distortion.RateDistortionLoss`, wrapped in
            :class:`RDObjective` with ``clip_max_norm`` (0 disables; ignored for objectives).
        max_steps: stop after this many steps (default: the whole loader).
        progress: show a progress bar (rich; drawn only on a terminal). description: its label.
        on_step: called as ``on_step(steps_done, values)`` after each step.
        before_step: called as ``before_step(i)`` (index in the epoch) before each step, e.g. to set LRs.
        train_mode: puts the model in training mode (default ``model.train()``; fine-tuning keeps
            frozen groups in eval mode).
        average: the value keys to average (default: all).
        epoch: named in the NaN error.

    Returns:
        image-weighted means of the step values (``loss`` ... ``aux_loss``), plus ``steps``,
        ``images`` and ``seconds``.

    Raises:
        FloatingPointError: the loss became NaN/inf (names the step; lower the lr).
    """

    objective = as_objective(loss_fn, clip_max_norm)
    # no gradient carried over from the previous epoch (or the aux step): a resumed run starts with
    # none, so leftovers would make its updates differ from the uninterrupted run's (issue 12)
    model.zero_grad(set_to_none=True)
    model.train() if train_mode is None else train_mode(model)
    avg = _Averager(average)
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    steps = 0
    total = max_steps if max_steps is not None else (len(loader) if hasattr(loader, "__len__") else None)
    # One iterator over the loader, made here whether or not a bar shows it: a bar given the loader
    # itself opens an extra iterator, which draws sampler/worker seeds from the RNG, so the random
    # crops of a run would depend on --progress.
    batches = iter(loader)
    bar = ProgressBar(batches, total=total, description=description) if progress else batches
    for batch in bar:
        if max_steps is not None and steps >= max_steps:
            break
        x, seeds = batch if isinstance(batch, (tuple, list)) else (batch, None)  # torchrun: (images, seeds)
        x = x.to(device, non_blocking=True)
        if before_step is not None:
            before_step(steps)
        where = f"step {steps}" if epoch is None else f"epoch {epoch} step {steps}"
        values = train_step(model, x, optimizer, aux_optimizer, objective, where=where,
                            seeds=None if seeds is None else seeds.tolist())
        values = _mean_over_ranks(values)
        avg.add(values, x.shape[0])
        steps += 1
        if progress:
            bar.set_postfix(loss=f"{float(values['loss']):.4f}",
                            **({"bpp": f"{float(values['bpp_loss']):.3f}"} if "bpp_loss" in values else {}))
        if on_step is not None:
            on_step(steps, values)
    if progress:
        bar.close()  # after a max_steps break
    res = avg.result()
    res.update(steps=steps, images=int(round(all_reduce_sums({"n": avg.n})["n"])), seconds=time.perf_counter() - t0)
    return res


def _mean_over_ranks(values: dict[str, Any]) -> dict[str, Any]:
    """DDP: the scalar step values averaged over the ranks (every rank's batch is ``B / W``), so
    the logged loss, bpp and MSE are those of the global batch; ``values`` itself when alone."""
    world = dist_info().world_size
    if not is_distributed() or world == 1:
        return values
    scalars = {k: float(v) for k, v in values.items()
               if isinstance(v, (int, float)) or (isinstance(v, Tensor) and v.numel() == 1)}
    summed = all_reduce_sums(scalars)
    return {**values, **{k: v / world for k, v in summed.items()}}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Tensor], loss_fn: Any, *,
             max_batches: Optional[int] = None) -> dict[str, float]:
    """Validation in eval mode (rounded latents, estimated rates) over ``loader``.

    ``loss_fn`` is an objective or a criterion (see :func:`train_one_epoch`). Returns
    image-weighted means of ``objective.validation_values`` (for the criterion: ``loss``,
    ``bpp_loss``, ``mse_loss``, ``bpp_s1``... for HPCM), ``psnr`` (dB, from the mean MSE) and
    ``aux_loss``. ``max_batches`` limits the batches (default all). The model's training mode
    is restored afterwards. A loader marked ``sharded`` (the torchrun validation loader, one
    shard of the images per rank) has its sums added over the ranks: every rank returns the
    means over all validation images.
    """
    objective = as_objective(loss_fn)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    avg = _Averager()
    try:
        with objective.evaluation():
            for i, x in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                x = x.to(device, non_blocking=True)
                avg.add(objective.validation_values(model(x), x), x.shape[0])
        if getattr(loader, "sharded", False):  # torchrun: this rank saw its shard; sum over the ranks
            totals = all_reduce_sums({**dict(avg.sums), "__n": avg.n})
            avg.n = int(round(totals.pop("__n")))
            avg.sums = defaultdict(float, totals)
        res = avg.result()
        mse = res.get(objective.mse_key)
        if mse is not None:
            res["psnr"] = psnr_from_mse(mse)
        res["aux_loss"] = float(model.aux_loss().detach())
    finally:
        model.train(was_training)
    return res
