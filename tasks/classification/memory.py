"""Peak memory of a run: CUDA allocator peak, or the process's resident set size sampled on CPU."""
from __future__ import annotations

import ctypes
import gc
import os
import threading

import torch

__all__ = ["PeakMemory", "current_rss_mb"]


def current_rss_mb() -> float:
    """Resident set size of this process in MiB (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


class PeakMemory:
    """Context manager measuring peak memory in MiB while it is open.

    ``peak_mb``: on CUDA ``torch.cuda.max_memory_allocated`` (reset on entry; includes the
    model's weights); on CPU the process RSS sampled every ``interval`` seconds by a daemon
    thread. ``increase_mb``: the peak minus the level on entry -- what training itself added
    (activations, gradients, optimizer state). On CPU, entry collects garbage and asks glibc
    to return freed memory (``malloc_trim``) first, so runs made one after another in one
    process (``compare``) do not inherit each other's high-water mark; memory the allocator
    keeps anyway makes ``increase_mb`` a lower bound there.
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.2) -> None:
        self.device, self.interval = torch.device(device), interval
        self.peak_mb = self.start_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, current_rss_mb())

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            _release_freed_memory()
            self.start_mb = self.peak_mb = current_rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def read(self) -> float:
        """Peak so far in MiB."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return max(self.peak_mb, current_rss_mb())

    @property
    def increase_mb(self) -> float:
        """Peak so far minus the level on entry, MiB."""
        return max(self.read() - self.start_mb, 0.0)

    def __exit__(self, *exc) -> None:
        self.peak_mb = self.read()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)


def _release_freed_memory() -> None:
    """Collect garbage and return free heap pages to the OS (glibc ``malloc_trim``; no-op elsewhere)."""

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
