"""The k-reciprocal Jaccard distance of unsupervised re-ID, as a sparse matrix.

Unsupervised re-ID projects (SpCL, cluster-contrast-reid, MMT, OpenUnReID) cluster
their training features every epoch with DBSCAN on the k-reciprocal Jaccard distance
of Zhong et al. (*Re-ranking Person Re-identification with k-reciprocal Encoding*, CVPR
2017), computed by ``compute_jaccard_distance(features, k1, k2)`` of their
``faiss_rerank.py``. That code holds dense ``[N, N]`` matrices (out of memory at a few
hundred thousand images), although DBSCAN only needs the pairs closer than its ``eps``.
:func:`jaccard_distance` computes the same distances and keeps only the close pairs.

The algorithm, for features ``X [N, d]`` (rows made unit rows first):

1. ``R[i]``: the canonical top-``k1`` list of node ``i`` (``cpu/knn.py`` ``knn_graph``,
   self included, the tie rule: equal similarities, smaller index first). The published
   code takes the same ``k1`` nearest by L2 distance (FAISS), which on unit rows is the
   order of the cosine similarity ``c(i, j)``.
2. The k-reciprocal set ``K(i, k) = {j in R[i][:k] : i in R[j][:k]}``, for ``k = k1`` and
   for ``k = round(k1 / 2) + 1`` (numpy's rounding, half to even).
3. The expanded set ``E(i)``: ``K(i, k1)``, plus ``H = K(c, round(k1 / 2) + 1)`` for
   each ``c`` in ``K(i, k1)`` with ``|H & K(i, k1)| > 2/3 |H|``.
4. Weights ``V[i, j] = softmax_j(-(2 - 2 c(i, j)))`` over ``j`` in ``E(i)``, 0 elsewhere
   (``2 - 2 c`` is the squared L2 distance of unit rows).
5. Query expansion (when ``k2 > 1``): ``V[i] <- mean of V[R[i][t]] for t < k2``.
6. ``m_ij = sum_k min(V[i, k], V[j, k])``, ``d_ij = max(0, 1 - m_ij / (2 - m_ij))``.

Every row of ``V`` has a support of ``O(k1 * k2)`` columns, so ``m`` is a sparse
"min-sum" join: row ``i`` walks the inverted lists of its columns (which rows hold
column ``k``), and only pairs that share a column can have ``d < 1``. Memory is
``O(N k1 k2)`` for ``V`` and its inverted index, plus the output; the kernels are in
``cpu/kernels/jaccard.py``. The kNN lists come from the CPU path, or from the Triton
kernels for CUDA tensors (the same lists).

Differences from the published code. The kNN lists are exact (canonical similarities,
the tie rule) where FAISS ranks by float32 ``|x|^2 + |y|^2 - 2 x.y``, whose error (about
1e-5 at d=2048) can swap near-ties at the ``k1``-th place: a few rows' lists, and so
their distances, differ (benchmarks/results/clustering.md: 4 of 12,936 rows). Given the
same lists the distances agree to below 1e-6: similarities are canonical (float64 sums
rounded to float32) instead of a float32 product, weights, means and sums are float64
instead of float32, and the diagonal is exact (see :func:`jaccard_distance`). The dense
oracle is ``triton_rerank.reference.jaccard_distance_reference`` (tests/test_clustering.py).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from .. import checks
from ..cpu.kernels.jaccard import expanded_weights, jaccard_upper, query_expansion
from .inputs import (
    checked_features,
    checked_max_distance,
    knn_backend,
    knn_lists,
    symmetric_matrix,
)

# Pairs kept by default: d < 0.7 covers the DBSCAN eps of the projects (0.6 in SpCL and
# cluster-contrast-reid, SpCL's loose 0.62, 0.5 with k1=15, k2=4) while keeping the
# output near the size of the clusters themselves: d < t needs m > 2 (1 - t) / (2 - t),
# a large share of a row's weight, which few rows can have in common with it.
DEFAULT_MAX_DISTANCE = 0.7


def checked_k(k1, k2, n: int) -> tuple[int, int]:
    """``(k1, k2)`` after checking ``1 <= k2 <= k1 < n``."""
    if n < 2:
        raise ValueError(f"the Jaccard distance needs at least 2 features, got {n}")
    k1 = checks.check_int(
        k1,
        "k1",
        minimum=1,
        maximum=n - 1,
        maximum_reason=f"k1 must be smaller than the number of features, {n}",
    )
    k2 = checks.check_int(k2, "k2", minimum=1, maximum=k1, maximum_reason="k2 must not exceed k1")
    return k1, k2


def jaccard_upper_triangle(
    features, *, k1: int, k2: int, max_distance: float, backend: str = "auto"
):
    """The checked-input part of :func:`jaccard_distance`: its strict upper triangle
    ``(indptr [N + 1], columns, values)`` (pairs with ``d < max_distance``) and its
    ``[N]`` float32 diagonal."""
    backend = knn_backend(features, backend)
    nodes = checked_features(features)
    n = nodes.shape[0]
    k1, k2 = checked_k(k1, k2, n)
    max_distance = checked_max_distance(max_distance, 1.0)
    device = getattr(features, "device", None)
    sims, ranks = knn_lists(nodes, k1, backend=backend, device=device)
    weights = expanded_weights(ranks, sims, nodes, k1)  # V: (indptr, columns, values)
    if k2 > 1:
        weights = query_expansion(ranks, k2, *weights)
    del sims, ranks
    upper = jaccard_upper(*weights, max_distance)
    empty_row = np.diff(weights[0]) == 0
    diagonal = np.where(empty_row, np.float32(1.0), np.float32(0.0)).astype(np.float32)
    return upper, diagonal


def jaccard_distance(
    features,
    *,
    k1: int = 30,
    k2: int = 6,
    max_distance: float = DEFAULT_MAX_DISTANCE,
    backend: str = "auto",
) -> scipy.sparse.csr_matrix:
    """The k-reciprocal Jaccard distance of every pair of features closer than
    ``max_distance``, as a sparse matrix (the algorithm is in the module doc).

    Args:
        features: ``[N, d]`` floats (numpy array, torch tensor on any device); each row is
            made a canonical unit row first (the projects pass L2-normalised features,
            whose unit rows differ from them by at most a rounding).
        k1: neighbours of the k-reciprocal sets, ``1 <= k1 < N`` (the projects: 30, or 20).
        k2: neighbours of the query expansion, ``1 <= k2 <= k1`` (1: none).
        max_distance: in ``(0, 1]``; the pairs kept are those whose float32 distance is
            below it. With 1 every pair that shares support is kept, which can be
            nearly ``N x N`` (every other pair is at distance exactly 1). The default 0.7
            covers the DBSCAN ``eps`` of the projects and keeps the output about the
            size of the clusters.
        backend: where the kNN lists are computed: ``"auto"`` (the Triton kernels for
            CUDA tensors, the CPU otherwise), ``"cpu"`` or ``"triton"`` (as
            :func:`triton_rerank.gnn_rerank`); the lists, and so the distances, are the
            same. The rest runs on the CPU.

    Returns:
        ``[N, N]`` float32 CSR matrix, symmetric, each row's columns ascending, holding
        every pair ``(i, j)`` with ``d(i, j) < max_distance``, zeros included as explicit
        entries (a pair at distance 0 is stored as a 0), and always the diagonal: 0, or 1
        for a node whose weight row is empty (possible only with ``k2 = 1``, for a node
        preceded by ``k1`` or more duplicates of itself, where the published code gives
        1 too). A pair not stored is at distance ``>= max_distance``. This is the input
        DBSCAN (``metric="precomputed"``) expects: stored entries, zeros included, are
        distances, missing ones are not neighbours.

    Raises:
        ValueError: bad features (not 2-D, empty, NaN or inf, a zero row), ``k1 >= N``,
            ``k2 > k1``, ``max_distance`` outside ``(0, 1]``, or an unknown backend.
        TypeError: a non-integer ``k1`` or ``k2``, a non-float ``max_distance`` or
            non-float features.
    """
    upper, diagonal = jaccard_upper_triangle(
        features, k1=k1, k2=k2, max_distance=max_distance, backend=backend
    )
    return symmetric_matrix(upper, diagonal)
