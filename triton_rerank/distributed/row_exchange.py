"""Sparse rows moved between shards: rows taken by node, and transposes split by owner.

A shard owns the rows of its nodes (global positions ``offset .. offset + g - 1``); the
column ids inside rows are global positions. The transpose of the rows every shard
holds (``A.T``, ``W.T``) is exchanged: each shard splits the transpose of its own rows by
the owner of the column (:func:`transpose_parts`), and each owner concatenates the
parts it receives in shard order (:func:`assemble_transpose`), so that within a row the
entries are by ascending global source, as the single-host transpose orders them.
"""

from __future__ import annotations

import numpy as np


def take_rows(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, rows: np.ndarray):
    """Rows ``rows`` of a CSR matrix, concatenated.

    Args:
        indptr: ``[n + 1]`` int64; indices, values: ``[nnz]``.
        rows: ``[m]`` int64 local row ids.

    Returns:
        ``(counts [m] int64, indices [sum counts], values [sum counts])``.
    """
    starts, stops = indptr[rows], indptr[rows + 1]
    counts = stops - starts
    total = int(counts.sum())
    # entry e of the output comes from starts[row of e] + its rank within the row
    row_of = np.repeat(np.arange(rows.shape[0]), counts)
    first = np.cumsum(counts) - counts
    source = starts[row_of] + np.arange(total, dtype=np.int64) - first[row_of]
    return counts, indices[source], values[source]


def transpose_parts(
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    row_offset: int,
    offsets: np.ndarray,
    source_keys: np.ndarray | None = None,
):
    """The transpose of one shard's rows, split by the shard owning each column.

    Args:
        indptr: ``[g + 1]`` int64 offsets of the shard's rows; indices: ``[nnz]`` global
            column positions; values: ``[nnz]`` float32.
        row_offset: global position of the shard's first row.
        offsets: ``[T + 1]`` int64 shard boundaries (shard t owns ``offsets[t] ..
            offsets[t + 1] - 1``).
        source_keys: ``[G]`` int64 the order of sources within a row (None: positions).

    Returns:
        A list of T parts ``(counts [g_t] int64, sources [e_t] int64 global rows,
        values [e_t] float32)``: part t holds the entries of columns shard t owns, by
        column then by ascending source key.
    """
    counts = np.diff(indptr)
    sources = np.repeat(np.arange(counts.shape[0], dtype=np.int64) + row_offset, counts)
    columns = np.asarray(indices, dtype=np.int64)
    if source_keys is None:
        order = np.argsort(columns, kind="stable")  # entries are by source already
    else:
        order = np.lexsort((source_keys[sources], columns))
    columns, sources, values = columns[order], sources[order], values[order]
    bounds = np.searchsorted(columns, offsets)
    parts = []
    for t in range(offsets.shape[0] - 1):
        lo, hi = bounds[t], bounds[t + 1]
        size = int(offsets[t + 1] - offsets[t])
        per_column = np.bincount(columns[lo:hi] - offsets[t], minlength=size).astype(np.int64)
        parts.append((per_column, sources[lo:hi], np.ascontiguousarray(values[lo:hi])))
    return parts


def assemble_transpose(parts, index_dtype=np.int64, source_keys: np.ndarray | None = None):
    """Rows of the transpose owned by one shard, from the parts of every shard.

    Args:
        parts: the part for this shard from each shard, in shard order (see
            :func:`transpose_parts`).
        index_dtype: dtype of the output column ids.
        source_keys: as :func:`transpose_parts` (the parts' order).

    Returns:
        ``(indptr [g + 1] int64, indices [nnz], values [nnz] float32)``: row n holds
        the entries of every part for n, by ascending source key.
    """
    counts = np.stack([p[0] for p in parts])  # [T, g]
    g = counts.shape[1]
    indptr = np.zeros(g + 1, dtype=np.int64)
    np.cumsum(counts.sum(axis=0), out=indptr[1:])
    indices = np.empty(indptr[-1], dtype=index_dtype)
    values = np.empty(indptr[-1], dtype=np.float32)
    before = np.cumsum(counts, axis=0) - counts  # entries of earlier parts per row
    for s, (part_counts, sources, part_values) in enumerate(parts):
        row_of = np.repeat(np.arange(g), part_counts)
        rank = (
            np.arange(sources.shape[0], dtype=np.int64)
            - (np.cumsum(part_counts) - part_counts)[row_of]
        )
        where = indptr[row_of] + before[s][row_of] + rank
        indices[where] = sources
        values[where] = part_values
    if source_keys is not None and len(parts) > 1:  # merge the parts' runs by key
        row_of = np.repeat(np.arange(g), np.diff(indptr))
        order = np.lexsort((source_keys[indices], row_of))
        indices, values = indices[order], values[order]
    return indptr, indices, values
