"""Steps 2-4 of the algorithm on sparse rows: adjacency, symmetrise, aggregate, normalise.

Row supports grow every round (k1, then about ``k2 * 2 * k1``, then about ``k2 * 2``
times that), so rows are kept sparse; at Market-1501 scale they end near 1,000
non-zeros out of 23,100 columns. The last round is not materialised for the
gallery: scoring only needs the query rows and the gallery rows' norms (see
``cpu/kernels/two_hop_scores.py``), which saves the largest matrix of the pipeline.

Nodes are renumbered internally (reverse Cuthill-McKee order of the kNN graph) so
that a row's neighbours sit close together in memory: the sums are the same, the
memory traffic of propagation and scoring is smaller (about 1.5x faster at
Market-1501 scale when queries and gallery come in no particular order).

Degenerate data (many identical features) makes the rows dense: then a round whose CSR
would be larger than half a dense ``[N, N]`` float32 matrix is built dense instead
(``cpu/kernels/dense_rows.py``), symmetrised in place, and the rest of the pipeline uses dense
rows, so memory stays at about one ``N x N`` float32 matrix whatever the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse.csgraph import reverse_cuthill_mckee

from .. import limits
from ..limits import NORM_EPS, check_fits
from .kernels import unsigned
from .kernels.aggregate import count_row_nnz, fill_rows, row_norms
from .kernels.dense_rows import aggregate_to_dense, dense_row_norms, symmetrise_in_place
from .kernels.transpose import transpose
from .sparse_rows import SparseRows


@dataclass(frozen=True)
class PropagatedGraph:
    """What the final scoring needs after propagation.

    The re-ranked score of query ``i`` and gallery ``j`` is ``<A[i], A[q + j]>`` with::

        A[q + j] = gallery_inv_norm[j] * sum_t gallery_val[j, t] * M[gallery_idx[j, t]]

    Queries and gallery items are in the caller's order; node ids (columns of the
    rows, rows of M, ``gallery_idx``) are internal: internal id ``p`` is the caller's
    node ``node_order[p]``.

    Attributes:
        query_rows: ``[q, N]`` the final rows of the queries (sparse, or a dense float32
            array when ``mixing`` is dense).
        mixing: ``[N, N]`` symmetric M (``A + A.T`` of the last round, or the identity):
            sparse rows, or a dense float32 array on degenerate data.
        gallery_idx: ``[g, t]`` int64 node ids.
        gallery_val: ``[g, t]`` float32 weights.
        gallery_inv_norm: ``[g]`` float32.
        node_order: ``[N]`` int64 permutation, internal id -> caller's node id.
    """

    query_rows: SparseRows | np.ndarray
    mixing: SparseRows | np.ndarray
    gallery_idx: np.ndarray
    gallery_val: np.ndarray
    gallery_inv_norm: np.ndarray
    node_order: np.ndarray

    @property
    def n_query(self) -> int:
        rows = self.query_rows
        return rows.shape[0] if isinstance(rows, np.ndarray) else rows.n_rows

    @property
    def query_ids(self) -> np.ndarray:
        """``[q]`` int64 internal id of each query."""
        internal = np.empty(self.node_order.shape[0], np.int64)
        internal[self.node_order] = np.arange(self.node_order.shape[0])
        return internal[: self.n_query]


def adjacency(knn_indices: np.ndarray, n_cols: int | None = None) -> SparseRows:
    """Binary kNN adjacency: ``A[i, R[i, j]] = 1`` for every listed neighbour.

    Args:
        knn_indices: ``[r, k1]`` int64 neighbour ids.
        n_cols: number of nodes N (default ``r``: the rows of all nodes).
    """
    n_cols = knn_indices.shape[0] if n_cols is None else n_cols
    return SparseRows.from_dense_rows(knn_indices, np.ones(knn_indices.shape, np.float32), n_cols)


def symmetrise(a: SparseRows | np.ndarray) -> SparseRows | np.ndarray:
    """``A + A.T`` for a square A, with exactly symmetric values (dense A: in place).

    Sparse A is built as an aggregation: row i of the stacked matrix ``[A; A.T]`` gives
    ``A[i]`` and row ``n + i`` gives ``A.T[i]``, each with weight 1.
    """
    if isinstance(a, np.ndarray):
        symmetrise_in_place(a)
        return a
    n, nnz = a.n_rows, a.nnz
    indices = np.empty(2 * nnz, dtype=np.int64)
    values = np.empty(2 * nnz, dtype=np.float32)
    indices[:nnz], values[:nnz] = a.indices, a.values
    # int64 ids as they are (not unsigned): the argument types of the inductive graph's
    # transpose of W, so that both share one compiled kernel
    t_indptr = transpose(a.indptr, a.indices, a.values, a.n_cols, indices[nnz:], values[nnz:])
    stacked = SparseRows(np.concatenate([a.indptr, t_indptr[1:] + nnz]), indices, values, a.n_cols)
    rows = np.arange(n, dtype=np.int64)
    own_and_transposed = np.stack([rows, rows + n], axis=1)
    return aggregate(
        rows,
        own_and_transposed,
        np.ones((n, 2), np.float32),
        stacked,
        normalize=False,
        dense_allowed=False,
    )


def aggregate(
    rows: np.ndarray,
    nbr_idx: np.ndarray,
    nbr_w: np.ndarray,
    s: SparseRows | np.ndarray,
    *,
    normalize: bool = True,
    dense_allowed: bool = True,
) -> SparseRows | np.ndarray:
    """Rows ``rows`` of ``W @ S``, each L2-normalised when ``normalize``.

    Args:
        rows: ``[r]`` int64 row ids to build.
        nbr_idx: ``[N, t]`` int64 the non-zero columns of W per row.
        nbr_w: ``[N, t]`` float32 their values.
        s: ``[N, N]`` sparse rows, or a dense float32 array.
        dense_allowed: build dense rows when the predicted CSR is larger than
            ``limits.DENSE_WHEN_CSR_EXCEEDS`` of the dense size (at least
            ``limits.DENSE_MIN_BYTES``);
            rows aggregated from a dense S are always dense.

    Returns:
        ``[r, N]`` sparse rows, or a dense float32 array.
    """
    n_cols = s.shape[1] if isinstance(s, np.ndarray) else s.n_cols
    if not isinstance(s, np.ndarray):
        counts = count_row_nnz(
            unsigned(rows), unsigned(nbr_idx), unsigned(s.indptr), unsigned(s.indices), s.n_cols
        )
        nnz = int(counts.sum())
    dense_bytes = 4 * rows.shape[0] * n_cols
    if isinstance(s, np.ndarray) or (
        dense_allowed
        and dense_bytes >= limits.DENSE_MIN_BYTES
        and 12 * nnz > limits.DENSE_WHEN_CSR_EXCEEDS * dense_bytes
    ):
        check_fits(
            dense_bytes,
            f"propagating these features ({n_cols} nodes whose rows are dense: many "
            f"identical or near-identical features) as a dense float32 "
            f"[{rows.shape[0]}, {n_cols}] matrix",
            "remove duplicate features or re-rank fewer items at a time",
        )
        out = np.empty((rows.shape[0], n_cols), np.float32)
        source = s if isinstance(s, np.ndarray) else (s.indptr, s.indices, s.values)
        aggregate_to_dense(
            rows,
            nbr_idx,
            nbr_w,
            source,
            n_cols,
            out,
            np.empty(rows.shape[0], np.float32),
            normalize=normalize,
            eps=np.float32(NORM_EPS),
        )
        return out
    indptr = np.zeros(rows.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(nnz, dtype=np.int64)
    values = np.empty(nnz, dtype=np.float32)
    norms = np.empty(rows.shape[0], dtype=np.float32)
    fill_rows(
        unsigned(rows),
        unsigned(nbr_idx),
        nbr_w,
        unsigned(s.indptr),
        unsigned(s.indices),
        s.values,
        s.n_cols,
        indptr,
        unsigned(indices),
        values,
        norms,
        normalize,
        np.float32(NORM_EPS),
    )
    return SparseRows(indptr, indices, values, s.n_cols)


def top_k2_weights(knn_values: np.ndarray, knn_indices: np.ndarray, k2: int):
    """The non-zeros of W for kNN lists that may have gaps (-1): ``(w_idx [g, k2] int64,
    w_val [g, k2] float32)``, the squared similarities of each node's first k2
    neighbours; missing neighbours point at the node itself with weight 0."""
    idx = knn_indices[:, :k2]
    own = np.arange(idx.shape[0], dtype=np.int64)[:, None]
    w_idx = np.where(idx >= 0, idx, own)
    w_val = np.where(idx >= 0, knn_values[:, :k2] ** 2, 0).astype(np.float32)
    return np.ascontiguousarray(w_idx), np.ascontiguousarray(w_val)


def locality_order(knn_indices: np.ndarray) -> np.ndarray:
    """Reverse Cuthill-McKee order of the symmetrised kNN graph: ``[N]`` int64, new -> old."""
    a = adjacency(knn_indices).to_scipy()
    return reverse_cuthill_mckee((a + a.T).tocsr(), symmetric_mode=True).astype(np.int64)


def propagate(
    knn_values: np.ndarray,
    knn_indices: np.ndarray,
    *,
    n_query: int,
    k2: int,
    iterations: int,
    all_pairs: bool = False,
) -> PropagatedGraph:
    """Run steps 2-4 and return the inputs of the final scoring.

    Args:
        knn_values: ``[N, k1]`` float32 similarities, descending per row.
        knn_indices: ``[N, k1]`` int64 neighbour ids (queries are nodes ``0 .. q-1``).
        n_query: q.
        k2: neighbours aggregated per round; ``k2 == 1`` skips propagation.
        iterations: propagation rounds; 0 skips propagation.
        all_pairs: every node is both a query and a gallery item (``n_query`` must be
            N): the scoring then gives the ``[N, N]`` scores of all pairs (clustering).
    """
    n = knn_indices.shape[0]
    node_order = locality_order(knn_indices)
    internal_id = np.empty(n, dtype=np.int64)
    internal_id[node_order] = np.arange(n, dtype=np.int64)
    gallery_nodes = slice(0, n) if all_pairs else slice(n_query, n)
    query_ids, gallery_ids = internal_id[:n_query], internal_id[gallery_nodes]
    if k2 == 1 or iterations == 0:
        k1 = knn_indices.shape[1]
        return PropagatedGraph(
            query_rows=adjacency(internal_id[knn_indices[:n_query]], n),
            mixing=SparseRows.identity(n),
            gallery_idx=internal_id[knn_indices[gallery_nodes]],
            gallery_val=np.ones((gallery_ids.shape[0], k1), np.float32),
            gallery_inv_norm=np.ones(gallery_ids.shape[0], np.float32),
            node_order=node_order,
        )
    # W in internal ids: row p holds the neighbours of node node_order[p]
    nbr_idx = internal_id[knn_indices[node_order, :k2]]
    nbr_w = np.ascontiguousarray(knn_values[node_order, :k2]) ** 2
    a = adjacency(internal_id[knn_indices[node_order]])
    all_rows = np.arange(n, dtype=np.int64)
    for _ in range(iterations - 1):
        a = aggregate(all_rows, nbr_idx, nbr_w, symmetrise(a))
    mixing = symmetrise(a)
    del a
    # the query rows are dense exactly when M is (the scoring multiplies them)
    query_rows = aggregate(query_ids, nbr_idx, nbr_w, mixing, dense_allowed=False)
    if isinstance(mixing, np.ndarray):
        gallery_norms = dense_row_norms(gallery_ids, nbr_idx, nbr_w, mixing)
    else:
        gallery_norms = row_norms(
            unsigned(gallery_ids),
            unsigned(nbr_idx),
            nbr_w,
            unsigned(mixing.indptr),
            unsigned(mixing.indices),
            mixing.values,
            mixing.n_cols,
        )
    if not isinstance(mixing, np.ndarray) and n < 2**31:  # what the scoring streams
        mixing, query_rows = mixing.with_int32_indices(), query_rows.with_int32_indices()
    return PropagatedGraph(
        query_rows=query_rows,
        mixing=mixing,
        gallery_idx=nbr_idx[gallery_ids],
        gallery_val=nbr_w[gallery_ids],
        gallery_inv_norm=(1.0 / np.maximum(gallery_norms, np.float32(NORM_EPS))).astype(np.float32),
        node_order=node_order,
    )
