"""The k-reciprocal Jaccard distance on sparse rows (``triton_rerank/clustering/jaccard.py``).

Each step is a kernel over chunks of rows run by
:func:`~triton_rerank.cpu.kernels.jit.parallel_chunks`; a step whose rows have no fixed
length runs twice, a ``fill=False`` pass that counts each row's entries and a
``fill=True`` pass that writes them into the CSR arrays the counts size (the same
arithmetic both times). Every output row has its columns ascending. Values are float64.

- :func:`reciprocal_lists`: the k-reciprocal neighbours of every node;
- :func:`expanded_weights`: each node's expanded k-reciprocal set and its weights
  ``V [N, N]`` (CSR);
- :func:`query_expansion`: ``V_qe[i] = mean of V over the k2 nearest neighbours of i``;
- :func:`jaccard_upper`: ``m_ij = sum_k min(V[i, k], V[j, k])`` for every ``j > i`` that
  shares a column with ``i``, through the inverted index of ``V`` (its transpose), kept as
  ``d_ij = max(0, 1 - m_ij / (2 - m_ij))`` (float32) where ``d_ij < max_distance``;
- :func:`symmetric_rows`: the full matrix from that upper triangle, its transpose and the
  diagonal.

Nothing here may be compiled with ``fastmath``: the order of the sums is part of the
result (each sum runs in ascending column order, or neighbour order for the query
expansion).
"""

from __future__ import annotations

import numpy as np

from .canonical import canonical_dot
from .jit import njit, parallel_chunks
from .transpose import transpose

# Rows per parallel chunk (at least): each chunk allocates scratch rows of N entries.
_MIN_ROWS_PER_CHUNK = 64


@njit(nogil=True)
def _reciprocal_chunk(start, stop, ranks, k, out, counts):
    for i in range(start, stop):
        c = 0
        for t in range(k):
            j = ranks[i, t]
            for s in range(k):
                if ranks[j, s] == i:
                    out[i, c] = j
                    c += 1
                    break
        counts[i] = c


def reciprocal_lists(ranks: np.ndarray, k: int):
    """The k-reciprocal neighbours of every node: the ``j`` among the first ``k`` of
    ``ranks[i]`` whose own first ``k`` contain ``i``.

    Args:
        ranks: ``[N, >= k]`` int64 neighbour lists, nearest first.
        k: list length used, ``1 <= k <= ranks.shape[1]``.

    Returns:
        ``(lists [N, k] int64, counts [N] int64)``: row ``i`` holds its ``counts[i]``
        reciprocal neighbours first, in the order of ``ranks[i]``.
    """
    n = ranks.shape[0]
    out = np.full((n, k), -1, dtype=np.int64)
    counts = np.zeros(n, dtype=np.int64)
    parallel_chunks(_reciprocal_chunk, n, ranks, k, out, counts, min_size=_MIN_ROWS_PER_CHUNK)
    return out, counts


@njit(nogil=True)
def _expansion_chunk(
    start,
    stop,
    fill,
    recip,
    recip_counts,
    half,
    half_counts,
    ranks,
    sims,
    nodes,
    counts,
    out_indptr,
    out_cols,
    out_vals,
):
    n = ranks.shape[0]
    in_recip = np.full(n, -1, dtype=np.int64)  # == i: j is a k1-reciprocal neighbour of i
    in_set = np.full(n, -1, dtype=np.int64)  # == i: j is in the expanded set of i
    list_pos = np.full(n, -1, dtype=np.int64)  # position of j in ranks[i] (valid if owner)
    list_owner = np.full(n, -1, dtype=np.int64)
    members = np.empty(n, dtype=np.int64)
    for i in range(start, stop):
        size = 0
        for t in range(recip_counts[i]):
            j = recip[i, t]
            in_recip[j] = i
            if in_set[j] != i:
                in_set[j] = i
                members[size] = j
                size += 1
        for t in range(recip_counts[i]):
            candidate = recip[i, t]
            h = half_counts[candidate]
            shared = 0
            for s in range(h):
                if in_recip[half[candidate, s]] == i:
                    shared += 1
            # the published rule, in float64: |H & R(i)| > 2/3 |H|
            if shared > (2.0 / 3.0) * h:
                for s in range(h):
                    j = half[candidate, s]
                    if in_set[j] != i:
                        in_set[j] = i
                        members[size] = j
                        size += 1
        if not fill:
            counts[i] = size
            continue
        begin = out_indptr[i]
        cols = out_cols[begin : begin + size]
        cols[:] = np.sort(members[:size])
        for t in range(ranks.shape[1]):
            list_pos[ranks[i, t]] = t
            list_owner[ranks[i, t]] = i
        # distances 2 - 2 c(i, j) on unit rows, then softmax(-distance) over the set
        vals = out_vals[begin : begin + size]
        smallest = np.inf
        for p in range(size):
            j = cols[p]
            if list_owner[j] == i:
                sim = sims[i, list_pos[j]]
            else:
                sim = canonical_dot(nodes[i], nodes[j])
            vals[p] = 2.0 - 2.0 * np.float64(sim)
            smallest = min(smallest, vals[p])
        total = 0.0
        for p in range(size):
            vals[p] = np.exp(smallest - vals[p])
            total += vals[p]
        for p in range(size):
            vals[p] /= total


