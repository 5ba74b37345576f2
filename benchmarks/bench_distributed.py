"""DDP scaling: classification training images/s on 1 vs N processes (gloo on CPU, NCCL on CUDA).

Each measurement spawns the processes (torch.multiprocessing, a free port on 127.0.0.1), wraps
a timm model (``pretrained=False``) with :func:`finetune_kit.distributed.wrap_ddp`, and times
``--steps`` AdamW steps of the *global* batch ``--batch-size`` (split over the ranks) after
``--warmup`` steps; the sides alternate (1, N, 1, N, ...) for ``--repeats`` rounds and the
script prints medians, spread (min-max) and the scaling efficiency
``images/s(N) / (N * images/s(1))``. Process start-up and imports are not timed.

    python benchmarks/bench_distributed.py --nproc 2 --threads 1 --repeats 5
    python benchmarks/bench_distributed.py --device cuda --nproc 2      # on a machine with 2 GPUs

Compression (HPCM) steps/s under DDP are not measured yet: the compression loops are not on DDP
(see docs/distributed.md).
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
            fh.write(str(args.steps * args.batch_size / (time.perf_counter() - t0)))
    D.destroy_distributed()


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
    args = p.parse_args()
    sides: dict[int, list[float]] = {1: [], args.nproc: []}
    for r in range(args.repeats):
        for w in (1, args.nproc):  # alternate the two sides
            sides[w].append(measure(w, args))
            print(f"round {r + 1}: {w} process(es): {sides[w][-1]:.1f} images/s", flush=True)
    med = {w: statistics.median(v) for w, v in sides.items()}
    print(f"\n{args.model} {args.img_size}px, global batch {args.batch_size}, {args.threads} thread(s)/process, "
          f"{args.device}, {args.repeats} alternating repeats")
    for w, v in sides.items():
        print(f"  {w} process(es): median {med[w]:.1f} images/s ({med[w] / args.batch_size:.2f} steps/s), "
              f"spread {min(v):.1f}-{max(v):.1f}")
    print(f"  scaling efficiency {args.nproc} vs 1: {med[args.nproc] / (args.nproc * med[1]):.2f} "
          f"(speed-up {med[args.nproc] / med[1]:.2f}x)")


if __name__ == "__main__":
    main()
