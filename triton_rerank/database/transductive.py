"""Exact GNN re-ranking of query batches against a database whose kNN lists are cached.

``gnn_rerank(xq, xb)`` makes queries and database items nodes of one graph. The
database-to-database part of that graph's kNN step does not depend on the queries,
so it can be computed once and reused: a new batch only adds its query-query and
query-database similarities (``cpu/knn.py`` ``knn_with_database``). The lists are the canonical
ones either way (the tie rule is a total order, so they do not depend on the order in
which candidates arrive). Propagation and scoring then run as in
:func:`triton_rerank.gnn_rerank`, and the results are the same.
"""

from __future__ import annotations

import numpy as np
import torch

from ..cpu.knn import knn_with_database
from ..cpu.pipeline import keeps_query_gallery, scores_from_lists


def rerank_against_database(
    query: torch.Tensor,
    database: torch.Tensor,
    database_values: np.ndarray,
    database_indices: np.ndarray,
    *,
    k1: int,
    k2: int,
    iterations: int,
    lamb: float,
    topk: int | None,
):
    """``gnn_rerank(query, database, ...)`` with the database's own kNN lists given.

    Args:
        query: ``[q, d]`` float32 CPU tensor of unit rows.
        database: ``[g, d]`` float32 CPU tensor of unit rows.
        database_values: ``[g, k]`` float32, each database row's top-``k`` canonical
            similarities among the database (``k = min(k1, g)``), sorted by the tie rule.
        database_indices: ``[g, k]`` int64 their database positions.
        k1, k2, iterations, lamb, topk: as :func:`triton_rerank.gnn_rerank` (checked).

    Returns:
        As :func:`triton_rerank.gnn_rerank`, as CPU tensors.
    """
    n_query, n_gallery = query.shape[0], database.shape[0]
    keep_base = keeps_query_gallery(n_query, n_gallery, lamb=lamb, topk=topk)
    nodes = torch.cat([query, database])
    values, indices, base = knn_with_database(
        nodes, n_query, database_values, database_indices, k1, keep_query_gallery=keep_base
    )
    return scores_from_lists(
        values,
        indices,
        n_query=n_query,
        k2=k2,
        iterations=iterations,
        lamb=lamb,
        topk=topk,
        query=nodes[:n_query],
        gallery=nodes[n_query:],
        base=base,
    )
