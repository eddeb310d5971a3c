"""Canonical similarities on the CPU (defined in ``triton_rerank/canonical.py``): float64
sums of the exact float32 products in order k = 0, 1, ..., d-1, rounded to float32.

Three kernels use them, all parallel over rows:

- :func:`rescore_candidates`: the canonical values of each row's fast-pass candidates
  (those that can still reach its top-k), sorted by the tie rule, and whether the row's
  top-k is certified;
- :func:`canonical_topk_above`: the canonical top-k of rows the certificate could not
  prove, over the columns whose fast value is above a per-row threshold;
- :func:`offer_to_columns`: like the previous one, but for the columns of a block (the
  database nodes of a query batch, whose own lists are known);

and :func:`canonical_list_values` gives the values of given neighbour lists.

Nothing here may be compiled with ``fastmath``: the order of the sums is the definition.
"""

from __future__ import annotations

import numpy as np

from .jit import njit, parallel_chunks
from .knn_select import before, insert


@njit()
def canonical_dot(x, y):
    """The canonical similarity of two float32 rows of equal length."""
    total = 0.0
    for k in range(x.shape[0]):
        total += np.float64(x[k]) * np.float64(y[k])
    return np.float32(total)


@njit()
def _canonical_dots(x, nodes, columns, out):
    """``out[c] = canonical_dot(x, nodes[columns[c]])``, eight rows at a time: eight
    independent sums (each still in order k) hide the latency of the additions."""
    n = columns.shape[0]
    dim = x.shape[0]
    c = 0
    while c + 8 <= n:
        y0, y1, y2, y3 = (
            nodes[columns[c]],
            nodes[columns[c + 1]],
            nodes[columns[c + 2]],
            nodes[columns[c + 3]],
        )
        y4, y5, y6, y7 = (
            nodes[columns[c + 4]],
            nodes[columns[c + 5]],
            nodes[columns[c + 6]],
            nodes[columns[c + 7]],
        )
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
        for k in range(dim):
            xk = np.float64(x[k])
            s0 += xk * np.float64(y0[k])
            s1 += xk * np.float64(y1[k])
            s2 += xk * np.float64(y2[k])
            s3 += xk * np.float64(y3[k])
            s4 += xk * np.float64(y4[k])
            s5 += xk * np.float64(y5[k])
            s6 += xk * np.float64(y6[k])
            s7 += xk * np.float64(y7[k])
        out[c], out[c + 1], out[c + 2], out[c + 3] = (
            np.float32(s0),
            np.float32(s1),
            np.float32(s2),
            np.float32(s3),
        )
        out[c + 4], out[c + 5], out[c + 6], out[c + 7] = (
            np.float32(s4),
            np.float32(s5),
            np.float32(s6),
            np.float32(s7),
        )
        c += 8
    while c < n:
        out[c] = canonical_dot(x, nodes[columns[c]])
        c += 1


# Columns of a block that offer_to_columns reads along at a time.
_COLUMN_CHUNK = 256


@njit()
def fast_value_bound(fast, relative, added):
    """The most a canonical value can be when the fast pass gave ``fast``: ``fast +
    relative |fast| + added`` in float64, rounded up past that sum's own error."""
    f = np.float64(fast)
    bound = f + abs(f) * relative + added
    return bound + 2.0**-50 * (abs(f) + added) + 2.0**-1000


@njit(nogil=True)
def _rescore_chunk(
    start,
    stop,
    nodes,
    rows,
    candidates,
    fast_values,
    relative,
    added,
    thresholds,
    out_values,
    out_indices,
    certified,
):
    n_cand = candidates.shape[1]
    k = out_values.shape[1]
    scores = np.empty(n_cand, np.float32)
    for i in range(start, stop):
        x = nodes[rows[i]]
        values, indices = out_values[i], out_indices[i]
        values[:] = -np.inf
        indices[:] = -1
        c = 0
        while c < n_cand:
            # candidates come by descending fast value: once even the best remaining one
            # cannot reach the k-th canonical value found so far, none can
            if indices[k - 1] >= 0 and fast_value_bound(
                fast_values[i, c], relative[i], added[i]
            ) < np.float64(values[k - 1]):
                break
            group = min(n_cand, c + 8)
            _canonical_dots(x, nodes, candidates[i, c:group], scores[c:group])
            for t in range(c, group):
                if before(scores[t], candidates[i, t], values[k - 1], indices[k - 1]):
                    insert(values, indices, scores[t], candidates[i, t])
            c = group
        certified[i] = np.float64(values[k - 1]) > thresholds[i]


def rescore_candidates(
    nodes,
    rows,
    candidates,
    fast_values,
    relative,
    added,
    thresholds,
    out_values,
    out_indices,
    certified,
) -> None:
    """Canonical top-k of each row among its candidates, and the certificate.

    Args:
        nodes: ``[N, d]`` float32 rows.
        rows: ``[r]`` int64 node of each row of ``candidates``.
        candidates: ``[r, c]`` int64 column ids from the fast pass (all valid, distinct),
            by descending fast value.
        fast_values: ``[r, c]`` float32 their fast values (descending per row).
        relative, added: ``[r]`` float64: a candidate whose fast value is ``f`` has a
            canonical value at most ``f + relative |f| + added`` (the fast pass's error and
            the canonical one); candidates that cannot reach the k-th canonical value found
            so far are not computed.
        thresholds: ``[r]`` float64: the row is certified when its k-th canonical value is
            above this (``-inf`` when the candidates are all the columns).
        out_values: ``[r, k]`` float32 output, descending; out_indices ``[r, k]`` int64,
            equal values by smaller column.
        certified: ``[r]`` bool output.
    """
    parallel_chunks(
        _rescore_chunk,
        rows.shape[0],
        nodes,
        rows,
        candidates,
        fast_values,
        relative,
        added,
        thresholds,
        out_values,
        out_indices,
        certified,
    )


