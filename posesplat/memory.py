"""Device memory: the peak of a block (`PeakMemory`) and the one-line error for running out (`OutOfMemoryError`)."""

from __future__ import annotations

import ctypes
import gc
import re

import torch

from posesplat.config import Config


class OutOfMemoryError(RuntimeError):
    """The device (CUDA) ran out of memory; the message names the mode, grid size, where, and the allocation."""


def oom_error(cfg: Config, device: torch.device, e: BaseException, where: str) -> OutOfMemoryError:
    """One line naming the device, where it ran out, the mode, the grid size and the allocation torch asked for."""
    asked = re.search(r"Tried to allocate ([\d.]+ [KMGT]?i?B)", str(e))
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return OutOfMemoryError(
        f"out of memory on {device} in {where}: mode={cfg.gaussian_mode} grid_size={cfg.grid_size} asked for "
        f"{asked.group(1) if asked else 'an unknown amount'}; lower grid_size, max_n or views_per_step, or raise "
        f"image_downsample ({first})"
    )


class PeakMemory:
    """Peak memory of a block: CUDA max_memory_allocated, or on CPU the process's resident-set high-water mark
    (VmHWM, reset through /proc/self/clear_refs) minus the resident set at the start. On CPU the start is taken after
    glibc has returned freed memory to the system (malloc_trim), so cached allocations do not hide the block's own
    peak."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_rss_delta"

    @staticmethod
    def _status(key: str) -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1]) / 1024  # kB -> MB
        return float("nan")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            # young generations only: a full collection walks every object a Ray worker has imported (0.25 s a call
            # there, once per epoch); tensors are freed by reference counting, cycles holding them are rare
            gc.collect(1)
            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except (OSError, AttributeError):
                pass
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
            self.start = self._status("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.peak_mb = max(self._status("VmHWM") - self.start, 0.0)

