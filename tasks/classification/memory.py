"""Peak memory of a run: CUDA allocator peak, or the process's resident set size sampled on CPU."""
from __future__ import annotations

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
    """Context manager measuring peak memory in MiB while it is open (``.peak_mb``).

    On CUDA: ``torch.cuda.max_memory_allocated`` (reset on entry). On CPU: the process RSS
    sampled every ``interval`` seconds by a daemon thread (includes the Python process,
    cached images and the model; comparable between runs of one process).
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.2) -> None:
        self.device, self.interval, self.peak_mb = torch.device(device), interval, 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, current_rss_mb())

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_mb = current_rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def read(self) -> float:
        """Peak so far in MiB."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return max(self.peak_mb, current_rss_mb())

    def __exit__(self, *exc) -> None:
        self.peak_mb = self.read()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
