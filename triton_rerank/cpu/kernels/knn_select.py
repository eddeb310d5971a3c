"""Running top-k selection over blocks of a similarity matrix.

The kNN step computes ``U @ U.T`` one block at a time (``cpu/knn.py``) and hands each
block to these kernels, which keep every node's best ``k`` (value, column) pairs so
far, ordered by value descending and, for equal values, column ascending (the tie
rule). The order is total, so the result does not depend on the order in which
blocks arrive.

Blocks are float32, or bfloat16 (the fast candidate pass) passed as their uint16 bit
patterns: a bfloat16 value is the top half of a float32, so it is widened exactly by a
16-bit shift, one row (or row chunk) at a time.
"""

from __future__ import annotations

import numpy as np

from .jit import njit, parallel_chunks

# Columns whose cached thresholds a column kernel keeps at a time (in L1).
_COLUMN_CHUNK = 256


@njit(inline="always")
def before(value_a, index_a, value_b, index_b):
    """Whether (value_a, index_a) ranks before (value_b, index_b)."""
    return value_a > value_b or (value_a == value_b and index_a < index_b)


@njit(inline="always")
def insert(values, indices, value, index):
    """Insert (value, index) into a sorted list known to accept it (it ranks before the last)."""
    j = values.shape[0] - 1
    while j > 0 and before(value, index, values[j - 1], indices[j - 1]):
        values[j] = values[j - 1]
        indices[j] = indices[j - 1]
        j -= 1
    values[j] = value
    indices[j] = index


@njit()
def _widen_bf16(bits, out_bits):
    """Write the float32 bit patterns of bfloat16 ``bits`` (uint16) into ``out_bits``
    (uint32, at least as long); view ``out_bits`` as float32 to read the values."""
    for c in range(bits.shape[0]):
        out_bits[c] = np.uint32(bits[c]) << np.uint32(16)


@njit()
def _offer_row(row, col_start, values, indices):
    """Offer ``row[c]`` as neighbour ``col_start + c`` to one node's sorted list."""
    k = values.shape[0]
    for c in range(row.shape[0]):
        v = row[c]
        if v >= values[k - 1] and before(v, col_start + c, values[k - 1], indices[k - 1]):
            insert(values, indices, v, col_start + c)


@njit()
def _offer_columns(row, neighbour, first_node, thresholds, top_values, top_indices):
    """Offer ``row[c]`` (one block row, a chunk of columns) as neighbour ``neighbour`` to
    nodes ``first_node + c``; ``thresholds[c]`` caches their k-th values."""
    k = top_values.shape[1]
    for c in range(row.shape[0]):
        v = row[c]
        node = first_node + c
        if v >= thresholds[c] and before(
            v, neighbour, top_values[node, k - 1], top_indices[node, k - 1]
        ):
            insert(top_values[node], top_indices[node], v, neighbour)
            thresholds[c] = top_values[node, k - 1]


@njit(nogil=True)
def _rows_chunk(start, stop, block, row_start, col_start, top_values, top_indices):
    for r in range(start, stop):
        _offer_row(block[r], col_start, top_values[row_start + r], top_indices[row_start + r])


@njit(nogil=True)
def _rows_chunk_bf16(start, stop, block, row_start, col_start, top_values, top_indices):
    bits = np.empty(block.shape[1], np.uint32)
    for r in range(start, stop):
        _widen_bf16(block[r], bits)
        _offer_row(
            bits.view(np.float32), col_start, top_values[row_start + r], top_indices[row_start + r]
        )


def update_from_rows(block, row_start, col_start, top_values, top_indices) -> None:
    """Offer ``block[r, c]`` to node ``row_start + r`` as neighbour ``col_start + c``.

    Args:
        block: ``[b, m]`` float32, ``block[r, c] = <u[row_start + r], u[col_start + c]>``;
            or bfloat16 values as their ``[b, m]`` uint16 bits.
        row_start, col_start: global node ids of the block's first row and column.
        top_values: ``[n, k]`` float32 running top-k values, descending (updated in place).
        top_indices: ``[n, k]`` int64 their column ids (updated in place).
    """
    kernel = _rows_chunk_bf16 if block.dtype == np.uint16 else _rows_chunk
    parallel_chunks(kernel, block.shape[0], block, row_start, col_start, top_values, top_indices)


@njit(nogil=True)
def _columns_chunk(start, stop, block, row_start, col_start, first_col, top_values, top_indices):
    """Columns ``first_col + start .. first_col + stop``, ``_COLUMN_CHUNK`` at a time."""
    k = top_values.shape[1]
    for c0 in range(first_col + start, first_col + stop, _COLUMN_CHUNK):
        c1 = min(first_col + stop, c0 + _COLUMN_CHUNK)
        thresholds = top_values[col_start + c0 : col_start + c1, k - 1].copy()
        for r in range(block.shape[0]):
            _offer_columns(
                block[r, c0:c1], row_start + r, col_start + c0, thresholds, top_values, top_indices
            )


@njit(nogil=True)
def _columns_chunk_bf16(
    start, stop, block, row_start, col_start, first_col, top_values, top_indices
):
    """:func:`_columns_chunk` for bfloat16 bits, widened row by row."""
    k = top_values.shape[1]
    bits = np.empty(_COLUMN_CHUNK, np.uint32)
    for c0 in range(first_col + start, first_col + stop, _COLUMN_CHUNK):
        c1 = min(first_col + stop, c0 + _COLUMN_CHUNK)
        thresholds = top_values[col_start + c0 : col_start + c1, k - 1].copy()
        for r in range(block.shape[0]):
            _widen_bf16(block[r, c0:c1], bits)
            _offer_columns(
                bits[: c1 - c0].view(np.float32),
                row_start + r,
                col_start + c0,
                thresholds,
                top_values,
                top_indices,
            )


def update_from_columns(block, row_start, col_start, first_col, top_values, top_indices) -> None:
    """Offer ``block[r, c]`` to node ``col_start + c`` as neighbour ``row_start + r``.

    Only columns ``c >= first_col`` are used: the caller skips the columns whose
    nodes already saw these pairs through :func:`update_from_rows`.

    Args: as :func:`update_from_rows`, plus ``first_col`` (local column index).
    """
    kernel = _columns_chunk_bf16 if block.dtype == np.uint16 else _columns_chunk
    parallel_chunks(
        kernel,
        block.shape[1] - first_col,
        block,
        row_start,
        col_start,
        first_col,
        top_values,
        top_indices,
        min_size=_COLUMN_CHUNK,
    )
