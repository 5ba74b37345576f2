"""The default number of torch CPU threads of the compression commands (``--num-threads`` unset).

torch's own default is one thread per core, whatever else runs. HPCM's context model is many
small operations, and each one waits at a barrier for all its threads: when other processes hold
the cores, a waiting thread is descheduled and every operation waits for it. Measured on a 2-core
machine under a load average of about 7 (other jobs), ``compress eval`` of one ``hpcm-tiny``
checkpoint on 2 Kodak images took 63 s with 1 thread and 247 s with torch's 2.

So the default takes the cores that are free: the CPUs this process may use (affinity, capped by
a cgroup CPU quota) minus the 1-minute load average (rounded), at least 1, divided among the
torchrun processes of this machine (``LOCAL_WORLD_SIZE``), and never more than torch's default. An idle machine keeps torch's
choice (every core for one process); a busy one gets 1 thread. ``--num-threads N`` always wins.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import torch

__all__ = ["cpu_budget", "default_threads", "apply_threads"]

#: torch's own default at import (one per physical core, or ``OMP_NUM_THREADS``): never exceeded
TORCH_DEFAULT_THREADS = torch.get_num_threads()


def cpu_budget() -> int:
    """CPUs this process may run on: its affinity set, capped by a cgroup v2 ``cpu.max`` quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def default_threads(processes: Optional[int] = None, *, cores: Optional[int] = None,
                    load: Optional[float] = None) -> int:
    """Threads per process: ``min(cores // processes, cores - round(load), torch's default)``, at least 1.

    Args:
        processes: processes sharing the machine's cores (default: ``LOCAL_WORLD_SIZE``, else 1).
        cores: CPUs available (default :func:`cpu_budget`).
        load: busy cores (default: the 1-minute load average, ``os.getloadavg()[0]``; 0 where the
            platform has none).
    """
    processes = processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    cores = cores or cpu_budget()
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores // max(1, processes), cores - int(round(load)), TORCH_DEFAULT_THREADS))


def apply_threads(requested: Optional[int]) -> tuple[int, str]:
    """Set torch's intra-op threads to ``requested`` or :func:`default_threads`; returns the number
    and a one-line note for the console (empty when ``requested`` was given)."""
    if requested:
        torch.set_num_threads(requested)
        return requested, ""
    n = default_threads()
    torch.set_num_threads(n)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return n, (f"threads: {n} (free cores: {cpu_budget()} CPUs, load average {load:.1f}; "
               "--num-threads N to choose)")
