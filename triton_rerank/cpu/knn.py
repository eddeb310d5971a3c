"""Exact kNN graph of the nodes ``U = [Xq; Xg]`` on the CPU (step 1 of the algorithm).

The lists are those of the canonical similarities (``triton_rerank/canonical.py``): per
row the k largest values, equal values by smaller column. They are found in three steps:

1. **Fast pass.** ``U @ U.T`` is never held whole: it is computed one row strip at a time,
   and only the upper triangle (rows ``a:b`` against columns ``a:``), since the matrix is
   symmetric. Each block is offered to its rows and, for the columns right of the strip's
   diagonal block, to those columns' nodes, so every node sees every column exactly once;
   each node keeps its best ``k + margin`` candidates. The products are bfloat16 where the
   CPU multiplies bfloat16 natively, float32 elsewhere (``cpu/knn_precision.py``).
2. **Certificate.** The candidates' canonical values are computed (``cpu/kernels/canonical.py``)
   and sorted by the tie rule. A column that is not a candidate scored at most ``a`` (the
   last candidate's fast value), so at most ``a + fast error + canonical error``
   canonically; a row whose k-th canonical value is above that is exact.
3. **Close calls** (rows the bound cannot prove: near-ties at the boundary, exact
   duplicates) are recomputed: a float32 product of the row against every node, and the
   canonical value of each column that is within the error bound of the row's k-th value.
   Identical rows have identical lists, so each distinct row is recomputed once.

The query-gallery block ``Xq @ Xg.T`` is also the base similarity of the final score (the
``lamb`` term). When asked, query strips are float32 products that write their gallery
columns straight into that ``[q, g]`` matrix (so the base does not depend on the fast
pass). Gallery strips run first and borrow the same memory as their strip buffer when it
is large enough, so the kNN step holds one large buffer, not two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import canonical, limits
from .kernels.canonical import (
    canonical_topk_above,
    offer_to_columns,
    rescore_candidates,
    rounding_norms,
)
from .knn_precision import knn_precision
from .neighbour_lists import CANDIDATE_MARGIN, NeighbourLists


@dataclass(frozen=True)
class ProductErrors:
    """How far a fast product of two rows of ``nodes`` can be from their inner product,
    and the canonical value too: ``[N]`` float64 bounds per row (over every column).

    Attributes:
        fp32: of a float32 product.
        bf16: of the float32 sum of bfloat16 products (before the output rounding), or
            None when there is no bfloat16 copy.
        canonical: of the canonical value.
    """

    fp32: torch.Tensor
    bf16: torch.Tensor | None
    canonical: torch.Tensor

    @classmethod
    def of(cls, nodes: torch.Tensor, rounding=None, norms: torch.Tensor | None = None):
        """The bounds for ``nodes [N, d]`` (float32), and for a bfloat16 copy when
        ``rounding`` (from :func:`canonical.bf16_rounding` or :func:`bf16_copy`) is given;
        ``norms``: the rows' norms as :func:`canonical.row_norms` gives them, if known."""
        dim = canonical.checked_dim(nodes.shape[1])
        norms = canonical.row_norms(nodes) if norms is None else norms
        largest = float(norms.max())
        bf16 = None
        if rounding is not None:
            _, rounded_norms, error_norms = rounding
            bf16 = canonical.bf16_product_error(norms, rounded_norms, error_norms, dim)
        return cls(
            canonical.fp32_product_error(norms, largest, dim),
            bf16,
            canonical.canonical_error(norms, largest, dim),
        )


def bf16_copy(nodes: torch.Tensor):
    """:func:`canonical.bf16_rounding` of ``nodes [N, d]`` (float32 CPU tensor) and
    :func:`canonical.row_norms`, from one pass over the rows (``cpu/kernels/canonical.py``).

    Returns:
        ``((x_bf16, rounded_norms, error_norms), norms)``, as those two functions.
    """
    x_bf16 = nodes.to(torch.bfloat16)
    low_bits = x_bf16.view(torch.int16).numpy().view(np.uint16)
    scale = canonical.norm_slack(nodes.shape[1])  # rounds each norm up past its error
    norms, rounded_norms, error_norms = (
        torch.from_numpy(v * scale) for v in rounding_norms(nodes.numpy(), low_bits)
    )
    return (x_bf16, rounded_norms, error_norms), norms


