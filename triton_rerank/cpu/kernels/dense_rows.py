"""Propagation on dense rows, for data whose propagated rows are not sparse.

Rows stay sparse on ordinary features (a few hundred non-zeros of N), but not on
degenerate data: many identical features share one kNN list, their rows of ``A + A.T``
hold every node, and one aggregation round later every row does. CSR then costs 12
bytes per entry plus copies; a dense float32 ``[N, N]`` matrix costs 4 and is
symmetrised in place. ``cpu/propagation.py`` switches to these kernels when the predicted
non-zeros make dense rows the smaller representation.

Sums run in the same order as the sparse kernels' (over the k2 neighbours, in order), so
both representations give the same row entries; only the norms' summation order differs.
"""

from __future__ import annotations

import numpy as np

from .jit import njit, parallel_chunks

# The tile side of the in-place symmetrisation.
_TILE = 64


@njit(nogil=True)
def _aggregate_chunk(
    start,
    stop,
    rows,
    nbr_idx,
    nbr_w,
    s_indptr,
    s_indices,
    s_values,
    s_dense,
    out,
    norms,
    normalize,
    eps,
):
    """Output rows ``start .. stop`` of :func:`aggregate_to_dense`."""
    for o in range(start, stop):
        acc = out[o]
        acc[:] = 0.0
        for t in range(nbr_idx.shape[1]):
            a = nbr_idx[rows[o], t]
            w = nbr_w[rows[o], t]
            if s_dense.shape[0]:
                source = s_dense[a]
                for c in range(acc.shape[0]):
                    acc[c] += w * source[c]
            else:
                for p in range(s_indptr[a], s_indptr[a + 1]):
                    acc[s_indices[p]] += w * s_values[p]
        square_sum = np.float32(0.0)
        for c in range(acc.shape[0]):
            square_sum += acc[c] * acc[c]
        norm = np.sqrt(square_sum)
        norms[o] = norm
        if normalize:
            scale = np.float32(1.0) / max(norm, eps)
            for c in range(acc.shape[0]):
                acc[c] *= scale


def aggregate_to_dense(
    rows, nbr_idx, nbr_w, source, n_cols: int, out, norms, *, normalize: bool, eps
) -> None:
    """Rows ``rows`` of ``W @ S`` as dense rows, each L2-normalised when ``normalize``.

    Args:
        rows: ``[r]`` int64 row ids of W to build.
        nbr_idx, nbr_w: ``[N, t]`` int64 / float32 the non-zeros of W per row.
        source: S, either ``(indptr, indices, values)`` of a CSR matrix or a dense
            ``[N, n_cols]`` float32 array.
        n_cols: columns of S.
        out: ``[r, n_cols]`` float32 output; norms: ``[r]`` float32 output (before
            normalisation).
        eps: float32 norm floor.
    """
    if isinstance(source, np.ndarray):
        indptr, indices, values, dense = (
            np.zeros(1, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            source,
        )
    else:
        (indptr, indices, values), dense = source, np.zeros((0, n_cols), np.float32)
    parallel_chunks(
        _aggregate_chunk,
        rows.shape[0],
        rows,
        nbr_idx,
        nbr_w,
        indptr,
        indices,
        values,
        dense,
        out,
        norms,
        normalize,
        eps,
    )


@njit(nogil=True)
def _norms_chunk(start, stop, rows, nbr_idx, nbr_w, s_dense, norms):
    acc = np.empty(s_dense.shape[1], np.float32)
    for o in range(start, stop):
        acc[:] = 0.0
        for t in range(nbr_idx.shape[1]):
            source = s_dense[nbr_idx[rows[o], t]]
            w = nbr_w[rows[o], t]
            for c in range(acc.shape[0]):
                acc[c] += w * source[c]
        square_sum = np.float32(0.0)
        for c in range(acc.shape[0]):
            square_sum += acc[c] * acc[c]
        norms[o] = np.sqrt(square_sum)


def dense_row_norms(rows, nbr_idx, nbr_w, s_dense) -> np.ndarray:
    """``[r]`` float32 L2 norms of rows ``rows`` of ``W @ S`` for a dense S, without
    storing the rows."""
    norms = np.empty(rows.shape[0], np.float32)
    parallel_chunks(_norms_chunk, rows.shape[0], rows, nbr_idx, nbr_w, s_dense, norms)
    return norms


@njit(nogil=True)
def _symmetrise_chunk(start, stop, a):
    """Tile rows ``start .. stop`` of the in-place ``A + A.T``: tiles (i, j >= i)."""
    n = a.shape[0]
    for tile in range(start, stop):
        i0 = tile * _TILE
        for j0 in range(i0, n, _TILE):
            for i in range(i0, min(n, i0 + _TILE)):
                for j in range(max(j0, i), min(n, j0 + _TILE)):
                    total = a[i, j] + a[j, i]
                    a[i, j] = total
                    a[j, i] = total


def symmetrise_in_place(a: np.ndarray) -> None:
    """``a <- a + a.T`` for a square float32 array, exactly symmetric (each pair's sum is
    computed once and written to both places)."""
    # tile rows near the top have the most tiles: many small chunks balance them
    n_tiles = -(-a.shape[0] // _TILE)
    parallel_chunks(_symmetrise_chunk, n_tiles, a, max_chunks=n_tiles)
