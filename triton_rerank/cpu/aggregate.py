"""Neighbour feature aggregation on sparse rows: ``out[i] = sum_t w[i, t] * S[nbr[i, t]]``.

This is step 4 of the algorithm (``A = W @ (A + A.T)``) with W stored as its k2
non-zeros per row. Each output row is built in a dense scratch row of length
``n_cols`` (one per parallel task) and written back as CSR, optionally
L2-normalised. Two passes: one counts each row's non-zeros, one fills them.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .jit import njit

# Rows per parallel task (at least): each task owns one dense scratch row of n_cols
# entries, so the number of tasks is capped too (scratch rows cost O(tasks * n_cols)).
_ROWS_PER_TASK = 64
_MAX_TASKS = 256


@njit()
def _rows_per_task(n_out):
    return max(_ROWS_PER_TASK, (n_out + _MAX_TASKS - 1) // _MAX_TASKS)


@njit(parallel=True)
def count_row_nnz(rows, nbr_idx, s_indptr, s_indices, n_cols):
    """Number of non-zeros of each output row (the union of its neighbours' supports).

    Args:
        rows: ``[r]`` int64 ids of the rows to build.
        nbr_idx: ``[n, t]`` int64 neighbour ids (the non-zero columns of W).
        s_indptr, s_indices: CSR structure of S, ``[n, n_cols]``.
        n_cols: number of columns of S.

    Returns:
        ``[r]`` int64 non-zero counts.
    """
    n_out = rows.shape[0]
    counts = np.zeros(n_out, dtype=np.int64)
    per_task = _rows_per_task(n_out)
    n_tasks = (n_out + per_task - 1) // per_task
    for task in nb.prange(n_tasks):
        seen = np.full(n_cols, -1, dtype=np.int64)
        for o in range(task * per_task, min(n_out, (task + 1) * per_task)):
            row = rows[o]
            count = 0
            for t in range(nbr_idx.shape[1]):
                a = nbr_idx[row, t]
                for p in range(s_indptr[a], s_indptr[a + 1]):
                    col = s_indices[p]
                    if seen[col] != o:
                        seen[col] = o
                        count += 1
            counts[o] = count
    return counts


@njit(parallel=True)
def fill_rows(rows, nbr_idx, nbr_w, s_indptr, s_indices, s_values, n_cols,
              out_indptr, out_indices, out_values, out_norms, normalize, eps):
    """Write the aggregated rows into a CSR whose ``out_indptr`` came from the counts.

    A row whose slot in ``out_indptr`` is shorter than its count keeps its largest
    entries (equal values: first touched first); the norm is the full row's.

    Args:
        rows, nbr_idx, s_indptr, s_indices, n_cols: as :func:`count_row_nnz`.
        nbr_w: ``[n, t]`` float32 neighbour weights (the values of W).
        s_values: ``[nnz]`` float32 values of S.
        out_indptr: ``[r + 1]`` int64 prefix sums of the counts (or of smaller budgets).
        out_indices, out_values: ``[nnz_out]`` outputs (integer ids, float32).
        out_norms: ``[r]`` float32 output, the L2 norm of each row before scaling.
        normalize: divide each row by ``max(norm, eps)``.
        eps: the norm floor (rows of norm 0 stay 0 instead of becoming NaN).
    """
    n_out = rows.shape[0]
    per_task = _rows_per_task(n_out)
    n_tasks = (n_out + per_task - 1) // per_task
    for task in nb.prange(n_tasks):
        acc = np.zeros(n_cols, dtype=np.float32)
        seen = np.full(n_cols, -1, dtype=np.int64)
        touched = np.empty(n_cols, dtype=np.int64)
        for o in range(task * per_task, min(n_out, (task + 1) * per_task)):
            row = rows[o]
            n_touched = 0
            for t in range(nbr_idx.shape[1]):
                a = nbr_idx[row, t]
                w = nbr_w[row, t]
                for p in range(s_indptr[a], s_indptr[a + 1]):
                    col = s_indices[p]
                    if seen[col] != o:
                        seen[col] = o
                        touched[n_touched] = col
                        n_touched += 1
                    acc[col] += w * s_values[p]
            square_sum = np.float32(0.0)
            for p in range(n_touched):
                v = acc[touched[p]]
                square_sum += v * v
            norm = np.sqrt(square_sum)
            out_norms[o] = norm
            scale = np.float32(1.0) / max(norm, eps) if normalize else np.float32(1.0)
            start = out_indptr[o]
            slot = out_indptr[o + 1] - start
            if slot < n_touched:  # keep the largest entries, in first-touch order
                kept = np.sort(np.argsort(-acc[touched[:n_touched]], kind="mergesort")[:slot])
                for p in range(slot):
                    col = touched[kept[p]]
                    out_indices[start + p] = col
                    out_values[start + p] = acc[col] * scale
            else:
                for p in range(slot):
                    col = touched[p]
                    out_indices[start + p] = col
                    out_values[start + p] = acc[col] * scale
            for p in range(n_touched):
                acc[touched[p]] = 0.0


@njit(parallel=True)
def row_norms(rows, nbr_idx, nbr_w, s_indptr, s_indices, s_values, n_cols):
    """L2 norm of each aggregated row, without storing the rows.

    Args: as :func:`fill_rows`. Returns: ``[r]`` float32 norms.
    """
    n_out = rows.shape[0]
    norms = np.zeros(n_out, dtype=np.float32)
    per_task = _rows_per_task(n_out)
    n_tasks = (n_out + per_task - 1) // per_task
    for task in nb.prange(n_tasks):
        acc = np.zeros(n_cols, dtype=np.float32)
        seen = np.full(n_cols, -1, dtype=np.int64)
        touched = np.empty(n_cols, dtype=np.int64)
        for o in range(task * per_task, min(n_out, (task + 1) * per_task)):
            row = rows[o]
            n_touched = 0
            for t in range(nbr_idx.shape[1]):
                a = nbr_idx[row, t]
                w = nbr_w[row, t]
                for p in range(s_indptr[a], s_indptr[a + 1]):
                    col = s_indices[p]
                    if seen[col] != o:
                        seen[col] = o
                        touched[n_touched] = col
                        n_touched += 1
                    acc[col] += w * s_values[p]
            square_sum = np.float32(0.0)
            for p in range(n_touched):
                col = touched[p]
                square_sum += acc[col] * acc[col]
                acc[col] = 0.0
            norms[o] = np.sqrt(square_sum)
    return norms

