"""DDP scaling on 1 vs N processes (gloo on CPU, NCCL on CUDA): classification images/s and
compression (HPCM) steps/s.

Each measurement spawns the processes (torch.multiprocessing, a free port on 127.0.0.1) and times
``--steps`` optimizer steps of the *global* batch (split over the ranks) after ``--warmup`` steps:

- ``classification``: a timm model (``pretrained=False``, ``--model``) wrapped with
  :func:`finetune_kit.distributed.wrap_ddp`, AdamW, cross-entropy (``--batch-size``, ``--img-size``);
- ``compression``: ``--codec`` (default hpcm-tiny) wrapped as ``compress train`` wraps it
  (:func:`finetune_kit.tasks.compression.distributed.ddp_model`), the shared engine's
  ``train_step`` (R-D loss, clip, Adam + aux Adam) on ``--codec-batch`` crops of ``--patch`` px.

The sides alternate (1, N, 1, N, ...) for ``--repeats`` rounds; the script prints medians, spread
(min-max) and the scaling efficiency ``rate(N) / (N * rate(1))``. Start-up and imports are not timed.

    python benchmarks/bench_distributed.py --nproc 2 --threads 1 --repeats 5
    python benchmarks/bench_distributed.py --device cuda --nproc 2      # on a machine with 2 GPUs
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, args, out: str) -> None:
    import torch

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    import timm

    from finetune_kit import distributed as D

    D.init_distributed(args.device)
    device = D.local_device(args.device)
    torch.manual_seed(0)
    if args.task == "compression":
        step, batch = _compression_step(args, device), args.codec_batch
    else:
        step, batch = _classification_step(args, device, timm), args.batch_size

    for _ in range(args.warmup):
        step()
    D.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    D.barrier()
    if rank == 0:
        with open(out, "w") as fh:
            fh.write(str(args.steps * batch / (time.perf_counter() - t0)))
    D.destroy_distributed()


def _classification_step(args, device, timm):
    import torch

    from finetune_kit import distributed as D

    model = timm.create_model(args.model, pretrained=False, num_classes=2).to(device)
    ddp = D.wrap_ddp(model, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = D.per_rank_batch(args.batch_size)
    x = torch.rand(b, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, 2, (b,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
    return step


def _compression_step(args, device):
    import torch

    from finetune_kit import distributed as D
    from finetune_kit.tasks.compression.distributed import ddp_model
    from finetune_kit.tasks.compression.engine import RDObjective, build_optimizers, train_step
    from finetune_kit.tasks.compression.objectives.rate_distortion import RateDistortionLoss
    from finetune_kit.tasks.compression.models.zoo import build_model

    model = build_model(args.codec).to(device)
    opt, aux = build_optimizers(model)
    ddp = ddp_model(model, device).model()
    objective = RDObjective(RateDistortionLoss(0.0067))
    x = torch.rand(D.per_rank_batch(args.codec_batch, "--codec-batch"), 3, args.patch, args.patch, device=device)
    return lambda: train_step(ddp, x, opt, aux, objective)


def measure(world: int, args) -> float:
    """Images/s of the global batch on ``world`` processes (one spawn)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ips")
        mp.spawn(_worker, args=(world, _free_port(), args, out), nprocs=world)
        return float(open(out).read())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process)")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16, help="global batch (split over the processes)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tasks", default="classification,compression", help="comma-separated: classification, compression")
    p.add_argument("--codec", default="hpcm-tiny", help="compression model (compress train --model)")
    p.add_argument("--codec-batch", type=int, default=4, help="compression global batch")
    p.add_argument("--patch", type=int, default=128, help="compression crop side (px)")
    args = p.parse_args()
    for task in args.tasks.split(","):
        args.task = task.strip()
        _report(args)


def _report(args) -> None:
    batch = args.codec_batch if args.task == "compression" else args.batch_size
    sides: dict[int, list[float]] = {1: [], args.nproc: []}
    for r in range(args.repeats):
        for w in (1, args.nproc):  # alternate the two sides
            sides[w].append(measure(w, args))
            print(f"{args.task} round {r + 1}: {w} process(es): {sides[w][-1]:.2f} images/s", flush=True)
    med = {w: statistics.median(v) for w, v in sides.items()}
    what = (f"{args.codec} {args.patch}px crops, global batch {batch}" if args.task == "compression"
            else f"{args.model} {args.img_size}px, global batch {batch}")
    print(f"\n{args.task}: {what}, {args.threads} thread(s)/process, {args.device}, {args.repeats} alternating repeats")
    for w, v in sides.items():
        print(f"  {w} process(es): median {med[w]:.2f} images/s ({med[w] / batch:.3f} steps/s), "
              f"spread {min(v):.2f}-{max(v):.2f}")
    print(f"  scaling efficiency {args.nproc} vs 1: {med[args.nproc] / (args.nproc * med[1]):.2f} "
          f"(speed-up {med[args.nproc] / med[1]:.2f}x)\n", flush=True)


if __name__ == "__main__":
    main()
