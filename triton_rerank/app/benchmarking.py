"""Time GNN re-ranking against the dense reference and k-reciprocal over a range of N.

Each (method, N) runs in a fresh Python process (``python -m triton_rerank.app.benchmarking``)
so that its peak RSS is its own; the parent collects one JSON line per run. Data are
Market-1501-shaped synthetic features (``triton_rerank.app.synthetic``) with the query
fraction of Market-1501 (3,368 of 23,100).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

METHODS = ("ours", "reference", "k-reciprocal")
MARKET_QUERY_FRACTION = 3368 / 23100
# The smallest N: every method runs with k1 = 26 neighbours.
MIN_IMAGES = 26


class MeasurementError(RuntimeError):
    """A benchmark run failed in its process (its message is one line)."""


@dataclass
class Measurement:
    method: str
    n: int
    seconds: float
    peak_rss_mb: float


def _shape(n: int, dim: int):
    from .synthetic import ReidShape

    n_query = max(1, round(MARKET_QUERY_FRACTION * n))
    return ReidShape(
        n_query=n_query,
        n_gallery=n - n_query,
        dim=dim,
        n_ids=max(2, n // 30),
        n_cams=6,
        distractor_fraction=1 / 8,
    )


def check_run(method: str, n: int, dim: int) -> None:
    """Raise ValueError unless ``method`` is known, ``n >= MIN_IMAGES`` and ``dim >= 1``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if n < MIN_IMAGES:
        raise ValueError(f"N must be >= {MIN_IMAGES} (k1 = 26 neighbours), got {n}")
    if dim < 1:
        raise ValueError(f"the feature dimension must be >= 1, got {dim}")


def measure_here(method: str, n: int, dim: int, seed: int = 0) -> Measurement:
    """Run one method once in this process (call it in a fresh process for a clean RSS)."""
    import torch

    check_run(method, n, dim)

    from ..rerank import gnn_rerank
    from .synthetic import reid_like_features

    data = reid_like_features(_shape(n, dim), seed=seed)
    xq, xg = data.query_features, data.gallery_features
    if method == "ours":
        gnn_rerank(xq[:2], xg[:30], k1=5, k2=2)  # compile the kernels outside the timing
        start = time.perf_counter()
        gnn_rerank(xq, xg)
    elif method == "reference":
        from ..reference import gnn_rerank_reference

        start = time.perf_counter()
        gnn_rerank_reference(xq, xg, dtype=torch.float32, similarity="matmul")
    elif method == "k-reciprocal":
        from ..integrations.torchreid import k_reciprocal_distances, torchreid_module

        torchreid_module("metrics")  # imported before the clock starts
        torchreid_module("utils.rerank")
        tq, tg = torch.from_numpy(xq), torch.from_numpy(xg)
        start = time.perf_counter()  # the distance matrices included, as for the others
        k_reciprocal_distances(tq, tg)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    seconds = time.perf_counter() - start
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return Measurement(method, n, seconds, peak_rss_mb)


def measure(method: str, n: int, dim: int, seed: int = 0) -> Measurement:
    """:func:`measure_here` in a fresh process.

    Raises:
        ValueError: see :func:`check_run` (checked before starting the process).
        MeasurementError: the process failed; the message has its last line of stderr.
    """
    check_run(method, n, dim)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "triton_rerank.app.benchmarking",
            method,
            str(n),
            str(dim),
            str(seed),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        how = (
            f"was killed by signal {-proc.returncode} (out of memory?)"
            if proc.returncode < 0
            else f"exited with status {proc.returncode}"
        )
        last = proc.stderr.strip().splitlines()[-1:] or ["no error output"]
        raise MeasurementError(
            f"{method} at N={n}, dim={dim}: the benchmark process {how}: {last[0]}"
        )
    return Measurement(**json.loads(proc.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", message="Cython evaluation")
    method, n, dim, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(asdict(measure_here(method, n, dim, seed))))
