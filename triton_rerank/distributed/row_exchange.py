"""Sparse rows moved between shards: rows taken by node, and transposes split by owner.

A shard owns the rows of its nodes (global positions ``offset .. offset + g - 1``); the
column ids inside rows are global positions. The transpose of the rows every shard
holds (``A.T``, ``W.T``) is exchanged: each shard splits the transpose of its own rows by
the owner of the column (:func:`transpose_part`, a stable counting sort by column that
visits the rows by ascending source key), and each owner merges the parts it receives
(:func:`assemble_transpose`), so that within a row the entries are by ascending source
key (the single-host node number, or the global position), as the single-host
transpose orders them. Both are linear in the entries moved (numba loops, no sort of
the entries).
"""

from __future__ import annotations

import numpy as np

from ..cpu.kernels.jit import njit


@njit(nogil=True)
def _take(indptr, indices, values, rows, out_indptr, out_indices, out_values):
    for i in range(rows.shape[0]):
        a, b = indptr[rows[i]], indptr[rows[i] + 1]
        o = out_indptr[i]
        for p in range(b - a):
            out_indices[o + p] = indices[a + p]
            out_values[o + p] = values[a + p]


def take_rows(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, rows: np.ndarray):
    """Rows ``rows`` of a CSR matrix, concatenated.

    Args:
        indptr: ``[n + 1]`` int64; indices, values: ``[nnz]``.
        rows: ``[m]`` int64 local row ids.

    Returns:
        ``(counts [m] int64, indices [sum counts], values [sum counts])``.
    """
    indptr = np.asarray(indptr, dtype=np.int64)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    counts = indptr[rows + 1] - indptr[rows]
    out_indptr = np.zeros(rows.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=out_indptr[1:])
    out_indices = np.empty(out_indptr[-1], dtype=indices.dtype)
    out_values = np.empty(out_indptr[-1], dtype=values.dtype)
    _take(indptr, indices, values, rows, out_indptr, out_indices, out_values)
    return counts, out_indices, out_values


@njit(nogil=True)
def _scatter_by_column(
    visit, indptr, indices, values, row_offset, lo, hi, cursor, out_sources, out_values
):
    """Counting-sort scatter: the entries of rows ``visit`` (in that order) whose column
    is in ``lo .. hi - 1`` to their columns' slots (``cursor [hi - lo]``: each column's
    next free slot, advanced)."""
    for i in range(visit.shape[0]):
        row = visit[i]
        for p in range(indptr[row], indptr[row + 1]):
            column = indices[p]
            if lo <= column < hi:
                q = cursor[column - lo]
                cursor[column - lo] = q + 1
                out_sources[q] = row + row_offset
                out_values[q] = values[p]


def transpose_part(
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    row_offset: int,
    offsets: np.ndarray,
    owner: int,
    visit: np.ndarray | None = None,
):
    """The part of the transpose of one shard's rows that shard ``owner`` holds: the
    entries of the columns it owns. One part at a time, so that an exchange can move the
    parts owner by owner (what is in flight is one owner's share, not the whole
    transpose).

    Args:
        indptr: ``[g + 1]`` int64 offsets of the shard's rows; indices: ``[nnz]`` global
            column positions; values: ``[nnz]`` float32.
        row_offset: global position of the shard's first row.
        offsets: ``[T + 1]`` int64 shard boundaries (shard t owns ``offsets[t] ..
            offsets[t + 1] - 1``).
        owner: the shard t whose columns are taken.
        visit: ``[g]`` int64 the shard's local rows in the order their entries enter each
            transposed row: by ascending source key (e.g. the stable argsort of the
            shard's keys), or None for ascending position.

    Returns:
        ``(counts [g_t] int64, sources [e_t] global rows (int32 for int32 ``indices``, else
        int64), values [e_t] float32)``: the entries of the owner's columns, by column then
        by ascending source key.
    """
    g = indptr.shape[0] - 1
    lo, hi = int(offsets[owner]), int(offsets[owner + 1])
    indices = np.asarray(indices)
    inside = indices[(indices >= lo) & (indices < hi)]
    counts = np.bincount(inside - lo, minlength=hi - lo).astype(np.int64)
    del inside
    cursor = np.zeros(hi - lo, dtype=np.int64)
    np.cumsum(counts[:-1], out=cursor[1:])
    if visit is None:
        visit = np.arange(g, dtype=np.int64)
    # int32 sources for int32 rows (the rounds' rows; every position fits: G < 2^31)
    total = int(counts.sum())
    sources = np.empty(total, dtype=np.int32 if indices.dtype == np.int32 else np.int64)
    out_values = np.empty(total, dtype=np.float32)
    _scatter_by_column(
        visit,
        np.asarray(indptr, dtype=np.int64),
        indices,
        np.asarray(values, dtype=np.float32),
        np.int64(row_offset),
        np.int64(lo),
        np.int64(hi),
        cursor,
        sources,
        out_values,
    )
    return counts, sources, out_values