def expanded_weights(ranks, sims, nodes, k1: int):
    """``V [N, N]`` as CSR: row ``i`` has the expanded k-reciprocal set ``E(i)`` of node
    ``i`` as support, with weights ``softmax(-(2 - 2 c(i, j)))`` over ``j`` in ``E(i)``.

    ``E(i)`` is the set ``R(i)`` of ``i``'s k1-reciprocal neighbours, plus, for every
    ``c`` in ``R(i)``, the set ``H(c)`` of ``c``'s ``round(k1 / 2)``-reciprocal neighbours
    (lists of ``round(k1 / 2) + 1``; numpy's rounding, half to even) when more than
    two thirds of ``H(c)`` is in ``R(i)``.

    Args:
        ranks: ``[N, k1]`` int64 kNN lists (self included), nearest first.
        sims: ``[N, k1]`` float32 similarities of ``ranks``.
        nodes: ``[N, d]`` float32 unit rows (for the similarities of ``E(i)`` outside
            ``ranks[i]``, computed canonically).
        k1: the list length.

    Returns:
        ``(indptr [N + 1] int64, columns [nnz] int64, values [nnz] float64)``; each row
        ascending by column and summing to 1 (or empty: a node in no reciprocal list,
        not even its own).
    """
    n = ranks.shape[0]
    half_k = int(np.around(k1 / 2))
    recip, recip_counts = reciprocal_lists(ranks, k1)
    half, half_counts = reciprocal_lists(ranks, half_k + 1)
    args = (recip, recip_counts, half, half_counts, ranks, sims, nodes)
    return _count_then_fill(_expansion_chunk, n, args, np.float64)


@njit(nogil=True)
def _query_expansion_chunk(
    start, stop, fill, ranks, k2, indptr, cols, vals, counts, out_indptr, out_cols, out_vals
):
    n = ranks.shape[0]
    acc = np.zeros(n if fill else 0, dtype=np.float64)
    seen = np.full(n, -1, dtype=np.int64)
    touched = np.empty(n, dtype=np.int64)
    for i in range(start, stop):
        size = 0
        for t in range(k2):
            a = ranks[i, t]
            for p in range(indptr[a], indptr[a + 1]):
                col = cols[p]
                if seen[col] != i:
                    seen[col] = i
                    touched[size] = col
                    size += 1
                    if fill:
                        acc[col] = 0.0
                if fill:
                    acc[col] += vals[p]
        if not fill:
            counts[i] = size
            continue
        begin = out_indptr[i]
        row_cols = out_cols[begin : begin + size]
        row_cols[:] = np.sort(touched[:size])
        for p in range(size):
            out_vals[begin + p] = acc[row_cols[p]] / k2


def query_expansion(ranks, k2: int, indptr, cols, vals):
    """``V_qe[i] = (V[ranks[i, 0]] + ... + V[ranks[i, k2 - 1]]) / k2`` as CSR.

    Args:
        ranks: ``[N, >= k2]`` int64 kNN lists, nearest first.
        k2: neighbours averaged.
        indptr, cols, vals: ``V`` as from :func:`expanded_weights`.

    Returns:
        ``(indptr [N + 1], columns [nnz], values [nnz] float64)``, rows ascending by
        column; every entry is a sum over ``t`` in order, then divided by ``k2``.
    """
    args = (ranks, k2, indptr, cols, vals)
    return _count_then_fill(_query_expansion_chunk, ranks.shape[0], args, np.float64)


@njit(nogil=True)
def _jaccard_chunk(
    start,
    stop,
    fill,
    indptr,
    cols,
    vals,
    inv_indptr,
    inv_rows,
    inv_vals,
    max_distance,
    counts,
    out_indptr,
    out_cols,
    out_vals,
):
    n = indptr.shape[0] - 1
    acc = np.zeros(n, dtype=np.float64)
    seen = np.full(n, -1, dtype=np.int64)
    touched = np.empty(n, dtype=np.int64)
    kept = np.empty(n, dtype=np.int64)
    for i in range(start, stop):
        n_touched = 0
        for p in range(indptr[i], indptr[i + 1]):  # columns k of row i, ascending
            k = cols[p]
            v_ik = vals[p]
            lo, hi = inv_indptr[k], inv_indptr[k + 1]
            # rows holding column k, ascending: only those after i
            first = lo + np.searchsorted(inv_rows[lo:hi], i, side="right")
            for q in range(first, hi):
                j = inv_rows[q]
                if seen[j] != i:
                    seen[j] = i
                    acc[j] = 0.0
                    touched[n_touched] = j
                    n_touched += 1
                acc[j] += min(v_ik, inv_vals[q])
        n_kept = 0
        for t in range(n_touched):
            j = touched[t]
            m = acc[j]
            d = np.float32(max(0.0, 1.0 - m / (2.0 - m)))
            acc[j] = d
            if d < max_distance:
                kept[n_kept] = j
                n_kept += 1
        if not fill:
            counts[i] = n_kept
            continue
        begin = out_indptr[i]
        row_cols = out_cols[begin : begin + n_kept]
        row_cols[:] = np.sort(kept[:n_kept])
        for p in range(n_kept):
            out_vals[begin + p] = acc[row_cols[p]]


