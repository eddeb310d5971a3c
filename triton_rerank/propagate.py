"""Steps 2-4 of the algorithm on sparse rows: adjacency, symmetrise, aggregate, normalise.

Row supports grow every round (k1, then about ``k2 * 2 * k1``, then about ``k2 * 2``
times that), so rows are kept sparse; at Market-1501 scale they end near 1,000
non-zeros out of 23,100 columns. The last round is not materialised for the
gallery: scoring only needs the query rows and the gallery rows' norms (see
``cpu/two_hop_scores.py``), which saves the largest matrix of the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cpu.aggregate import count_row_nnz, fill_rows, row_norms
from .sparse_rows import SparseRows

# Floor of a row's L2 norm: a row of norm 0 stays 0 instead of becoming NaN.
NORM_EPS = 1e-12


@dataclass(frozen=True)
class PropagatedGraph:
    """What the final scoring needs after propagation.

    The re-ranked score of query ``i`` and gallery ``j`` is ``<A[i], A[q + j]>`` with::

        A[q + j] = gallery_inv_norm[j] * sum_t gallery_val[j, t] * M[gallery_idx[j, t]]

    Attributes:
        query_rows: ``[q, N]`` the final rows of the queries.
        mixing: ``[N, N]`` symmetric M (``A + A.T`` of the last round, or the identity).
        gallery_idx: ``[g, t]`` int64 node ids.
        gallery_val: ``[g, t]`` float32 weights.
        gallery_inv_norm: ``[g]`` float32.
    """

    query_rows: SparseRows
    mixing: SparseRows
    gallery_idx: np.ndarray
    gallery_val: np.ndarray
    gallery_inv_norm: np.ndarray


def adjacency(knn_indices: np.ndarray) -> SparseRows:
    """Binary kNN adjacency: ``A[i, R[i, j]] = 1`` for every listed neighbour.

    Args:
        knn_indices: ``[N, k1]`` int64.
    """
    return SparseRows.from_dense_rows(knn_indices, np.ones(knn_indices.shape, np.float32),
                                      knn_indices.shape[0])


def symmetrise(a: SparseRows) -> SparseRows:
    """``A + A.T`` (exactly symmetric values)."""
    m = a.to_scipy()
    return SparseRows.from_scipy(m + m.T)


def aggregate(rows: np.ndarray, nbr_idx: np.ndarray, nbr_w: np.ndarray, s: SparseRows,
              *, normalize: bool = True) -> SparseRows:
    """Rows ``rows`` of ``W @ S``, each L2-normalised when ``normalize``.

    Args:
        rows: ``[r]`` int64 row ids to build.
        nbr_idx: ``[N, t]`` int64 the non-zero columns of W per row.
        nbr_w: ``[N, t]`` float32 their values.
        s: ``[N, N]`` sparse rows.

    Returns:
        ``[r, N]`` sparse rows.
    """
    counts = count_row_nnz(rows, nbr_idx, s.indptr, s.indices, s.n_cols)
    indptr = np.zeros(rows.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(int(indptr[-1]), dtype=np.int64)
    values = np.empty(int(indptr[-1]), dtype=np.float32)
    norms = np.empty(rows.shape[0], dtype=np.float32)
    fill_rows(rows, nbr_idx, nbr_w, s.indptr, s.indices, s.values, s.n_cols,
              indptr, indices, values, norms, normalize, np.float32(NORM_EPS))
    return SparseRows(indptr, indices, values, s.n_cols)


def propagate(knn_values: np.ndarray, knn_indices: np.ndarray, *, n_query: int, k2: int,
              iterations: int) -> PropagatedGraph:
    """Run steps 2-4 and return the inputs of the final scoring.

    Args:
        knn_values: ``[N, k1]`` float32 similarities, descending per row.
        knn_indices: ``[N, k1]`` int64 neighbour ids (queries are nodes ``0 .. q-1``).
        n_query: q.
        k2: neighbours aggregated per round; ``k2 == 1`` skips propagation.
        iterations: propagation rounds; 0 skips propagation.
    """
    n = knn_indices.shape[0]
    a = adjacency(knn_indices)
    if k2 == 1 or iterations == 0:
        k1 = knn_indices.shape[1]
        return PropagatedGraph(
            query_rows=a.row_slice(0, n_query),
            mixing=SparseRows.identity(n),
            gallery_idx=np.ascontiguousarray(knn_indices[n_query:]),
            gallery_val=np.ones((n - n_query, k1), np.float32),
            gallery_inv_norm=np.ones(n - n_query, np.float32),
        )
    nbr_idx = np.ascontiguousarray(knn_indices[:, :k2])
    nbr_w = np.ascontiguousarray(knn_values[:, :k2]) ** 2
    all_rows = np.arange(n, dtype=np.int64)
    for _ in range(iterations - 1):
        a = aggregate(all_rows, nbr_idx, nbr_w, symmetrise(a))
    mixing = symmetrise(a)
    query_rows = aggregate(all_rows[:n_query], nbr_idx, nbr_w, mixing)
    gallery_norms = row_norms(all_rows[n_query:], nbr_idx, nbr_w, mixing.indptr,
                              mixing.indices, mixing.values, mixing.n_cols)
    return PropagatedGraph(
        query_rows=query_rows,
        mixing=mixing,
        gallery_idx=nbr_idx[n_query:],
        gallery_val=nbr_w[n_query:],
        gallery_inv_norm=(1.0 / np.maximum(gallery_norms, np.float32(NORM_EPS))).astype(
            np.float32),
    )
