"""Exact kNN graph of the nodes ``U = [Xq; Xg]`` on the CPU (step 1 of the algorithm).

``U @ U.T`` is never held whole: it is computed one row strip at a time, and only
the upper triangle (columns at or right of the strip's first row), since the matrix
is symmetric. Each strip is offered to its rows (``update_from_rows``) and, for the
columns right of the strip's diagonal block, to those columns' nodes
(``update_from_columns``). Every node therefore sees every column once, in
increasing column order, which is what the kernels' tie rule relies on.
"""

from __future__ import annotations

import numpy as np
import torch

from .cpu.knn_select import update_from_columns, update_from_rows

# Size of one similarity strip; the kNN step's memory is this plus the [N, k] result.
DEFAULT_STRIP_BYTES = 128 * 2**20


def knn_graph(nodes: torch.Tensor, k: int, *, strip_bytes: int = DEFAULT_STRIP_BYTES,
              n_query: int = 0, query_gallery_out: torch.Tensor | None = None):
    """Top-``k`` inner-product neighbours of every row of ``nodes``, self included.

    Args:
        nodes: ``[N, d]`` float32 CPU tensor (rows already normalised if wanted).
        k: neighbours per row, ``1 <= k <= N``.
        strip_bytes: memory for one strip of similarities (at least one row is used).
        n_query: the first ``n_query`` nodes are queries (only used with the next one).
        query_gallery_out: optional ``[n_query, N - n_query]`` float32 tensor that
            receives the query-gallery similarities as a by-product, which saves the
            scoring step that matrix product.

    Returns:
        ``(values [N, k] float32, indices [N, k] int64)`` as numpy arrays, each row
        sorted by descending similarity, equal similarities by smaller column index.
    """
    n = nodes.shape[0]
    top_values = np.full((n, k), -np.inf, dtype=np.float32)
    top_indices = np.full((n, k), -1, dtype=np.int64)
    rows_per_strip = int(max(1, min(n, strip_bytes // (4 * n))))
    buffer = torch.empty(rows_per_strip * n, dtype=torch.float32)
    for start in range(0, n, rows_per_strip):
        stop = min(n, start + rows_per_strip)
        strip = buffer[: (stop - start) * (n - start)].view(stop - start, n - start)
        torch.matmul(nodes[start:stop], nodes[start:].T, out=strip)
        if query_gallery_out is not None and start < n_query:
            query_stop = min(stop, n_query)
            query_gallery_out[start:query_stop] = strip[: query_stop - start, n_query - start:]
        block = strip.numpy()
        update_from_rows(block, start, start, top_values, top_indices)
        update_from_columns(block, start, start, stop - start, top_values, top_indices)
    return top_values, top_indices
