"""Every memory budget and size limit of the library, and the check that a large buffer
fits before it is allocated (an error that says what to do instead, rather than the
allocator's raw failure deep inside a step).

The budgets are read at call time (``limits.NAME``), so tests and sweeps can change them
with ``monkeypatch.setattr(limits, NAME, value)``; the kNN strip size is the default of
an argument (``strip_bytes``) and is fixed at import, and ``NORM_EPS`` is a numerical
constant that modules import by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only for a CUDA device (see available_bytes)
    import torch

# Floor of a row's L2 norm in propagation: a row of norm 0 stays 0 instead of NaN.
NORM_EPS = 1e-12

# --- CPU path -------------------------------------------------------------------------
# Rows of the kNN's similarity strip (cpu/knn.py): at most this many bytes of float32.
KNN_STRIP_BYTES = 128 * 2**20
# A propagation round is built dense when its CSR (12 bytes an entry) would take more than
# this share of the dense float32 rows (4 bytes an entry; CSR also needs copies to
# symmetrise), and the dense rows take at least DENSE_MIN_BYTES (below, memory is no
# concern). See cpu/propagation.py.
DENSE_WHEN_CSR_EXCEEDS = 0.5
DENSE_MIN_BYTES = 64 * 2**20
# Score rows computed at a time by the CPU scoring (cpu/scoring.py).
SCORE_BLOCK_BYTES = 64 * 2**20
# Keep the query-gallery similarities from the kNN step (instead of recomputing them per
# block) when the [q, g] matrix is the output anyway or at most this large.
BASE_KEEP_BYTES = 512 * 2**20
# Rows of a similarity matrix converted at a time by gnn_rerank_similarities.
SIMILARITY_CHUNK_BYTES = 64 * 2**20

# --- GPU path -------------------------------------------------------------------------
# Dense blocks (z, score blocks) of the Triton pipeline (gpu/pipeline.py).
GPU_BLOCK_BYTES = 256 * 2**20
# Row blocks of the canonical close-call recomputation (gpu/canonical.py).
GPU_CANONICAL_BLOCK_BYTES = 256 * 2**20
# Scratch slots of one sparse-aggregation launch (gpu/aggregate.py).
GPU_MAX_SLOTS_PER_LAUNCH = 2**26


def available_bytes(device: torch.device | None = None) -> int | None:
    """Memory a new buffer can take now: free GPU memory on a CUDA device, else the host's
    ``MemAvailable`` (Linux); None where it cannot be read."""
    if device is not None and device.type == "cuda":
        import torch  # loaded already: the caller holds a torch device

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


def check_fits(n_bytes: int, what: str, hint: str, device: torch.device | None = None) -> None:
    """Raise a ``MemoryError`` naming ``what`` and suggesting ``hint`` when ``n_bytes`` are
    more than the memory available now (no check where that cannot be read)."""
    available = available_bytes(device)
    if available is not None and n_bytes > available:
        where = "free on the GPU" if device is not None and device.type == "cuda" else "available"
        raise MemoryError(
            f"{what} needs {_gigabytes(n_bytes)} but only "
            f"{_gigabytes(available)} is {where}; {hint}"
        )
