"""Running top-k selection over blocks of a similarity matrix.

The kNN step computes ``U @ U.T`` one row strip at a time (``graph.py``) and hands
each strip to these kernels, which keep every node's best ``k`` (value, column) pairs
so far. Because every node sees its candidate columns in increasing index order, a
strict ``>`` test implements the tie rule "equal values: smaller column first".
"""

from __future__ import annotations

import numba as nb
import numpy as np

# Columns per parallel task in update_from_columns: small enough to keep the cached
# thresholds in L1, large enough to amortise the task.
_COLUMN_CHUNK = 256


@nb.njit(cache=True, inline="always")
def _insert(values, indices, value, index):
    """Insert (value, index) into a descending list known to accept it (value > last)."""
    j = values.shape[0] - 1
    # Stop at an equal value: the entry already there has the smaller index.
    while j > 0 and values[j - 1] < value:
        values[j] = values[j - 1]
        indices[j] = indices[j - 1]
        j -= 1
    values[j] = value
    indices[j] = index


@nb.njit(parallel=True, cache=True)
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
        threshold = values[k - 1]
        for c in range(n_cols):
            v = block[r, c]
            if v > threshold:
                _insert(values, indices, v, col_start + c)
                threshold = values[k - 1]


@nb.njit(parallel=True, cache=True)
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
                if v > thresholds[c - c0]:
                    node = col_start + c
                    _insert(top_values[node], top_indices[node], v, row_start + r)
                    thresholds[c - c0] = top_values[node, k - 1]
