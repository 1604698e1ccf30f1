"""Peak-memory measurement for one request.

On CUDA: ``torch.cuda.max_memory_allocated`` since the request started. On CPU: the resident set size is
sampled every 5 ms by a background thread; the figure is the peak minus the RSS when the request started.
Freed heap pages are returned to the OS first (glibc ``malloc_trim``), otherwise memory cached from an
earlier request would hide this one's peak.
"""

from __future__ import annotations

import os
import threading

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the high-water mark
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Start at prefill, read ``peak`` at any time, ``stop`` at the end of the request."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._stop = threading.Event()
        if self.cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device)
            self.device = device
            return
        _trim()
        self.base = self._max = _rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._max = max(self._max, _rss())

    @property
    def peak(self) -> int:
        """Bytes above the start of the request."""
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) - self.base
        return max(self._max, _rss()) - self.base

    def stop(self) -> None:
        self._stop.set()
