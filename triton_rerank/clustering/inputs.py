"""What every clustering distance shares: checked inputs, the kNN lists on the backend
that suits the features, and the symmetric sparse output.

Every distance of this package (``jaccard.py``, ``gnn.py``, ``cosine.py``) returns the
same kind of matrix: ``[N, N]`` float32 CSR, symmetric, columns ascending, holding every
pair closer than ``max_distance`` (explicit zeros included) and the diagonal, the input
DBSCAN expects with ``metric="precomputed"`` (stored entries are distances, missing
ones are not neighbours).
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse
import torch

from .. import checks, limits
from ..cpu.kernels.jaccard import symmetric_rows
from ..cpu.knn import knn_graph


def checked_features(features, name: str = "features") -> np.ndarray:
    """``features`` (numpy array, torch tensor on any device, or array-like) as
    ``[N, d]`` float32 canonical unit rows.

    Raises:
        ValueError: not 2-D, no rows, no columns, NaN or inf, or a row of norm 0.
        TypeError: not floating point.
    """
    x = checks.as_numpy(features)
    if x.ndim == 2 and x.shape[0] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)} has no rows")
    if x.size and not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must hold floats, got dtype {x.dtype}")
    return checks.unit_rows(x, name)


def checked_max_distance(max_distance, largest: float) -> float:
    """``max_distance`` as a float in ``(0, largest]``."""
    if isinstance(max_distance, bool) or not isinstance(max_distance, numbers.Real):
        raise TypeError(
            f"max_distance must be a real number in (0, {largest:g}], got {max_distance!r}"
        )
    if not 0.0 < float(max_distance) <= largest:
        raise ValueError(f"max_distance must be in (0, {largest:g}], got {max_distance}")
    return float(max_distance)


def row_count(features) -> int:
    """N of ``[N, d]`` features before they are checked (0 for other shapes, which the
    distances then report), without copying them off their device."""
    shape = tuple(getattr(features, "shape", None) or np.shape(features))
    return shape[0] if len(shape) == 2 else 0


def knn_backend(features, backend: str) -> str:
    """``"cpu"`` or ``"triton"``: where the kNN lists of ``features`` are computed
    (``"auto"``: the Triton kernels for CUDA tensors, the CPU path otherwise; as
    :func:`triton_rerank.rerank.resolve_backend`)."""
    from ..rerank import resolve_backend

    device = features.device if isinstance(features, torch.Tensor) else None
    return resolve_backend(backend, device)


def knn_lists(nodes: np.ndarray, k: int, *, backend: str = "cpu", device=None):
    """The canonical top-``k`` lists of the unit rows ``nodes [N, d]``, self included
    (the same lists on either backend).

    Args:
        backend: ``"cpu"`` (``cpu/knn.py``) or ``"triton"`` (``gpu/pipeline.py`` ``knn``
            on ``device``: a CUDA device, or the CPU under ``TRITON_INTERPRET=1``).

    Returns:
        ``(values [N, k] float32, indices [N, k] int64)`` numpy arrays.
    """
    if backend == "triton":
        from ..gpu.pipeline import knn

        values, indices = knn(torch.from_numpy(nodes).to(device or "cpu"), k)
        return values.cpu().numpy(), indices.cpu().numpy()
    values, indices, _ = knn_graph(torch.from_numpy(nodes), k)
    return values, indices


def symmetric_matrix(upper, diagonal: np.ndarray) -> scipy.sparse.csr_matrix:
    """The ``[N, N]`` CSR matrix with strict upper triangle ``upper`` (``(indptr,
    columns, values)``, columns ascending) and ``diagonal [N]`` float32 (always stored)."""
    n = diagonal.shape[0]
    indptr, columns, values = symmetric_rows(*upper, diagonal)
    matrix = scipy.sparse.csr_matrix((values, columns, indptr), shape=(n, n))
    matrix.has_sorted_indices = True
    return matrix


def upper_pairs_from_scores(
    n: int,
    score_rows,
    max_distance: float,
    block_bytes: int | None,
    max_pairs: int | None = None,
):
    """The strict upper triangle of the distance ``max(0, 1 - s)``, pairs below
    ``max_distance``, from similarity scores computed one block of rows at a time.

    Args:
        n: N.
        score_rows: ``score_rows(start, stop, out)`` writes the float32 scores of rows
            ``start:stop`` against every node into ``out [stop - start, N]``, every
            entry (``out`` holds the previous block's values on entry).
        max_distance: pairs whose float32 distance ``1 - s`` is below it are kept.
        block_bytes: memory of one block (default ``limits.SCORE_BLOCK_BYTES``).
        max_pairs: keep only the ``max_pairs`` smallest non-zero distances (and every
            zero, and every pair tied with the largest kept one): memory stays
            ``O(max_pairs)`` whatever ``max_distance``. The pairs left out are farther
            than every pair kept.

    Returns:
        ``(indptr [N + 1] int64, columns int64, values float32)``, columns ascending.
    """
    block_bytes = limits.SCORE_BLOCK_BYTES if block_bytes is None else block_bytes
    rows_per_block = int(max(1, min(n, block_bytes // (4 * n))))
    buffer = np.empty(rows_per_block * n, np.float32)
    kept_rows, kept_cols = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    kept_vals = [np.empty(0, np.float32)]
    n_kept = 0
    # the float32 cutoff with d < cutoff exactly when d < max_distance (for float32 d)
    cutoff = np.float32(max_distance)
    if float(cutoff) < max_distance:
        cutoff = np.nextafter(cutoff, np.float32(np.inf))

    def prune():
        """Keep the max_pairs smallest non-zero distances: the cutoff drops to just
        above the max_pairs-th one (ties kept)."""
        nonlocal n_kept, cutoff
        rows, cols, vals = (np.concatenate(parts) for parts in (kept_rows, kept_cols, kept_vals))
        nonzero = vals[vals != 0]
        if nonzero.size > max_pairs:
            largest_kept = np.partition(nonzero, max_pairs - 1)[max_pairs - 1]
            cutoff = min(cutoff, np.nextafter(largest_kept, np.float32(np.inf)))
            keep = vals < cutoff
            rows, cols, vals = rows[keep], cols[keep], vals[keep]
        kept_rows[:], kept_cols[:], kept_vals[:] = [rows], [cols], [vals]
        n_kept = vals.size

    for start in range(0, n, rows_per_block):
        stop = min(n, start + rows_per_block)
        block = buffer[: (stop - start) * n].reshape(stop - start, n)
        score_rows(start, stop, block)
        distance = np.subtract(np.float32(1.0), block, out=block)
        for r in range(stop - start):  # the lower triangle and the diagonal are not kept
            distance[r, : start + r + 1] = np.inf
        rows, cols = np.nonzero(distance < cutoff)
        kept_rows.append(rows + start)
        kept_cols.append(cols.astype(np.int64))
        kept_vals.append(np.maximum(distance[rows, cols], np.float32(0.0)))
        n_kept += rows.size
        if max_pairs is not None and n_kept > 2 * max_pairs:
            prune()
    if max_pairs is not None:
        prune()
    rows = np.concatenate(kept_rows)  # ascending (blocks in order), columns ascending per row
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr, np.concatenate(kept_cols), np.concatenate(kept_vals).astype(np.float32)
