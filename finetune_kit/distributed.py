"""PyTorch DDP under ``torchrun``: rank and world from the environment, the process group, and
the few collectives the training loops need.

Everything here is a no-op (or the identity) in a plain single-process run, so a loop calls the
same functions whether or not it runs distributed. A run is *distributed* when ``torchrun``
(``python -m torch.distributed.run``) started it: the launcher sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (PyTorch docs, "torchrun (Elastic
Launch)"); :func:`init_distributed` then opens the default process group with NCCL on CUDA and
gloo on CPU. A ``torchrun`` run with one process is distributed too (world size 1): it uses the
distributed sampler and per-sample seeding, so it is the exact reference a run on N processes
reproduces.

Semantics the loops build on (see docs/distributed.md):

- ``--batch-size`` is the *global* batch: each rank takes ``batch_size / world_size``
  (:func:`per_rank_batch`); DDP averages the gradients of the ranks, so one step equals the
  single-process step on the union of the rank batches.
- :func:`epoch_sampler`: a ``DistributedSampler`` over the permutation one process draws with the
  epoch's seed; rank ``r`` takes positions ``r, r + W, ...`` so the union of the ranks' ``k``-th
  batches is the ``k``-th batch of one process.
- :func:`gather_shards`: validation/test outputs predicted on :func:`shard_indices` are gathered
  back into the original order on every rank, so metrics equal the single-process ones.

Environment switches (set by ``finetune-kit --nproc N --sync-bn ...`` and passed on by torchrun):
``FINETUNE_KIT_SYNC_BN=1`` converts BatchNorm to ``torch.nn.SyncBatchNorm`` in :func:`wrap_ddp`;
``FINETUNE_KIT_DIST_TIMEOUT_S`` is the collective timeout (default 1800 s), after which a rank
waiting on a dead peer fails instead of hanging.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

__all__ = ["DistInfo", "dist_info", "is_distributed", "is_main", "init_distributed", "destroy_distributed",
           "local_device", "per_rank_batch", "EpochSampler", "epoch_sampler", "shard_indices", "gather_shards", "all_reduce_mean",
           "all_reduce_sums", "broadcast_object", "broadcast_module", "barrier", "wrap_ddp", "DDPModel", "DDPTracker",
           "sync_bn_requested", "sample_seed", "rank_failure_message", "reduce_epoch_stats",
           "distributed_run"]

SYNC_BN_ENV = "FINETUNE_KIT_SYNC_BN"
TIMEOUT_ENV = "FINETUNE_KIT_DIST_TIMEOUT_S"


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` (0..world_size-1), ``world_size``, ``local_rank`` (the
    device index on its machine) and whether torchrun launched it (``launched``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder, logs and checkpoints."""
        return self.rank == 0


