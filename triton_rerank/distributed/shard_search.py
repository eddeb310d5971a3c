"""Exact canonical top-k of query rows against one database shard, and the merge of
per-shard lists into the whole database's lists.

The canonical similarity (``triton_rerank/canonical.py``) is a deterministic function of
the two rows alone, so the top-k of a query over the whole database is the top-k of the
union of its per-shard top-k lists under the tie rule (descending value, equal values
by smaller global position): :func:`merge_top_k`. Positions are global: shard offset plus
row within the shard, so ties order as on one host.

:func:`shard_top_k` is certified like ``cpu/knn.py``: float32 products keep
``k + margin`` candidates per query, their canonical values are computed, and a row is
exact when its k-th canonical value is above what any left-out column can reach; other
rows (near-ties at the boundary, duplicates) are recomputed against every row of the
shard.
"""

from __future__ import annotations

import numpy as np

from .. import canonical
from ..cpu.kernels.canonical import canonical_list_values
from ..cpu.neighbour_lists import CANDIDATE_MARGIN, NeighbourLists, sorted_neighbour_lists

# Query rows per float32 product block against a shard.
QUERY_ROWS_PER_BLOCK = 2048


def _canonical_lists(queries: np.ndarray, database: np.ndarray, local: np.ndarray):
    """Canonical values of ``local [q, c]`` shard rows (-1 = none) per query."""
    values = np.empty(local.shape, dtype=np.float32)
    canonical_list_values(queries, database, np.ascontiguousarray(local), values)
    return values


def rescored_top_k(
    queries: np.ndarray, database: np.ndarray, offset: int, local: np.ndarray, k: int
):
    """Top-``k`` of searched candidates by canonical value (any search, approximate too).

    Args:
        queries: ``[q, d]`` float32 unit rows; database: ``[n, d]`` the shard's unit rows.
        offset: global position of the shard's first row.
        local: ``[q, c]`` int64 shard rows from a search (-1 = none), ``c >= k``.
        k: list length.

    Returns:
        ``(values [q, k] float32, positions [q, k] int64 global)`` by the tie rule.
    """
    values = _canonical_lists(queries, database, local)
    values, positions = sorted_neighbour_lists(values, np.where(local >= 0, local + offset, -1))
    return values[:, :k], positions[:, :k]


def shard_top_k(queries: np.ndarray, database: np.ndarray, offset: int, k: int):
    """The exact canonical top-``k`` of each query among a shard's rows.

    Args:
        queries: ``[q, d]`` float32 unit rows.
        database: ``[n, d]`` float32 unit rows of the shard.
        offset: global position of the shard's first row.
        k: list length; lists are ``-inf`` / -1 padded when ``k > n``.

    Returns:
        ``(values [q, k] float32, positions [q, k] int64)``: descending canonical
        similarity, equal values by smaller global position.
    """
    queries = np.require(queries, np.float32, ["C"])
    database = np.require(database, np.float32, ["C"])
    n_query, n = queries.shape[0], database.shape[0]
    width = min(n, k + CANDIDATE_MARGIN["fp32"])
    lists = NeighbourLists(n_query, width)
    for start in range(0, n_query, QUERY_ROWS_PER_BLOCK):
        block = queries[start : start + QUERY_ROWS_PER_BLOCK] @ database.T
        lists.offer(block, start, 0)
    values, local = sorted_neighbour_lists(
        _canonical_lists(queries, database, lists.indices), lists.indices
    )
    kept = min(k, n)
    values, local = values[:, :kept], local[:, :kept]
    if width < n:
        # a left-out column had a float32 product <= the last candidate's
        dim = canonical.checked_dim(queries.shape[1])
        norms = canonical.row_norms(queries)
        largest = float(canonical.row_norms(database).max())
        fast_error = canonical.fp32_product_error(norms, largest, dim)
        both = fast_error + canonical.canonical_error(norms, largest, dim)
        threshold = canonical.certify_threshold(lists.values[:, -1], fast_error, both - fast_error)
        for row in np.flatnonzero(~(values[:, -1] > threshold)):
            products = database @ queries[row]
            floor = np.nextafter(float(values[row, -1]) - float(both[row]), -np.inf)
            columns = np.flatnonzero(products >= floor)[None]
            row_values, row_local = sorted_neighbour_lists(
                _canonical_lists(queries[row : row + 1], database, columns), columns
            )
            values[row], local[row] = row_values[0, :kept], row_local[0, :kept]
    positions = local + offset
    if kept < k:
        pad = k - kept
        values = np.pad(values, ((0, 0), (0, pad)), constant_values=-np.inf)
        positions = np.pad(positions, ((0, 0), (0, pad)), constant_values=-1)
    return values, positions


def merge_top_k(lists, k: int):
    """Merge per-shard ``(values [q, k_s], positions [q, k_s])`` lists into the top-``k``.

    Returns:
        ``(values [q, k] float32, positions [q, k] int64)`` by the tie rule, padded with
        ``-inf`` / -1 when the shards hold fewer than k rows.
    """
    values = np.concatenate([v for v, _ in lists], axis=1)
    positions = np.concatenate([p for _, p in lists], axis=1)
    values, positions = sorted_neighbour_lists(values, positions)
    return values[:, :k], positions[:, :k]


def product_error(queries: np.ndarray, stored_norm: float, stored_shift: float, unit_norm: float):
    """``[q]`` float64: a bound on ``|f - canonical(q, j)|`` for every row j of a shard,
    where f is a float32 inner product of query q with the row as an index stores it
    (any summation order), canonical the value of the row's unit copy.

    Args:
        queries: ``[q, d]`` float32 unit rows.
        stored_norm: the largest norm of the rows as stored (rounded up).
        stored_shift: the largest ``|stored_j - unit_j|`` (rounded up).
        unit_norm: the largest norm of the unit rows (rounded up).
    """
    dim = canonical.checked_dim(queries.shape[1])
    norms = canonical.row_norms(np.asarray(queries, np.float32))
    error = (
        canonical.fp32_product_error(norms, stored_norm, dim)
        + norms * stored_shift
        + canonical.canonical_error(norms, unit_norm, dim)
    )
    return error * (1 + 1e-6)


def select_candidates(lists, errors: np.ndarray, k: int) -> list[np.ndarray]:
    """Which searched candidates can be in a query's canonical top-``k``.

    ``lists``: per shard ``(products [q, c] float32, positions [q, c] int64)`` (``-inf``
    / -1 = none); ``errors [q]``: :func:`product_error` (the largest over the shards).
    With ``p_k`` the k-th largest product of the query, at least k candidates have a
    canonical value of at least ``p_k - e``, so a candidate whose product is below
    ``p_k - 2e`` is beaten by k others: only the rest need their canonical value (the
    canonical top-k of the kept ones is that of all candidates, ties included).

    Returns:
        Per shard ``[q, c]`` int64 the positions kept (-1 elsewhere).
    """
    products = np.concatenate([p for p, _ in lists], axis=1)
    if products.shape[1] > k:
        kth = -np.partition(-products, k - 1, axis=1)[:, k - 1]
        floor = kth.astype(np.float64) - 2 * errors
        floor[~np.isfinite(kth)] = -np.inf
    else:
        floor = np.full(products.shape[0], -np.inf)
    return [np.where((p.astype(np.float64) >= floor[:, None]) & (i >= 0), i, -1) for p, i in lists]
