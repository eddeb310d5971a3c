"""Transpose of a CSR matrix (counting sort by column), for ``A + A.T``."""

from __future__ import annotations

import numpy as np

from .jit import njit


@njit()
def transpose(indptr, indices, values, n_cols, out_indices, out_values):
    """Transpose a ``[n_rows, n_cols]`` CSR matrix into caller-provided arrays.

    Args:
        indptr: ``[n_rows + 1]`` int64.
        indices: ``[nnz]`` int64 column ids.
        values: ``[nnz]`` float32 (or float64: the Jaccard weights).
        n_cols: number of columns.
        out_indices: ``[nnz]`` int64 output (may be a view into a larger array).
        out_values: ``[nnz]`` output of values' dtype.

    Returns:
        ``[n_cols + 1]`` int64 indptr of the transpose; within each of its rows the
        column ids (the input's row ids) are ascending.
    """
    n_rows = indptr.shape[0] - 1
    out_indptr = np.zeros(n_cols + 1, dtype=np.int64)
    for p in range(indptr[-1]):
        out_indptr[indices[p] + 1] += 1
    for c in range(n_cols):
        out_indptr[c + 1] += out_indptr[c]
    fill = out_indptr[:-1].copy()
    for r in range(n_rows):
        for p in range(indptr[r], indptr[r + 1]):
            c = indices[p]
            out_indices[fill[c]] = r
            out_values[fill[c]] = values[p]
            fill[c] += 1
    return out_indptr