def dist_info() -> DistInfo:
    """The rank, world size and local rank: from the open process group when there is one, else
    from torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (a plain run: rank 0 of 1).

    Raises:
        ValueError: a malformed torchrun variable (names it).
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), True)
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return DistInfo()
    try:
        return DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                        int(os.environ.get("LOCAL_RANK", 0)), True)
    except ValueError:
        raise ValueError(f"RANK={os.environ.get('RANK')!r} WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}: not integers; "
                         "start distributed runs with torchrun (or finetune-kit --nproc N)") from None


def is_distributed() -> bool:
    """Whether a process group is open (a torchrun run after :func:`init_distributed`)."""
    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    """Rank 0 (always True in a plain run)."""
    return dist_info().is_main


def local_device(device: str | torch.device) -> torch.device:
    """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun; others unchanged."""
    device = torch.device(device)
    info = dist_info()
    if device.type == "cuda" and info.launched and device.index is None:
        return torch.device("cuda", info.local_rank)
    return device


def init_distributed(device: str | torch.device = "cpu") -> DistInfo:
    """Open the default process group when torchrun launched this process (no-op otherwise or
    when already open): NCCL for a CUDA ``device`` (after ``torch.cuda.set_device(LOCAL_RANK)``),
    gloo on CPU; timeout ``FINETUNE_KIT_DIST_TIMEOUT_S`` seconds (default 1800).

    Returns:
        :func:`dist_info` after opening.

    Raises:
        RuntimeError: NCCL asked for on a machine without enough GPUs (names the fix).
    """
    info = dist_info()
    if not info.launched or is_distributed():
        return info
    device = torch.device(device)
    backend = "gloo"
    if device.type == "cuda":
        if torch.cuda.device_count() <= info.local_rank:
            raise RuntimeError(f"LOCAL_RANK {info.local_rank}: this machine has {torch.cuda.device_count()} CUDA "
                               "device(s); pass --nproc-per-node at most the GPU count, or --device cpu")
        torch.cuda.set_device(local_device(device))
        backend = "nccl"
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 1800)))
    dist.init_process_group(backend=backend, timeout=timeout)
    import atexit

    atexit.register(destroy_distributed)
    return dist_info()


def destroy_distributed() -> None:
    """Close the process group (no-op when none is open)."""
    if is_distributed():
        dist.destroy_process_group()


def rank_failure_message(exc: BaseException) -> str:
    """The one line a failing rank prints before the job ends: which rank, what, and how to resume."""
    info = dist_info()
    return (f"rank {info.rank}/{info.world_size} failed: {type(exc).__name__}: {exc}; torchrun ends the other ranks; "
            "the last checkpoint written by rank 0 is intact: resume with --resume RUN_FOLDER")


@contextmanager
def distributed_run(device: str | torch.device = "cpu") -> Iterator[DistInfo]:
    """Open the process group for the body and close it afterwards; a rank that raises prints
    :func:`rank_failure_message` to stderr (torchrun then stops the others) and re-raises."""
    info = init_distributed(device)
    try:
        yield info
    except BaseException as exc:
        if info.world_size > 1:
            print(rank_failure_message(exc), file=sys.stderr, flush=True)
        raise
    else:
        barrier()
    finally:
        destroy_distributed()


def barrier() -> None:
    """Wait for every rank (no-op in a plain run). A dead peer ends it after the timeout."""
    if is_distributed():
        dist.barrier()


def per_rank_batch(global_batch: int, option: str = "--batch-size") -> int:
    """The per-rank share of the global batch ``global_batch``.

    Raises:
        ValueError: ``global_batch`` not divisible by the world size (names the option and the fix).
    """
    world = dist_info().world_size
    if global_batch % world:
        raise ValueError(f"{option} {global_batch} is the global batch and must split evenly over {world} processes: "
                         f"pass a multiple of {world}")
    return global_batch // world


class EpochSampler(DistributedSampler):
    """This rank's share of one epoch's shuffled order.

    The order is ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))``; with
    ``dataloader_order=True`` one int64 is drawn from the generator first, as a single-process
    ``DataLoader(shuffle=True, generator=manual_seed(seed))`` does for its base seed before its
    ``RandomSampler`` draws the permutation, so the order is exactly that loader's. Padded like
    ``DistributedSampler`` (repeating the first indices) to a multiple of the world size; rank
    ``r`` takes positions ``r, r + W, ...``, so the union of the ranks' ``k``-th batches of
    ``B / W`` is the single process's ``k``-th batch of ``B``.
    """

    def __init__(self, dataset: Any, seed: int, *, dataloader_order: bool = True) -> None:
        info = dist_info()
        super().__init__(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=int(seed))
        self.dataloader_order = dataloader_order

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        if self.dataloader_order:
            torch.empty((), dtype=torch.int64).random_(generator=g)
        order = torch.randperm(len(self.dataset), generator=g).tolist()
        order += order[: self.total_size - len(order)]
        return iter(order[self.rank:self.total_size:self.num_replicas])


def epoch_sampler(dataset: Any, seed: int, *, dataloader_order: bool = True) -> EpochSampler:
    """:class:`EpochSampler` of ``dataset`` seeded with the epoch's seed (e.g. ``epoch_seed(cfg.seed, epoch)``)."""
    return EpochSampler(dataset, seed, dataloader_order=dataloader_order)


def shard_indices(n: int) -> range:
    """Indices ``rank, rank + W, ...`` of ``n`` items: this rank's share of an evaluation set."""
    info = dist_info()
    return range(info.rank, n, info.world_size)


def gather_shards(local: np.ndarray, n: int) -> np.ndarray:
    """Reassemble arrays predicted on :func:`shard_indices` of ``n`` items into ``(n, ...)`` in
    the original order, on every rank (identity in a plain run).

    Raises:
        ValueError: the gathered rows do not add up to ``n``.
    """
    info = dist_info()
    if not is_distributed() or info.world_size == 1:
        return local
    parts: list = [None] * info.world_size
    dist.all_gather_object(parts, np.asarray(local))
    if sum(len(p) for p in parts) != n:
        raise ValueError(f"gathered {sum(len(p) for p in parts)} rows from {info.world_size} ranks, expected {n}")
    shape = next((p.shape[1:] for p in parts if len(p)), np.asarray(local).shape[1:])
    dtype = next((p.dtype for p in parts if len(p)), np.asarray(local).dtype)
    out = np.empty((n, *shape), dtype=dtype)
    for r, p in enumerate(parts):
        out[r::info.world_size] = p
    return out


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over the ranks (a new tensor; ``t`` itself in a plain run). Every rank
    must pass a tensor of the same shape; the result is identical on every rank."""
    if not is_distributed():
        return t
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = t.detach().to(device, torch.float64).clone()
    dist.all_reduce(out)
    return (out / dist.get_world_size()).to(t.device, t.dtype)


def all_reduce_sums(values: dict[str, float]) -> dict[str, float]:
    """Sums over the ranks of the floats in ``values`` (same keys on every rank; identity when alone)."""
    if not is_distributed():
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    summed = all_reduce_mean(t) * dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, summed)}


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable; identity in a plain run)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Overwrite every parameter and buffer of ``module`` with rank ``src``'s, in place."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)


def sync_bn_requested() -> bool:
    """Whether ``--sync-bn`` asked for SyncBatchNorm (environment ``FINETUNE_KIT_SYNC_BN=1``)."""
    return os.environ.get(SYNC_BN_ENV, "0").strip().lower() in ("1", "true", "yes")


class DDPModel(nn.parallel.DistributedDataParallel):
    """``DistributedDataParallel`` that also answers the wrapped model's own attributes
    (``aux_loss()``, ``g_a`` ...), so code written for the bare model runs on the wrapper."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)


