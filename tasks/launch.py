"""``--nproc N`` and ``--sync-bn``: run any training command under ``torchrun`` from its own command line.

``finetune-kit [...] --nproc 2 classify ...`` (the option may stand anywhere on the line, also
after the sub-command, and in ``train_classification.py``) re-executes the same command line
without ``--nproc`` through PyTorch's launcher::

    python -m torch.distributed.run --standalone --nproc-per-node 2 <program> <arguments>

so the command then runs exactly as if typed under ``torchrun --standalone --nproc-per-node 2``
(one machine; for several machines call ``torchrun`` with its rendezvous options yourself,
see docs/distributed.md). ``--sync-bn`` sets ``FINETUNE_KIT_SYNC_BN=1`` for the processes
(read by :func:`finetune_kit.distributed.sync_bn_requested`): BatchNorm becomes SyncBatchNorm.
Both are taken off the argument list before the command parses it. Inside a torchrun worker
``--nproc`` is refused (the launcher already chose the processes).
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

import click
from typer.core import TyperGroup

__all__ = ["LAUNCH_HELP", "split_launch_options", "torchrun_argv", "handle_launch_options", "LaunchingGroup", "LaunchError"]

#: What ``--help`` of a training command says about the launch options (they are taken off the line before
#: the command parses it, so they are no typer options of their own).
LAUNCH_HELP = ("Distributed: --nproc N runs this command on N processes of this machine (torchrun; alias "
               "--nproc-per-node); --sync-bn turns BatchNorm into SyncBatchNorm under it (docs/distributed.md).")
NPROC = ("--nproc", "--nproc-per-node", "--nproc_per_node")
SYNC_BN = ("--sync-bn", "--sync_bn")


class LaunchError(click.UsageError):
    """A bad ``--nproc`` value; the message names it and the fix."""


def split_launch_options(args: Sequence[str]) -> tuple[list[str], int | None, bool]:
    """``(args without the launch options, nproc or None, sync_bn)``.

    Understands ``--nproc N``, ``--nproc=N`` (also ``--nproc-per-node``) and ``--sync-bn``;
    arguments after a bare ``--`` are left alone.

    Raises:
        LaunchError: ``--nproc`` without a value or with a value that is not an integer >= 1.
    """
    out: list[str] = []
    nproc, sync_bn = None, False
    it = iter(range(len(args)))
    args = list(args)
    for i in it:
        a = args[i]
        if a == "--":
            out.extend(args[i:])
            break
        name, eq, value = a.partition("=")
        if name in NPROC:
            if not eq:
                if i + 1 >= len(args):
                    raise LaunchError(f"{name} needs a value: the number of processes, e.g. {name} 2")
                value = args[i + 1]
                next(it)
            try:
                nproc = int(value)
            except ValueError:
                raise LaunchError(f"{name} {value!r}: pass the number of processes, an integer >= 1") from None
            if nproc < 1:
                raise LaunchError(f"{name} {nproc}: pass the number of processes, an integer >= 1")
        elif a in SYNC_BN:
            sync_bn = True
        else:
            out.append(a)
    return out, nproc, sync_bn


def torchrun_argv(program: str, args: Sequence[str], nproc: int) -> list[str]:
    """The command line that runs ``program args`` on ``nproc`` processes of this machine:
    ``python -m torch.distributed.run --standalone --nproc-per-node N program args``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            program, *args]


def handle_launch_options(args: Sequence[str], program: str | None = None) -> list[str]:
    """Strip ``--nproc``/``--sync-bn`` from ``args`` and act on them.

    ``--sync-bn`` exports ``FINETUNE_KIT_SYNC_BN=1``. ``--nproc N`` (outside torchrun) replaces
    this process by :func:`torchrun_argv` of ``program`` (default ``sys.argv[0]``) and the
    remaining arguments (``os.execv``: it does not return). Returns the remaining arguments.

    Raises:
        LaunchError: a bad ``--nproc`` value, or ``--nproc`` inside a torchrun worker.
    """
    rest, nproc, sync_bn = split_launch_options(args)
    if sync_bn:
        os.environ["FINETUNE_KIT_SYNC_BN"] = "1"
    if nproc is None:
        return rest
    if "LOCAL_RANK" in os.environ:
        raise LaunchError("--nproc inside a torchrun worker: torchrun already started the processes; "
                          "drop --nproc (or run the command without torchrun)")
    argv = torchrun_argv(program or sys.argv[0], rest, nproc)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
    raise AssertionError("unreachable")  # pragma: no cover


class LaunchingGroup(TyperGroup):
    """The ``finetune-kit`` click group: takes ``--nproc``/``--sync-bn`` off the command line
    (wherever they stand) before parsing, see :func:`handle_launch_options`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, handle_launch_options(args))