def _strips(start: int, stop: int, rows_per_strip: int):
    return [(a, min(stop, a + rows_per_strip)) for a in range(start, stop, rows_per_strip)]


def _offer_full_strips(
    factors: torch.Tensor,
    first_row: int,
    strip_bytes: int,
    lists: NeighbourLists,
    buffer: torch.Tensor | None = None,
) -> None:
    """Strips of rows ``first_row:`` against columns from their first row on, products of
    ``factors`` (float32 or bfloat16 rows) in one reused 1-D buffer (allocated if None or
    too small; a float32 buffer is reinterpreted for bfloat16 strips)."""
    n = factors.shape[0]
    rows = min(n, rows_per_strip(n, strip_bytes, factors.element_size()))
    if buffer is not None and factors.dtype == torch.bfloat16:
        buffer = buffer.view(torch.bfloat16)
    if buffer is None or buffer.numel() < rows * n:
        buffer = torch.empty(rows * n, dtype=factors.dtype)
    for start, stop in _strips(first_row, n, rows):
        strip = buffer[: (stop - start) * (n - start)].view(stop - start, n - start)
        torch.matmul(factors[start:stop], factors[start:].T, out=strip)
        lists.offer(strip, start, start, columns_from=stop - start)


def knn_graph(
    nodes: torch.Tensor,
    k: int,
    *,
    strip_bytes: int = limits.KNN_STRIP_BYTES,
    n_query: int = 0,
    keep_query_gallery: bool = False,
    precision: str | None = None,
    report: dict | None = None,
):
    """The canonical top-``k`` neighbours of every row of ``nodes``, self included.

    Args:
        nodes: ``[N, d]`` float32 CPU tensor (rows already normalised if wanted).
        k: neighbours per row, ``1 <= k <= N``.
        strip_bytes: memory for one strip of similarities (at least one row is used).
        n_query: the first ``n_query`` nodes are queries.
        keep_query_gallery: also return the ``[n_query, N - n_query]`` float32 products
            (needs ``1 <= n_query < N``).
        precision: the fast pass, ``"bf16"`` or ``"fp32"`` (default:
            :func:`~triton_rerank.cpu.knn_precision.knn_precision`); the lists do not depend
            on it.
        report: if given, receives ``precision``, ``candidates`` (per row) and
            ``close_calls`` (rows the certificate could not prove, recomputed).

    Returns:
        ``(values [N, k] float32, indices [N, k] int64, query_gallery)``: numpy arrays
        with each row sorted by descending canonical similarity, equal similarities by
        smaller column index; ``query_gallery`` is a float32 tensor, or None when not kept.
    """
    n = nodes.shape[0]
    precision = precision or knn_precision()
    lists = NeighbourLists(n, min(n, k + CANDIDATE_MARGIN[precision]))
    if precision == "bf16":
        rounding, norms = bf16_copy(nodes)
        errors = ProductErrors.of(nodes, rounding, norms)
    else:
        rounding, errors = None, ProductErrors.of(nodes)
    factors = nodes if rounding is None else rounding[0]
    query_gallery = None
    if keep_query_gallery:
        # gallery strips first, borrowing the [q, g] output as their buffer when it is
        # large enough; then float32 query strips, whose gallery columns are written in place
        query_gallery = torch.empty(n_query, n - n_query, dtype=torch.float32)
        _offer_full_strips(factors, n_query, strip_bytes, lists, query_gallery.view(-1))
        offer_query_strips(nodes, n_query, lists, rows_per_strip(n, strip_bytes), query_gallery)
        low_rows = slice(n_query, n)  # the rows that received bfloat16 values
    else:
        _offer_full_strips(factors, 0, strip_bytes, lists)
        low_rows = slice(0, n)
    fast_error = errors.fp32.clone()
    relative = torch.zeros_like(fast_error)
    if rounding is not None:
        fast_error[low_rows] = errors.bf16[low_rows] + canonical.BF16_OUTPUT_ABSOLUTE
        relative[low_rows] = canonical.BF16_OUTPUT_RELATIVE
    values, indices, close_calls = certified_lists(
        nodes, lists, k, fast_error, errors, strip_bytes, relative=relative
    )
    if report is not None:
        report.update(
            precision=precision, candidates=lists.indices.shape[1], close_calls=close_calls
        )
    return values, indices, query_gallery


def certified_lists(
    nodes: torch.Tensor,
    candidates: NeighbourLists,
    k: int,
    fast_error: torch.Tensor,
    errors: ProductErrors,
    strip_bytes: int = limits.KNN_STRIP_BYTES,
    *,
    relative: torch.Tensor | None = None,
):
    """The canonical top-``k`` lists of nodes ``0 .. r-1`` from their fast-pass candidates.

    Args:
        nodes: ``[N, d]`` float32 CPU tensor.
        candidates: ``[r, c]`` lists: each node's best candidates by fast value, every
            column having been offered to every node (so with ``c = N`` they are all the
            columns).
        k: neighbours per row.
        fast_error: ``[r]`` float64 bound on the fast values' error per row; a fast value
            ``f`` is off by at most ``fast_error + relative |f|``.
        relative: ``[r]`` float64, the part of the error proportional to the value (the
            bfloat16 output rounding), or None for 0.
        errors: the bounds of :class:`ProductErrors` of ``nodes`` (for the canonical
            values and the float32 recomputation of close calls).

    Returns:
        ``(values [r, k] float32, indices [r, k] int64, close_calls)``: the lists, and
        how many rows the certificate could not prove (recomputed canonically).
    """
    n_rows, n_cand = candidates.indices.shape
    if relative is None:
        relative = torch.zeros_like(fast_error)
    if n_cand == nodes.shape[0]:  # every column is a candidate
        thresholds = np.full(n_rows, -np.inf)
    else:
        last = torch.from_numpy(candidates.values[:, -1])
        thresholds = canonical.certify_threshold(
            last, fast_error + relative * last.abs(), errors.canonical[:n_rows]
        ).numpy()
    values = np.empty((n_rows, k), np.float32)
    indices = np.empty((n_rows, k), np.int64)
    certified = np.empty(n_rows, np.bool_)
    rescore_candidates(
        nodes.numpy(),
        np.arange(n_rows, dtype=np.int64),
        candidates.indices,
        candidates.values,
        np.ascontiguousarray(relative.numpy()),
        (fast_error + errors.canonical[:n_rows]).numpy(),
        thresholds,
        values,
        indices,
        certified,
    )
    close_calls = np.flatnonzero(~certified)
    if close_calls.size:
        recompute_close_calls(nodes, close_calls, values, indices, errors, strip_bytes)
    return values, indices, int(close_calls.size)


def recompute_close_calls(
    nodes: torch.Tensor,
    rows: np.ndarray,
    values: np.ndarray,
    indices: np.ndarray,
    errors: ProductErrors,
    strip_bytes: int = limits.KNN_STRIP_BYTES,
) -> None:
    """Replace the lists of ``rows`` by their canonical top-k over every node.

    On entry ``values[rows, -1]`` are the k-th canonical values of k columns of each row
    (its candidates), so the row's true k-th canonical value is at least that; a column of
    the true top-k then has a float32 product at least that minus both errors.

    Args:
        nodes: ``[N, d]`` float32 CPU tensor.
        rows: ``[r]`` int64 node ids (also their rows in ``values`` and ``indices``).
        values, indices: ``[n, k]`` lists of nodes ``0 .. n-1``, updated in place for
            ``rows``.
    """
    x = nodes.numpy()
    # identical rows have identical lists: compute one per distinct row
    _, first, group = np.unique(
        x[rows].view(np.uint32), axis=0, return_index=True, return_inverse=True
    )
    distinct = rows[first]
    bound = errors.fp32[distinct] + errors.canonical[distinct]
    thresholds = np.nextafter(values[distinct, -1].astype(np.float64) - bound.numpy(), -np.inf)
    k = values.shape[1]
    out_values = np.empty((distinct.size, k), np.float32)
    out_indices = np.empty((distinct.size, k), np.int64)
    for start, stop in _strips(0, distinct.size, rows_per_strip(x.shape[0], strip_bytes)):
        block = (nodes[distinct[start:stop]] @ nodes.T).numpy()
        canonical_topk_above(
            x,
            distinct[start:stop],
            block,
            thresholds[start:stop],
            out_values[start:stop],
            out_indices[start:stop],
        )
    values[rows] = out_values[group.ravel()]
    indices[rows] = out_indices[group.ravel()]


def offer_query_strips(
    nodes: torch.Tensor,
    n_query: int,
    lists: NeighbourLists,
    rows_per_strip: int,
    query_gallery: torch.Tensor | None = None,
) -> None:
    """Offer every float32 product that involves a query (rows ``:n_query`` of ``U @ U.T``)
    to both of its nodes.

    Args:
        nodes: ``[N, d]`` float32, the queries first.
        n_query: q.
        lists: the candidate lists of all N nodes.
        rows_per_strip: query rows per matrix product.
        query_gallery: optional ``[q, N - q]`` float32 output that keeps the
            query-gallery products; without it one strip's worth is allocated.
    """
    n_gallery = nodes.shape[0] - n_query
    buffer = (
        torch.empty(rows_per_strip * n_gallery, dtype=torch.float32)
        if query_gallery is None
        else None
    )
    for start, stop in _strips(0, n_query, rows_per_strip):
        left = torch.matmul(nodes[start:stop], nodes[start:n_query].T)
        lists.offer(left, start, start, columns_from=stop - start)
        if query_gallery is not None:
            right = query_gallery[start:stop]
        else:
            right = buffer[: (stop - start) * n_gallery].view(stop - start, n_gallery)
        torch.matmul(nodes[start:stop], nodes[n_query:].T, out=right)
        lists.offer(right, start, n_query, columns_from=0)


def knn_with_database(
    nodes: torch.Tensor,
    n_query: int,
    database_values: np.ndarray,
    database_indices: np.ndarray,
    k: int,
    *,
    keep_query_gallery: bool,
    strip_bytes: int = limits.KNN_STRIP_BYTES,
):
    """:func:`knn_graph` of ``nodes = [queries; database]`` when the database's own
    canonical lists (among the database) are known.

    Queries get certified candidate lists from float32 products against every node. A
    database node's list can only change by taking queries: those whose canonical value
    ranks before its current k-th entry (queries have the smaller ids, so they win ties);
    only queries whose float32 product is within the error bound of that entry are
    computed canonically.

    Args:
        nodes: ``[q + g, d]`` float32 CPU tensor, the queries first.
        n_query: q.
        database_values, database_indices: ``[g, k_db]`` (``k_db = min(k, g)``) the
            database's canonical lists in database positions.
        k: neighbours per row.
        keep_query_gallery: also return the ``[q, g]`` float32 products.

    Returns:
        As :func:`knn_graph`.
    """
    n = nodes.shape[0]
    errors = ProductErrors.of(nodes)
    # the database part: its known lists, padded to k, in node ids
    lists = NeighbourLists(n, k)
    k_db = database_indices.shape[1]
    lists.values[n_query:, :k_db] = database_values
    lists.indices[n_query:, :k_db] = np.where(database_indices >= 0, database_indices + n_query, -1)
    query_lists = NeighbourLists(n_query, min(n, k + CANDIDATE_MARGIN["fp32"]))
    query_gallery = (
        torch.empty(n_query, n - n_query, dtype=torch.float32) if keep_query_gallery else None
    )
    x = nodes.numpy()
    db_bound = (errors.fp32 + errors.canonical)[n_query:].numpy()
    db_thresholds = np.nextafter(lists.values[n_query:, -1].astype(np.float64) - db_bound, -np.inf)
    strip_rows = min(n_query, rows_per_strip(n, strip_bytes))
    buffer = None if keep_query_gallery else torch.empty(strip_rows * (n - n_query))
    for start, stop in _strips(0, n_query, strip_rows):
        left = torch.matmul(nodes[start:stop], nodes[:n_query].T)
        query_lists.offer(left, start, 0)
        right = (
            query_gallery[start:stop]
            if keep_query_gallery
            else buffer[: (stop - start) * (n - n_query)].view(stop - start, -1)
        )
        torch.matmul(nodes[start:stop], nodes[n_query:].T, out=right)
        query_lists.offer(right, start, n_query)
        offer_to_columns(
            x, start, n_query, right.numpy(), db_thresholds, lists.values, lists.indices
        )
    query_values, query_indices, _ = certified_lists(
        nodes, query_lists, k, errors.fp32[:n_query], errors, strip_bytes
    )
    lists.values[:n_query], lists.indices[:n_query] = query_values, query_indices
    return lists.values, lists.indices, query_gallery


def rows_per_strip(
    n_columns: int, strip_bytes: int = limits.KNN_STRIP_BYTES, element_bytes: int = 4
) -> int:
    """Rows of a strip of ``n_columns`` columns of ``element_bytes`` that fit in
    ``strip_bytes``."""
    return int(max(1, strip_bytes // (element_bytes * n_columns)))
