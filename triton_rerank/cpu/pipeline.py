"""The CPU backend end to end: kNN lists, propagation, scoring.

``run_cpu`` is what ``gnn_rerank(..., backend="cpu")`` runs; ``scores_from_lists`` is
the part after the kNN step, shared with ``gnn_rerank_similarities`` (lists from given
similarity matrices) and the exact database mode (lists from a cached database graph).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import limits
from ..checks import FeaturePair
from .knn import knn_graph
from .propagation import propagate
from .scoring import rerank_scores


def keeps_query_gallery(n_query: int, n_gallery: int, *, lamb: float, topk: int | None) -> bool:
    """Whether the CPU path keeps the ``[q, g]`` similarities of the kNN step for the
    scoring (see ``limits.BASE_KEEP_BYTES``)."""
    return lamb > 0 and (topk is None or 4 * n_query * n_gallery <= limits.BASE_KEEP_BYTES)


def scores_from_lists(
    knn_values: np.ndarray,
    knn_indices: np.ndarray,
    *,
    n_query: int,
    k2: int,
    iterations: int,
    lamb: float,
    topk: int | None,
    query: torch.Tensor | None,
    gallery: torch.Tensor | None,
    base: torch.Tensor | None,
):
    """Propagate the kNN graph and score every query against the gallery.

    Args:
        knn_values: ``[q + g, k1]`` float32 similarities, sorted by the tie rule.
        knn_indices: ``[q + g, k1]`` int64 node ids (queries first).
        n_query: q.
        k2, iterations, lamb, topk: as :func:`triton_rerank.gnn_rerank` (checked).
        query, gallery: ``[q, d]`` / ``[g, d]`` float32 unit rows, for the ``lamb`` term
            where ``base`` is None.
        base: ``[q, g]`` float32 query-gallery similarities kept from the kNN step, or
            None.

    Returns:
        ``[q, g]`` float32 scores, or ``(values [q, topk], indices [q, topk])``.
    """
    graph = propagate(knn_values, knn_indices, n_query=n_query, k2=k2, iterations=iterations)
    return rerank_scores(graph, query, gallery, lamb=lamb, topk=topk, base=base)


def run_cpu(
    features: FeaturePair, *, k1: int, k2: int, iterations: int, lamb: float, topk: int | None
):
    """``gnn_rerank`` on the CPU for checked features; results as CPU tensors."""
    nodes = features.nodes.cpu()
    n_query = features.n_query
    n_gallery = nodes.shape[0] - n_query
    keep_base = keeps_query_gallery(n_query, n_gallery, lamb=lamb, topk=topk)
    knn_values, knn_indices, base = knn_graph(
        nodes, k1, n_query=n_query, keep_query_gallery=keep_base
    )
    return scores_from_lists(
        knn_values,
        knn_indices,
        n_query=n_query,
        k2=k2,
        iterations=iterations,
        lamb=lamb,
        topk=topk,
        query=nodes[:n_query],
        gallery=nodes[n_query:],
        base=base,
    )
