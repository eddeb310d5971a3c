"""Neighbour feature aggregation on sparse rows: ``out[i] = sum_t w[i, t] * S[nbr[i, t]]``.

This is step 4 of the algorithm (``A = W @ (A + A.T)``) with W stored as its k2
non-zeros per row. Each output row is built in a dense scratch row of length
``n_cols`` (one per parallel chunk of rows) and written back as CSR, optionally
L2-normalised. Two passes: one counts each row's non-zeros, one fills them.

Each public function runs its rows in parallel chunks
(:func:`~triton_rerank.cpu.kernels.jit.parallel_chunks`); one compiled kernel,
``_aggregate_rows``, runs a chunk of any of the passes.
"""

from __future__ import annotations

import numpy as np

from .jit import njit, parallel_chunks

# Rows per parallel chunk (at least). Each chunk owns dense scratch rows of n_cols
# entries; parallel_chunks makes a few chunks per thread, so scratch memory is
# O(threads * n_cols).
_MIN_ROWS_PER_CHUNK = 64


# What one pass of _aggregate_rows does: count each row's non-zeros, fill the rows, or
# compute their norms only. One compiled kernel serves the three passes (each compiled
# function costs its own compile time).
_COUNT, _FILL, _NORMS = 0, 1, 2


@njit()
def kth_largest(values, m):
    """The ``m``-th largest of ``values`` (``1 <= m <= len``); reorders ``values``
    (quickselect: Hoare partitions around the middle element)."""
    target = m - 1  # its position in descending order
    lo, hi = 0, values.shape[0] - 1
    while lo < hi:
        pivot = values[(lo + hi) // 2]
        i, j = lo, hi
        while i <= j:
            while values[i] > pivot:
                i += 1
            while values[j] < pivot:
                j -= 1
            if i <= j:
                values[i], values[j] = values[j], values[i]
                i += 1
                j -= 1
        # now values[lo..j] >= pivot >= values[i..hi], and values[j+1..i-1] == pivot
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            break
    return values[target]


@njit(nogil=True)
def _aggregate_rows(
    start,
    stop,
    mode,
    rows,
    nbr_idx,
    nbr_w,
    s_indptr,
    s_indices,
    s_values,
    n_cols,
    row_ints,
    out_indices,
    out_values,
    out_norms,
    normalize,
    eps,
):
    """One pass over output rows ``start .. stop - 1``.

    ``_COUNT`` writes each row's non-zero count into ``row_ints`` (``[r]``) and reads
    only the structure of S; ``_FILL`` is :func:`fill_rows` (``row_ints`` is its
    ``out_indptr``); ``_NORMS`` writes the norms only. The arguments a pass does not
    use may be empty arrays of the same types.
    """
    counting = mode == _COUNT
    acc = np.zeros(0 if counting else n_cols, dtype=np.float32)
    seen = np.full(n_cols, -1, dtype=np.int64)
    touched = np.empty(0 if counting else n_cols, dtype=np.int64)
    picked = np.empty(n_cols if mode == _FILL else 0, dtype=np.float32)
    for o in range(start, stop):
        row = rows[o]
        n_touched = 0
        for t in range(nbr_idx.shape[1]):
            a = nbr_idx[row, t]
            if counting:
                for p in range(s_indptr[a], s_indptr[a + 1]):
                    col = s_indices[p]
                    if seen[col] != o:
                        seen[col] = o
                        n_touched += 1
                continue
            w = nbr_w[row, t]
            for p in range(s_indptr[a], s_indptr[a + 1]):
                col = s_indices[p]
                if seen[col] != o:
                    seen[col] = o
                    touched[n_touched] = col
                    n_touched += 1
                acc[col] += w * s_values[p]
        if counting:
            row_ints[o] = n_touched
            continue
        square_sum = np.float32(0.0)
        if mode == _NORMS:  # the scratch row is cleared in the same pass
            for p in range(n_touched):
                col = touched[p]
                square_sum += acc[col] * acc[col]
                acc[col] = 0.0
            out_norms[o] = np.sqrt(square_sum)
            continue
        for p in range(n_touched):
            v = acc[touched[p]]
            square_sum += v * v
        norm = np.sqrt(square_sum)
        out_norms[o] = norm
        scale = np.float32(1.0) / max(norm, eps) if normalize else np.float32(1.0)
        start = row_ints[o]
        slot = row_ints[o + 1] - start
        if slot < n_touched:
            # keep the `slot` largest entries, equal values: first touched first; in
            # first-touch order. cutoff = the slot-th largest value: every larger entry
            # is kept, and the first `ties` entries equal to it
            for p in range(n_touched):
                picked[p] = acc[touched[p]]
            cutoff = kth_largest(picked[:n_touched], slot)
            ties = slot
            for p in range(n_touched):
                if acc[touched[p]] > cutoff:
                    ties -= 1
            q = start
            for p in range(n_touched):
                col = touched[p]
                v = acc[col]
                if v > cutoff or (v == cutoff and ties > 0):
                    if not v > cutoff:
                        ties -= 1
                    out_indices[q] = col
                    out_values[q] = v * scale
                    q += 1
        else:
            for p in range(slot):
                col = touched[p]
                out_indices[start + p] = col
                out_values[start + p] = acc[col] * scale
        for p in range(n_touched):
            acc[touched[p]] = 0.0


def count_row_nnz(rows, nbr_idx, s_indptr, s_indices, n_cols):
    """Number of non-zeros of each output row (the union of its neighbours' supports).

    Args:
        rows: ``[r]`` integer ids of the rows to build.
        nbr_idx: ``[n, t]`` integer neighbour ids (the non-zero columns of W).
        s_indptr, s_indices: CSR structure of S, ``[n, n_cols]`` (integer arrays).
        n_cols: number of columns of S.

    Returns:
        ``[r]`` int64 non-zero counts.
    """
    counts = np.zeros(rows.shape[0], dtype=np.int64)
    none = np.empty(0, dtype=np.float32)
    parallel_chunks(
        _aggregate_rows,
        rows.shape[0],
        _COUNT,
        rows,
        nbr_idx,
        np.empty((0, 0), dtype=np.float32),
        s_indptr,
        s_indices,
        none,
        n_cols,
        counts,
        s_indices[:0],
        none,
        none,
        False,
        np.float32(0.0),
        min_size=_MIN_ROWS_PER_CHUNK,
    )
    return counts


def fill_rows(
    rows,
    nbr_idx,
    nbr_w,
    s_indptr,
    s_indices,
    s_values,
    n_cols,
    out_indptr,
    out_indices,
    out_values,
    out_norms,
    normalize,
    eps,
):
    """Write the aggregated rows into a CSR whose ``out_indptr`` came from the counts.

    A row whose slot in ``out_indptr`` is shorter than its count keeps its largest
    entries (equal values: first touched first), in first-touch order; the norm is the
    full row's.

    Args:
        rows, nbr_idx, s_indptr, s_indices, n_cols: as :func:`count_row_nnz`.
        nbr_w: ``[n, t]`` float32 neighbour weights (the values of W).
        s_values: ``[nnz]`` float32 values of S.
        out_indptr: ``[r + 1]`` int64 prefix sums of the counts (or of smaller budgets).
        out_indices, out_values: ``[nnz_out]`` outputs (ids of the dtype of ``s_indices``,
            float32).
        out_norms: ``[r]`` float32 output, the L2 norm of each row before scaling.
        normalize: divide each row by ``max(norm, eps)``.
        eps: float32, the norm floor (rows of norm 0 stay 0 instead of becoming NaN).
    """
    parallel_chunks(
        _aggregate_rows,
        rows.shape[0],
        _FILL,
        rows,
        nbr_idx,
        nbr_w,
        s_indptr,
        s_indices,
        s_values,
        n_cols,
        out_indptr,
        out_indices,
        out_values,
        out_norms,
        normalize,
        eps,
        min_size=_MIN_ROWS_PER_CHUNK,
    )


def row_norms(rows, nbr_idx, nbr_w, s_indptr, s_indices, s_values, n_cols):
    """L2 norm of each aggregated row, without storing the rows.

    Args: as :func:`fill_rows`. Returns: ``[r]`` float32 norms.
    """
    norms = np.zeros(rows.shape[0], dtype=np.float32)
    parallel_chunks(
        _aggregate_rows,
        rows.shape[0],
        _NORMS,
        rows,
        nbr_idx,
        nbr_w,
        s_indptr,
        s_indices,
        s_values,
        n_cols,
        np.empty(0, dtype=np.int64),
        s_indices[:0],
        np.empty(0, dtype=np.float32),
        norms,
        False,
        np.float32(0.0),
        min_size=_MIN_ROWS_PER_CHUNK,
    )
    return norms
