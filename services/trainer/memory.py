"""Peak memory of a training job: CUDA max allocated on a GPU, peak RSS on a CPU."""

from __future__ import annotations

import contextlib
import ctypes
import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak(device: str) -> None:
    """Start measuring from now (several jobs can run, one after another, in one process)."""
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    # Linux: "5" resets the peak RSS (VmHWM) to the current RSS. Elsewhere, or if not
    # permitted, the peak covers the whole process.
    with contextlib.suppress(OSError):
        _CLEAR_REFS.write_text("5")


def read_peak(device: str) -> tuple[int, str]:
    """(bytes, kind) with kind as AdapterManifest.peak_memory_kind names it."""
    import torch

    if device == "cuda":
        return int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024, "cpu_peak_rss"
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_peak_rss"


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter number (malloc.h)


def return_freed_memory_to_os(threshold_bytes: int = 64 * 1024) -> bool:
    """On a CPU host, serve allocations of ``threshold_bytes`` or more with mmap, so that
    activations and gradients freed after each step go back to the OS at once instead of
    staying in glibc's heap. Training then holds (and the peak RSS reports) what it uses,
    not what it once used: measured here, 200 MiB instead of 430 MiB of growth for LoRA on a
    100M model. Process-wide; returns False where glibc is not the allocator."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes))
    except (OSError, AttributeError):
        return False