def wrap_ddp(model: nn.Module, device: str | torch.device | None = None, *, sync_bn: bool | None = None,
             ignore: Sequence[str] = (), find_unused_parameters: bool = False,
             broadcast_buffers: bool = True) -> nn.Module:
    """The model to run forward/backward through: a :class:`DDPModel` in a distributed run with
    more than one rank, else ``model`` itself.

    Args:
        model: on this rank's device already; its parameters with ``requires_grad`` at this
            moment are the ones DDP synchronises (re-wrap after that set changes, see
            :class:`DDPTracker`).
        device: the rank's device (CUDA: ``device_ids=[index]``).
        sync_bn: convert BatchNorm layers to ``SyncBatchNorm`` in place (default
            :func:`sync_bn_requested`); a converted model stays converted.
        ignore: parameter names DDP leaves alone (e.g. entropy bottleneck ``quantiles`` trained
            by their own aux loss, which is identical on every rank).
        find_unused_parameters, broadcast_buffers: passed to DDP (``broadcast_buffers`` sends rank
            0's buffers, e.g. BatchNorm statistics, to every rank before each forward).
    """
    info = dist_info()
    if not is_distributed() or info.world_size == 1:
        return model
    if sync_bn if sync_bn is not None else sync_bn_requested():
        _convert_sync_bn(model)
    if ignore:
        DDPModel._set_params_and_buffers_to_ignore_for_model(model, list(ignore))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    import inspect

    # torch >= 2.14 names the per-forward buffer broadcast forward_sync_buffers
    key = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
           else "broadcast_buffers")
    return DDPModel(model, device_ids=ids, find_unused_parameters=find_unused_parameters, **{key: broadcast_buffers})


def _convert_sync_bn(model: nn.Module) -> None:
    """Replace BatchNorm children by SyncBatchNorm in place (``convert_sync_batchnorm`` keeps the
    same weight/bias Parameter objects -- the optimizer's -- statistics and train/eval mode)."""
    for name, child in list(model.named_children()):
        setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))


class DDPTracker:
    """Keeps a DDP wrapper in step with which parameters train.

    DDP fixes the set of parameters needing gradients when it wraps the model; a fine-tuning
    strategy's unfreeze event (``requires_grad`` False -> True) changes that set. :meth:`model`
    returns the current wrapper and re-wraps when the set differs from the last wrap (and
    the first time). Frozen parameters keep ``requires_grad=False``: no backward through them.
    """

    def __init__(self, model: nn.Module, device: str | torch.device | None = None, **wrap_kwargs: Any) -> None:
        self.base, self.device, self.wrap_kwargs = model, device, wrap_kwargs
        self._key: tuple | None = None
        self._wrapped: nn.Module = model
        self.wraps = 0

    def model(self) -> nn.Module:
        """The module to train this epoch: the DDP wrapper (re-made when the trainable set changed)."""
        if not is_distributed() or dist_info().world_size == 1:
            return self.base
        key = tuple(p.requires_grad for p in self.base.parameters())
        if key != self._key:
            self._wrapped = wrap_ddp(self.base, self.device, **self.wrap_kwargs)
            self._key, self.wraps = key, self.wraps + 1
        return self._wrapped


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed of item ``index`` in ``epoch`` of a run seeded ``seed`` (SHA-256 based)."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def reduce_epoch_stats(stats: Any) -> Any:
    """An epoch's training statistics over every rank: ``stats`` has ``loss`` (mean per image),
    ``images`` and ``seconds`` (a dataclass, e.g. the classification ``EpochStats``); returns a
    copy with the image-weighted mean loss, the images of all ranks and the slowest rank's
    seconds (so ``images / seconds`` is the job's throughput). ``stats`` itself when alone."""
    import dataclasses

    if not is_distributed() or dist.get_world_size() == 1:
        return stats
    sums = all_reduce_sums({"loss": stats.loss * stats.images, "images": stats.images})
    seconds: list = [None] * dist.get_world_size()
    dist.all_gather_object(seconds, float(stats.seconds))
    images = int(round(sums["images"]))
    return dataclasses.replace(stats, loss=sums["loss"] / max(images, 1), images=images, seconds=max(seconds))
