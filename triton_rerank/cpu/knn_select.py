"""Running top-k selection over blocks of a similarity matrix.

The kNN step computes ``U @ U.T`` one block at a time (``graph.py``) and hands each
block to these kernels, which keep every node's best ``k`` (value, column) pairs so
far, ordered by value descending and, for equal values, column ascending (the tie
rule). The order is total, so the result does not depend on the order in which
blocks arrive.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .jit import njit

# Columns per parallel task in update_from_columns: small enough to keep the cached
# thresholds in L1, large enough to amortise the task.
_COLUMN_CHUNK = 256


@njit(inline="always")
def _before(value_a, index_a, value_b, index_b):
    """Whether (value_a, index_a) ranks before (value_b, index_b)."""
    return value_a > value_b or (value_a == value_b and index_a < index_b)


@njit(inline="always")
def _insert(values, indices, value, index):
    """Insert (value, index) into a sorted list known to accept it (it ranks before the last)."""
    j = values.shape[0] - 1
    while j > 0 and _before(value, index, values[j - 1], indices[j - 1]):
        values[j] = values[j - 1]
        indices[j] = indices[j - 1]
        j -= 1
    values[j] = value
    indices[j] = index


@njit(parallel=True)
def update_from_rows(block, row_start, col_start, top_values, top_indices):
    """Offer ``block[r, c]`` to node ``row_start + r`` as neighbour ``col_start + c``.

    Args:
        block: ``[b, m]`` float32, ``block[r, c] = <u[row_start + r], u[col_start + c]>``.
        row_start, col_start: global node ids of the block's first row and column.
        top_values: ``[n, k]`` float32 running top-k values, descending (updated in place).
        top_indices: ``[n, k]`` int64 their column ids (updated in place).
    """
    n_rows, n_cols = block.shape
    k = top_values.shape[1]
    for r in nb.prange(n_rows):
        node = row_start + r
        values = top_values[node]
        indices = top_indices[node]
        for c in range(n_cols):
            v = block[r, c]
            if v >= values[k - 1] and _before(v, col_start + c, values[k - 1], indices[k - 1]):
                _insert(values, indices, v, col_start + c)


@njit(parallel=True)
def update_from_columns(block, row_start, col_start, first_col, top_values, top_indices):
    """Offer ``block[r, c]`` to node ``col_start + c`` as neighbour ``row_start + r``.

    Only columns ``c >= first_col`` are used: the caller skips the columns whose
    nodes already saw these pairs through :func:`update_from_rows`.

    Args: as :func:`update_from_rows`, plus ``first_col`` (local column index).
    """
    n_rows, n_cols = block.shape
    k = top_values.shape[1]
    n_chunks = (n_cols - first_col + _COLUMN_CHUNK - 1) // _COLUMN_CHUNK
    for chunk in nb.prange(n_chunks):
        c0 = first_col + chunk * _COLUMN_CHUNK
        c1 = min(n_cols, c0 + _COLUMN_CHUNK)
        thresholds = np.empty(c1 - c0, dtype=top_values.dtype)
        for c in range(c0, c1):
            thresholds[c - c0] = top_values[col_start + c, k - 1]
        for r in range(n_rows):
            for c in range(c0, c1):
                v = block[r, c]
                node = col_start + c
                if v >= thresholds[c - c0] and _before(v, row_start + r, top_values[node, k - 1],
                                                       top_indices[node, k - 1]):
                    _insert(top_values[node], top_indices[node], v, row_start + r)
                    thresholds[c - c0] = top_values[node, k - 1]
