"""The Triton backend: GNN re-ranking with the kernels of ``triton_rerank.gpu``.

Mirrors the CPU path (``cpu/pipeline.py`` ``run_cpu``: kNN, propagation, scoring) on the
features' device: a CUDA GPU, or the CPU under ``TRITON_INTERPRET=1``.

1. kNN: the canonical lists (``triton_rerank/canonical.py``, equal to the CPU path's):
   the streaming top-k kernel over ``U @ U.T`` (never written whole) as a float16 pass,
   canonical rescoring of its candidates and a certificate (``gpu/certified_topk.py``).
2. Propagation on sparse CSR rows: ``A + A.T`` once per round (a torch coalesce), then
   the sparse aggregation kernel (normalised rows straight to CSR). As on the CPU path,
   the last round is built for the queries only; the gallery needs only its norms (see
   ``cpu/propagation.py`` ``PropagatedGraph``).
3. Scores per block of queries: ``z = A[queries] @ M`` (dense aggregation kernel), then
   the scoring kernels: the full ``[q, g]`` matrix, or the streaming top-K.

Memory is the CSR rows, the sparse kernel's output slots (at most
``limits.GPU_MAX_SLOTS_PER_LAUNCH`` per launch) and dense blocks (``z``, score blocks) of
at most ``limits.GPU_BLOCK_BYTES``, so no ``[N, N]`` buffer ever exists at Market-1501 or MSMT17
scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import limits
from ..checks import FeaturePair
from ..limits import NORM_EPS
from ..topk import topk_rows
from .aggregate import CsrRows, aggregate_dense, aggregate_sparse
from .canonical import canonical_topk
from .launch_config import MAX_STREAMING_K
from .scoring import score_block, topk_block
from .tiles import TwoHopTerms
from .topk_similarity import topk_similarity


@dataclass(frozen=True)
class GpuGraph:
    """What the final scoring needs after propagation (the GPU twin of
    ``cpu/propagation.py`` ``PropagatedGraph``, in the caller's node order).

    Attributes:
        query_rows: ``[q, N]`` the final rows of the queries.
        mixing: ``[N, N]`` symmetric M (``A + A.T`` of the last round, or the identity).
        gallery_idx: ``[g, t]`` int64 node ids.
        gallery_val: ``[g, t]`` float32 weights.
        gallery_inv_norm: ``[g]`` float32.
    """

    query_rows: CsrRows
    mixing: CsrRows
    gallery_idx: torch.Tensor
    gallery_val: torch.Tensor
    gallery_inv_norm: torch.Tensor


def _blocks(n_rows: int, row_bytes: int):
    """``(start, stop)`` row ranges whose dense ``[rows, row_bytes / 4]`` fp32 blocks fit
    in ``limits.GPU_BLOCK_BYTES`` (at least one row each)."""
    rows = max(1, limits.GPU_BLOCK_BYTES // max(1, row_bytes))
    return [(start, min(n_rows, start + rows)) for start in range(0, n_rows, rows)]


def knn(nodes: torch.Tensor, k: int):
    """The canonical top-``k`` neighbours of each row of ``nodes [N, d]`` (float32), self
    included (``triton_rerank/canonical.py``: the same lists as the CPU path).

    Returns:
        ``(values [N, k] float32, indices [N, k] int64)``, descending, ties by smaller id.
    """
    if k <= MAX_STREAMING_K:
        return topk_similarity(nodes, nodes, k)
    return canonical_topk(nodes, nodes, k)


def symmetrise(a: CsrRows) -> CsrRows:
    """``A + A.T`` of a square CSR matrix (whose indptr starts at 0), values exactly
    symmetric (each entry is the same two-term sum from either side)."""
    n = a.n_rows
    rows = torch.repeat_interleave(torch.arange(n, device=a.indptr.device), a.indptr.diff())
    both = torch.sparse_coo_tensor(
        torch.stack([torch.cat([rows, a.indices]), torch.cat([a.indices, rows])]),
        torch.cat([a.values, a.values]),
        (n, n),
        check_invariants=False,
    ).coalesce()
    row_ids, col_ids = both.indices()
    indptr = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(torch.bincount(row_ids, minlength=n), dim=0, out=indptr[1:])
    return CsrRows(indptr, col_ids.contiguous(), both.values().contiguous(), n)


def propagate(
    knn_values: torch.Tensor, knn_indices: torch.Tensor, *, n_query: int, k2: int, iterations: int
) -> GpuGraph:
    """Steps 2-4 on the kNN lists' device; arguments as ``cpu/propagation.py`` ``propagate``
    (``[N, k1]`` tensors here)."""
    n, k1 = knn_indices.shape
    ones = torch.ones(n, k1, dtype=torch.float32, device=knn_indices.device)
    adjacency = CsrRows.from_fixed_width(knn_indices, ones, n)
    if k2 == 1 or iterations == 0:
        ids = torch.arange(n, device=knn_indices.device)[:, None]
        return GpuGraph(
            query_rows=adjacency.row_slice(0, n_query),
            mixing=CsrRows.from_fixed_width(ids, ones[:, :1], n),
            gallery_idx=knn_indices[n_query:],
            gallery_val=ones[n_query:],
            gallery_inv_norm=ones[n_query:, 0].contiguous(),
        )
    nbr_idx = knn_indices[:, :k2].contiguous()
    nbr_w = knn_values[:, :k2] ** 2
    weights = CsrRows.from_fixed_width(nbr_idx, nbr_w, n)
    a = adjacency
    for _ in range(iterations - 1):
        a, _ = aggregate_sparse(weights, symmetrise(a))
    mixing = symmetrise(a)
    del a
    _, gallery_norms = aggregate_sparse(weights.row_slice(n_query, n), mixing, write_rows=False)
    query_rows, _ = aggregate_sparse(weights.row_slice(0, n_query), mixing)
    return GpuGraph(
        query_rows=query_rows,
        mixing=mixing,
        gallery_idx=nbr_idx[n_query:],
        gallery_val=nbr_w[n_query:].contiguous(),
        gallery_inv_norm=1.0 / torch.clamp(gallery_norms, min=NORM_EPS),
    )


def rerank_scores(
    graph: GpuGraph, query: torch.Tensor, gallery: torch.Tensor, *, lamb: float, topk: int | None
):
    """Steps 5-7 per block of queries: ``z = A[block] @ M``, then the scoring kernels.

    Args:
        graph: the propagated graph.
        query: ``[q, d]`` contiguous float32 features as used for the kNN.
        gallery: ``[g, d]`` likewise.
        lamb: weight of the original similarity, in [0, 1].
        topk: None for the full matrix, else K.

    Returns:
        ``scores [q, g]`` float32, or ``(D [q, K] float32, I [q, K] int64)``.
    """
    n_query, n_gallery = query.shape[0], gallery.shape[0]
    device = query.device
    if topk is None:
        scores = torch.empty(n_query, n_gallery, dtype=torch.float32, device=device)
    else:
        values = torch.empty(n_query, topk, dtype=torch.float32, device=device)
        indices = torch.empty(n_query, topk, dtype=torch.int64, device=device)
    # one block holds z [b, N] and, on the fallback top-K path, scores [b, g]
    for start, stop in _blocks(n_query, 4 * (graph.mixing.n_cols + n_gallery)):
        z = aggregate_dense(graph.query_rows.row_slice(start, stop), graph.mixing)
        terms = TwoHopTerms(z, graph.gallery_idx, graph.gallery_val, graph.gallery_inv_norm)
        block_query = query[start:stop]
        if topk is None:
            score_block(block_query, gallery, lamb=lamb, two_hop=terms, out=scores[start:stop])
        elif topk <= MAX_STREAMING_K:
            values[start:stop], indices[start:stop] = topk_block(
                block_query, gallery, lamb=lamb, two_hop=terms, k=topk
            )
        else:
            block = torch.empty(stop - start, n_gallery, dtype=torch.float32, device=device)
            score_block(block_query, gallery, lamb=lamb, two_hop=terms, out=block)
            values[start:stop], indices[start:stop] = topk_rows(block, topk)
    return scores if topk is None else (values, indices)


def run_triton(
    features: FeaturePair, *, k1: int, k2: int, iterations: int, lamb: float, topk: int | None
):
    """GNN re-ranking of checked features on their device (see ``rerank.gnn_rerank``).

    Returns:
        Tensors on the features' device: ``scores [q, g]`` or ``(D [q, K], I [q, K])``.
    """
    nodes = features.nodes.contiguous()
    n_query = features.n_query
    knn_values, knn_indices = knn(nodes, k1)
    graph = propagate(knn_values, knn_indices, n_query=n_query, k2=k2, iterations=iterations)
    return rerank_scores(graph, nodes[:n_query], nodes[n_query:], lamb=lamb, topk=topk)