@njit(nogil=True)
def _topk_above_chunk(start, stop, nodes, rows, block, thresholds, out_values, out_indices):
    k = out_values.shape[1]
    for i in range(start, stop):
        x = nodes[rows[i]]
        values, indices = out_values[i], out_indices[i]
        values[:] = -np.inf
        indices[:] = -1
        for j in range(block.shape[1]):
            if np.float64(block[i, j]) >= thresholds[i]:
                v = canonical_dot(x, nodes[j])
                if before(v, j, values[k - 1], indices[k - 1]):
                    insert(values, indices, v, j)


def canonical_topk_above(nodes, rows, block, thresholds, out_values, out_indices) -> None:
    """Canonical top-k of each row over the columns whose fast value is high enough.

    Args:
        nodes: ``[N, d]`` float32 rows.
        rows: ``[r]`` int64 node of each row of ``block``.
        block: ``[r, N]`` float32 fast-pass values of those rows against every node.
        thresholds: ``[r]`` float64: columns whose block value is below are left out (they
            cannot reach the top-k canonically).
        out_values, out_indices: ``[r, k]`` outputs (descending, ties by smaller column).
    """
    parallel_chunks(
        _topk_above_chunk, rows.shape[0], nodes, rows, block, thresholds, out_values, out_indices
    )


@njit(nogil=True)
def _offer_chunk(
    start, stop, nodes, row_start, col_start, block, thresholds, top_values, top_indices
):
    k = top_values.shape[1]
    for c0 in range(start, stop, _COLUMN_CHUNK):
        _offer_column_chunk(
            c0,
            min(stop, c0 + _COLUMN_CHUNK),
            nodes,
            row_start,
            col_start,
            block,
            thresholds,
            top_values,
            top_indices,
            k,
        )


@njit(nogil=True)
def _offer_column_chunk(
    c0, c1, nodes, row_start, col_start, block, thresholds, top_values, top_indices, k
):
    for r in range(block.shape[0]):
        for c in range(c0, c1):
            if np.float64(block[r, c]) >= thresholds[c]:
                node = col_start + c
                v = canonical_dot(nodes[row_start + r], nodes[node])
                if before(v, row_start + r, top_values[node, k - 1], top_indices[node, k - 1]):
                    insert(top_values[node], top_indices[node], v, row_start + r)


def offer_to_columns(
    nodes, row_start, col_start, block, thresholds, top_values, top_indices
) -> None:
    """Offer the rows of a block to the lists of its columns, canonically.

    Column ``c`` is node ``col_start + c`` with a canonical sorted list (``top_values``,
    ``top_indices``); row ``r`` is node ``row_start + r``. Entries whose block value is at
    least ``thresholds[c]`` get their canonical value and are offered to the column's list
    (the others cannot enter it).

    Args:
        nodes: ``[N, d]`` float32 rows.
        block: ``[b, m]`` float32 fast-pass values.
        thresholds: ``[m]`` float64.
        top_values, top_indices: ``[N, k]`` lists (updated in place for the block's columns).
    """
    parallel_chunks(
        _offer_chunk,
        block.shape[1],
        nodes,
        row_start,
        col_start,
        block,
        thresholds,
        top_values,
        top_indices,
        min_size=_COLUMN_CHUNK,
    )


@njit(nogil=True)
def _list_values_chunk(start, stop, x, y, columns, out):
    for i in range(start, stop):
        for t in range(columns.shape[1]):
            j = columns[i, t]
            out[i, t] = canonical_dot(x[i], y[j]) if j >= 0 else -np.inf


def canonical_list_values(x, y, columns, out) -> None:
    """``out[i, t] = canonical_dot(x[i], y[columns[i, t]])``, or ``-inf`` where
    ``columns[i, t] < 0`` (``[r, t]`` lists of neighbour ids)."""
    parallel_chunks(_list_values_chunk, columns.shape[0], x, y, columns, out)


@njit(nogil=True)
def _rounding_norms_chunk(start, stop, x, low_bits, norms, rounded_norms, error_norms):
    for i in range(start, stop):
        plain = rounded = error = 0.0
        for k in range(x.shape[1]):
            value = np.float64(x[i, k])
            # a bfloat16 is the top half of a float32
            bits = np.uint32(np.uint32(low_bits[i, k]) << np.uint32(16))
            low = np.float64(bits.view(np.float32))
            plain += value * value
            rounded += low * low
            error += (low - value) * (low - value)  # low - value is exact in float64
        norms[i], rounded_norms[i], error_norms[i] = (
            np.sqrt(plain),
            np.sqrt(rounded),
            np.sqrt(error),
        )


def rounding_norms(x: np.ndarray, low_bits: np.ndarray):
    """The float64 row norms of float32 rows ``x [n, d]``, of their bfloat16 copy (raw
    bits ``low_bits [n, d]`` uint16) and of the rounding ``bf16(x) - x``, in one pass (what
    ``canonical.row_norms`` and ``canonical.bf16_rounding`` compute with torch, before
    their rounding-up factor).

    Returns:
        ``(norms [n], rounded_norms [n], error_norms [n])`` float64.
    """
    n = x.shape[0]
    norms, rounded_norms, error_norms = (np.empty(n, np.float64) for _ in range(3))
    parallel_chunks(_rounding_norms_chunk, n, x, low_bits, norms, rounded_norms, error_norms)
    return norms, rounded_norms, error_norms