@njit(nogil=True)
def _place_part(part_counts, sources, part_values, cursor, out_indices, out_values):
    """Append row n's run of one part at ``cursor[n]`` (advanced) for every row n."""
    p = 0
    for n in range(part_counts.shape[0]):
        o = cursor[n]
        for e in range(part_counts[n]):
            out_indices[o + e] = sources[p]
            out_values[o + e] = part_values[p]
            p += 1
        cursor[n] = o + part_counts[n]


@njit(nogil=True)
def _sort_rows_by_key(indptr, keys, indices, values):
    """Each row's entries by ascending ``keys`` of their column id (keys distinct)."""
    for n in range(indptr.shape[0] - 1):
        lo, hi = indptr[n], indptr[n + 1]
        if hi - lo < 2:
            continue
        row_keys = np.empty(hi - lo, dtype=np.int64)
        for p in range(lo, hi):
            row_keys[p - lo] = keys[indices[p]]
        order = np.argsort(row_keys)
        row_indices = indices[lo:hi].copy()
        row_values = values[lo:hi].copy()
        for p in range(hi - lo):
            indices[lo + p] = row_indices[order[p]]
            values[lo + p] = row_values[order[p]]


def assemble_transpose(parts, index_dtype=np.int64, source_keys: np.ndarray | None = None):
    """Rows of the transpose owned by one shard, from the parts of every shard.

    Args:
        parts: the part for this shard from each shard, in shard order (see
            :func:`transpose_part`).
        index_dtype: dtype of the output column ids.
        source_keys: ``[G]`` int64 the order of sources within a row, the one the parts'
            ``visit`` followed (None: positions).

    Returns:
        ``(indptr [g + 1] int64, indices [nnz], values [nnz] float32)``: row n holds
        the entries of every part for n, by ascending source key. Each part is copied
        into place in turn (no concatenation of the parts).
    """
    g = parts[0][0].shape[0]
    totals = np.zeros(g, dtype=np.int64)
    for part_counts, _, _ in parts:
        totals += part_counts
    indptr = np.zeros(g + 1, dtype=np.int64)
    np.cumsum(totals, out=indptr[1:])
    del totals
    indices = np.empty(indptr[-1], dtype=index_dtype)
    values = np.empty(indptr[-1], dtype=np.float32)
    cursor = indptr[:-1].copy()
    for part_counts, sources, part_values in parts:
        _place_part(
            np.asarray(part_counts, dtype=np.int64),
            sources,
            np.asarray(part_values, dtype=np.float32),
            cursor,
            indices,
            values,
        )
    if source_keys is not None and len(parts) > 1:  # merge the parts' runs by key
        _sort_rows_by_key(indptr, np.asarray(source_keys, dtype=np.int64), indices, values)
    return indptr, indices, values
