"""Checks that a large buffer fits before it is allocated, with an error that says what to
do instead (rather than the allocator's raw failure deep inside a step)."""

from __future__ import annotations

import torch


def available_bytes(device: torch.device | None = None) -> int | None:
    """Memory a new buffer can take now: free GPU memory on a CUDA device, else the host's
    ``MemAvailable`` (Linux); None where it cannot be read."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gigabytes(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def check_fits(n_bytes: int, what: str, hint: str,
               device: torch.device | None = None) -> None:
    """Raise a ``MemoryError`` naming ``what`` and suggesting ``hint`` when ``n_bytes`` are
    more than the memory available now (no check where that cannot be read)."""
    available = available_bytes(device)
    if available is not None and n_bytes > available:
        where = "free on the GPU" if device is not None and device.type == "cuda" else \
            "available"
        raise MemoryError(f"{what} needs {_gigabytes(n_bytes)} but only "
                          f"{_gigabytes(available)} is {where}; {hint}")