def jaccard_upper(indptr, cols, vals, max_distance: float):
    """The strict upper triangle of the Jaccard distance of the rows of ``V`` (CSR),
    only the pairs with ``d < max_distance``.

    ``m_ij = sum over columns k of min(V[i, k], V[j, k])`` (ascending ``k``, float64),
    ``d_ij = float32(max(0, 1 - m_ij / (2 - m_ij)))``. Pairs that share no column have
    ``d = 1`` and are never visited: row ``i`` walks its columns' inverted lists, so its
    cost is the number of (column, row) pairs it shares, not ``N``.

    Returns:
        ``(indptr [N + 1], columns [nnz] int64, values [nnz] float32)``, only columns
        ``j > i``, ascending.
    """
    n = indptr.shape[0] - 1
    inv_rows = np.empty_like(cols)
    inv_vals = np.empty_like(vals)
    inv_indptr = transpose(indptr, cols, vals, n, inv_rows, inv_vals)
    args = (indptr, cols, vals, inv_indptr, inv_rows, inv_vals, float(max_distance))
    return _count_then_fill(_jaccard_chunk, n, args, np.float32)


@njit(nogil=True)
def _symmetric_chunk(
    start, stop, up_indptr, up_cols, up_vals, lo_indptr, lo_cols, lo_vals, diagonal, out_indptr,
    out_cols, out_vals
):  # fmt: skip
    for i in range(start, stop):
        o = out_indptr[i]
        for p in range(lo_indptr[i], lo_indptr[i + 1]):  # columns j < i, ascending
            out_cols[o] = lo_cols[p]
            out_vals[o] = lo_vals[p]
            o += 1
        out_cols[o] = i
        out_vals[o] = diagonal[i]
        o += 1
        for p in range(up_indptr[i], up_indptr[i + 1]):  # columns j > i, ascending
            out_cols[o] = up_cols[p]
            out_vals[o] = up_vals[p]
            o += 1


def symmetric_rows(up_indptr, up_cols, up_vals, diagonal):
    """The symmetric matrix with strict upper triangle ``up`` (CSR) and ``diagonal``.

    Args:
        up_indptr, up_cols, up_vals: as from :func:`jaccard_upper`.
        diagonal: ``[N]`` float32, stored for every row (zeros included).

    Returns:
        ``(indptr [N + 1] int64, columns [nnz] int64, values [nnz] float32)``, every row
        ascending by column, its diagonal entry always present.
    """
    n = up_indptr.shape[0] - 1
    lo_cols = np.empty_like(up_cols)
    lo_vals = np.empty_like(up_vals)
    lo_indptr = transpose(up_indptr, up_cols, up_vals, n, lo_cols, lo_vals)
    counts = np.diff(up_indptr) + np.diff(lo_indptr) + 1
    out_indptr = _indptr(counts)
    out_cols = np.empty(out_indptr[-1], dtype=np.int64)
    out_vals = np.empty(out_indptr[-1], dtype=np.float32)
    parallel_chunks(
        _symmetric_chunk,
        n,
        up_indptr,
        up_cols,
        up_vals,
        lo_indptr,
        lo_cols,
        lo_vals,
        diagonal,
        out_indptr,
        out_cols,
        out_vals,
        min_size=_MIN_ROWS_PER_CHUNK,
    )
    return out_indptr, out_cols, out_vals


def _count_then_fill(chunk, n: int, args: tuple, value_dtype):
    """CSR rows of variable length from a two-pass row kernel
    ``chunk(start, stop, fill, *args, counts, indptr, cols, vals)``: a counting pass
    (``fill`` False: writes ``counts[i]``), then a filling pass into the allocated arrays.

    Returns:
        ``(indptr [n + 1] int64, columns [nnz] int64, values [nnz] value_dtype)``.
    """
    counts = np.zeros(n, dtype=np.int64)
    empty_i, empty_v = np.zeros(1, np.int64), np.zeros(1, value_dtype)
    parallel_chunks(
        chunk, n, False, *args, counts, empty_i, empty_i, empty_v, min_size=_MIN_ROWS_PER_CHUNK
    )
    indptr = _indptr(counts)
    cols = np.empty(indptr[-1], dtype=np.int64)
    vals = np.empty(indptr[-1], dtype=value_dtype)
    parallel_chunks(chunk, n, True, *args, counts, indptr, cols, vals, min_size=_MIN_ROWS_PER_CHUNK)
    return indptr, cols, vals


def _indptr(counts: np.ndarray) -> np.ndarray:
    indptr = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr
