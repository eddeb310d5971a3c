"""Exact kNN graph of the nodes ``U = [Xq; Xg]`` on the CPU (step 1 of the algorithm).

``U @ U.T`` is never held whole: it is computed one row strip at a time, and only
the upper triangle (rows ``a:b`` against columns ``a:``), since the matrix is
symmetric. Each block is offered to its rows (``update_from_rows``) and, for the
columns right of the strip's diagonal block, to those columns' nodes
(``update_from_columns``), so every node sees every column exactly once.

The query-gallery block ``Xq @ Xg.T`` is also the base similarity of the final
score (the ``lamb`` term). When asked, query strips write their gallery columns
straight into that ``[q, g]`` matrix. Gallery strips run first and borrow the same
memory as their strip buffer when it is large enough, so the kNN step holds one
large buffer, not two.
"""

from __future__ import annotations

import numpy as np
import torch

from .cpu.knn_select import update_from_columns, update_from_rows
from .topk import sort_by_value_then_index

# Size of one similarity strip; the kNN step's memory is this plus the [N, k] result.
DEFAULT_STRIP_BYTES = 128 * 2**20


class NeighbourLists:
    """Running top-``k`` neighbour lists of ``n`` nodes, fed one similarity block at a time.

    Attributes:
        values: ``[n, k]`` float32, descending per row (``-inf`` until filled).
        indices: ``[n, k]`` int64 neighbour ids, equal values by smaller id.
    """

    def __init__(self, n: int, k: int):
        self.values = np.full((n, k), -np.inf, dtype=np.float32)
        self.indices = np.full((n, k), -1, dtype=np.int64)

    def offer(self, block, row_start: int, col_start: int, *, to_rows: bool = True,
              columns_from: int | None = None) -> None:
        """Offer ``block [b, m]``: ``block[r, c]`` is the similarity of nodes
        ``row_start + r`` and ``col_start + c``.

        Args:
            block: float32 numpy array or CPU tensor (C-contiguous).
            to_rows: offer each row's entries to the row's node.
            columns_from: also offer columns ``columns_from:`` to the columns' nodes.
        """
        block = block.numpy() if isinstance(block, torch.Tensor) else block
        if to_rows:
            update_from_rows(block, row_start, col_start, self.values, self.indices)
        if columns_from is not None and columns_from < block.shape[1]:
            update_from_columns(block, row_start, col_start, columns_from, self.values,
                                self.indices)


def _strips(start: int, stop: int, rows_per_strip: int):
    return [(a, min(stop, a + rows_per_strip)) for a in range(start, stop, rows_per_strip)]


def _offer_full_strips(nodes: torch.Tensor, first_row: int, rows_per_strip: int,
                       lists: NeighbourLists, buffer: torch.Tensor | None = None) -> None:
    """Strips of rows ``first_row:`` against columns from their first row on, in one
    reused 1-D buffer of at least ``rows_per_strip * N`` floats (allocated if None)."""
    n = nodes.shape[0]
    if buffer is None or buffer.numel() < rows_per_strip * n:
        buffer = torch.empty(rows_per_strip * n, dtype=torch.float32)
    for start, stop in _strips(first_row, n, rows_per_strip):
        strip = buffer[: (stop - start) * (n - start)].view(stop - start, n - start)
        torch.matmul(nodes[start:stop], nodes[start:].T, out=strip)
        lists.offer(strip, start, start, columns_from=stop - start)


def knn_graph(nodes: torch.Tensor, k: int, *, strip_bytes: int = DEFAULT_STRIP_BYTES,
              n_query: int = 0, keep_query_gallery: bool = False):
    """Top-``k`` inner-product neighbours of every row of ``nodes``, self included.

    Args:
        nodes: ``[N, d]`` float32 CPU tensor (rows already normalised if wanted).
        k: neighbours per row, ``1 <= k <= N``.
        strip_bytes: memory for one strip of similarities (at least one row is used).
        n_query: the first ``n_query`` nodes are queries.
        keep_query_gallery: also return the ``[n_query, N - n_query]`` similarities
            (needs ``1 <= n_query < N``).

    Returns:
        ``(values [N, k] float32, indices [N, k] int64, query_gallery)``: numpy arrays
        with each row sorted by descending similarity, equal similarities by smaller
        column index; ``query_gallery`` is a float32 tensor, or None when not kept.
    """
    n = nodes.shape[0]
    lists = NeighbourLists(n, k)
    strip_rows = min(n, rows_per_strip(n, strip_bytes))
    if not keep_query_gallery:
        _offer_full_strips(nodes, 0, strip_rows, lists)
        return lists.values, lists.indices, None

    # gallery strips first, borrowing the [q, g] output as their buffer when it is
    # large enough; then query strips, whose gallery columns are written in place
    query_gallery = torch.empty(n_query, n - n_query, dtype=torch.float32)
    _offer_full_strips(nodes, n_query, strip_rows, lists, buffer=query_gallery.view(-1))
    offer_query_strips(nodes, n_query, lists, strip_rows, query_gallery)
    return lists.values, lists.indices, query_gallery


def offer_query_strips(nodes: torch.Tensor, n_query: int, lists: NeighbourLists,
                       rows_per_strip: int, query_gallery: torch.Tensor | None = None) -> None:
    """Offer every similarity that involves a query (rows ``:n_query`` of ``U @ U.T``)
    to both of its nodes.

    Args:
        nodes: ``[N, d]`` float32, the queries first.
        n_query: q.
        lists: the neighbour lists of all N nodes.
        rows_per_strip: query rows per matrix product.
        query_gallery: optional ``[q, N - q]`` float32 output that keeps the
            query-gallery similarities; without it one strip's worth is allocated.
    """
    n_gallery = nodes.shape[0] - n_query
    buffer = (torch.empty(rows_per_strip * n_gallery, dtype=torch.float32)
              if query_gallery is None else None)
    for start, stop in _strips(0, n_query, rows_per_strip):
        left = torch.matmul(nodes[start:stop], nodes[start:n_query].T)
        lists.offer(left, start, start, columns_from=stop - start)
        if query_gallery is not None:
            right = query_gallery[start:stop]
        else:
            right = buffer[: (stop - start) * n_gallery].view(stop - start, n_gallery)
        torch.matmul(nodes[start:stop], nodes[n_query:].T, out=right)
        lists.offer(right, start, n_query, columns_from=0)


def rows_per_strip(n_columns: int, strip_bytes: int = DEFAULT_STRIP_BYTES) -> int:
    """Rows of a float32 strip of ``n_columns`` columns that fit in ``strip_bytes``."""
    return int(max(1, strip_bytes // (4 * n_columns)))


def sorted_neighbour_lists(values: np.ndarray, indices: np.ndarray):
    """Search results reordered by the project's tie rule.

    Args:
        values: ``[g, k]`` similarities (e.g. FAISS inner products), ``-inf`` = none.
        indices: ``[g, k]`` int64 positions, -1 = none.

    Returns:
        ``(values [g, k] float32, indices [g, k] int64)`` by descending similarity,
        equal similarities by smaller position.
    """
    v, i = sort_by_value_then_index(torch.from_numpy(np.asarray(values, np.float32)),
                                    torch.from_numpy(np.asarray(indices, np.int64)))
    return v.numpy(), i.numpy()
