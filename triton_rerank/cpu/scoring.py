"""Steps 5-7: final scores, ``lamb`` mixing, and top-K, in blocks of queries.

Memory is bounded by one ``[block, g]`` score block when ``topk`` is given; with
``topk=None`` the caller asked for the whole ``[q, g]`` matrix, which is then the
only large buffer (the base similarity is computed straight into it).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import limits
from ..topk import topk_rows
from .kernels import unsigned
from .kernels.two_hop_scores import score_from_z, score_queries
from .propagation import PropagatedGraph

# Queries whose dense z rows are computed at a time (dense rows only).
_DENSE_Z_ROWS = 256


def score_block(
    graph: PropagatedGraph, start: int, stop: int, lamb: float, out: np.ndarray
) -> None:
    """Re-ranked scores of queries ``start:stop`` into ``out [stop - start, g]``.

    When ``lamb > 0``, ``out`` must hold the base similarity ``Xq @ Xg.T`` of those
    queries on entry; it is overwritten with ``(1 - lamb) * gnn + lamb * base``.
    """
    m = graph.mixing
    if isinstance(m, np.ndarray):  # dense rows (degenerate data): z is a matrix product
        for a in range(start, stop, _DENSE_Z_ROWS):
            b = min(stop, a + _DENSE_Z_ROWS)
            z = graph.query_rows[a:b] @ m
            score_from_z(
                z,
                unsigned(graph.gallery_idx),
                graph.gallery_val,
                graph.gallery_inv_norm,
                np.float32(lamb),
                out[a - start : b - start],
            )
        return
    rows = graph.query_rows.row_slice(start, stop)
    # queries in graph order (their internal ids): neighbours share rows of M in cache
    order = np.argsort(graph.query_ids[start:stop], kind="stable")
    score_queries(
        order,
        unsigned(rows.indptr),
        unsigned(rows.indices),
        rows.values,
        unsigned(m.indptr),
        unsigned(m.indices),
        m.values,
        unsigned(graph.gallery_idx),
        graph.gallery_val,
        graph.gallery_inv_norm,
        np.float32(lamb),
        out,
    )


def rerank_scores(
    graph: PropagatedGraph,
    query: torch.Tensor | None,
    gallery: torch.Tensor | None,
    *,
    lamb: float,
    topk: int | None,
    base: torch.Tensor | None = None,
    block_bytes: int | None = None,
):
    """Final re-ranked scores.

    Args:
        graph: the propagated graph.
        query: ``[q, d]`` float32 CPU features as used for the kNN (for the ``lamb`` term;
            may be None when ``base`` is given).
        gallery: ``[g, d]`` float32 CPU features (likewise).
        lamb: weight of the original similarity, in [0, 1].
        topk: None for the full matrix, else K.
        base: optional ``[q, g]`` float32 ``query @ gallery.T`` already computed (by the
            kNN step); it is overwritten. Without it the product is computed per block.
        block_bytes: size of one ``[block, g]`` score block of the top-K path; None for
            ``limits.SCORE_BLOCK_BYTES`` as it is at call time.

    Returns:
        ``scores [q, g]`` float32 tensor, or ``(D [q, K] float32, I [q, K] int64)``.
    """
    n_query, n_gallery = graph.n_query, graph.gallery_idx.shape[0]
    if topk is None:
        scores = base
        if scores is None:
            scores = torch.empty(n_query, n_gallery, dtype=torch.float32)
            if lamb > 0:
                torch.matmul(query, gallery.T, out=scores)
        score_block(graph, 0, n_query, lamb, scores.numpy())
        return scores
    if block_bytes is None:
        block_bytes = limits.SCORE_BLOCK_BYTES
    rows_per_block = int(max(1, min(n_query, block_bytes // (4 * n_gallery))))
    buffer = None if base is not None else torch.empty(rows_per_block * n_gallery)
    top_values = torch.empty(n_query, topk, dtype=torch.float32)
    top_indices = torch.empty(n_query, topk, dtype=torch.int64)
    for start in range(0, n_query, rows_per_block):
        stop = min(n_query, start + rows_per_block)
        if base is not None:
            block = base[start:stop]
        else:
            block = buffer[: (stop - start) * n_gallery].view(stop - start, n_gallery)
            if lamb > 0:
                torch.matmul(query[start:stop], gallery.T, out=block)
        score_block(graph, start, stop, lamb, block.numpy())
        top_values[start:stop], top_indices[start:stop] = topk_rows(block, topk)
    return top_values, top_indices
