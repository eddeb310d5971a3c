"""``compute_jaccard_distance`` with the call shape of the unsupervised re-ID projects.

SpCL, cluster-contrast-reid and their descendants call
``compute_jaccard_distance(features, k1=..., k2=..., print_flag=..., search_option=...,
use_float16=...)`` from their ``utils/faiss_rerank.py`` and pass the result to DBSCAN.
Importing this one instead::

    from triton_rerank.clustering import compute_jaccard_distance

gives the same distances (``jaccard.py``: exact kNN lists, float64 sums) without their
dense ``[N, N]`` matrices:

- up to ``DENSE_MAX_ITEMS`` features (a dense float32 result of at most 1 GiB), a dense
  ``[N, N]`` numpy array, every entry set (pairs that share no support at exactly 1),
  so code that slices or sorts the matrix (the ``rho`` rule) keeps working;
- above, a sparse CSR matrix of the pairs closer than ``max_distance`` (0.7 by default,
  above the projects' DBSCAN ``eps`` of 0.6), which ``DBSCAN(metric="precomputed")``
  takes as it is: missing pairs are not neighbours. Code that needs every entry must
  then change (``eps_from_rho`` does the ``rho`` rule on the sparse matrix).

``dense=True`` / ``False`` forces either form.
"""

from __future__ import annotations

import time

import numpy as np

from .inputs import row_count
from .jaccard import DEFAULT_MAX_DISTANCE, jaccard_distance, jaccard_upper_triangle

# The largest N returned dense by default: a [N, N] float32 matrix of 1 GiB.
DENSE_MAX_ITEMS = 16384


def compute_jaccard_distance(
    target_features,
    k1: int = 20,
    k2: int = 6,
    print_flag: bool = True,
    search_option: int = 0,
    use_float16: bool = False,
    *,
    dense: bool | None = None,
    max_distance: float = DEFAULT_MAX_DISTANCE,
    backend: str = "auto",
):
    """The k-reciprocal Jaccard distance of ``target_features`` (see the module doc).

    Args:
        target_features: ``[N, d]`` torch tensor (any device) or numpy array.
        k1, k2: as the projects' (``k1 < N``, ``1 <= k2 <= k1``).
        print_flag: print the time taken, as the projects' function does.
        search_option: accepted for compatibility and ignored: the kNN is exact on
            every backend (``backend`` picks where it runs).
        use_float16: accepted and ignored: the weights are float64, the result float32.
        dense: the result's form; None: dense up to ``DENSE_MAX_ITEMS`` features.
        max_distance: the sparse form's cutoff, in ``(0, 1]`` (not used when dense).
        backend: where the kNN runs (``"auto"``: the Triton kernels for CUDA tensors).

    Returns:
        ``[N, N]`` float32: a numpy array, or a ``scipy.sparse`` CSR matrix.
    """
    del search_option, use_float16
    start = time.perf_counter()
    if print_flag:
        print("Computing jaccard distance...")
    n = row_count(target_features)
    if dense is None:
        dense = n <= DENSE_MAX_ITEMS
    if dense:
        (indptr, columns, values), diagonal = jaccard_upper_triangle(
            target_features, k1=k1, k2=k2, max_distance=1.0, backend=backend
        )
        result = np.ones((n, n), np.float32)
        rows = np.repeat(np.arange(n), np.diff(indptr))
        result[rows, columns] = values
        result[columns, rows] = values
        result[np.arange(n), np.arange(n)] = diagonal
    else:
        result = jaccard_distance(
            target_features, k1=k1, k2=k2, max_distance=max_distance, backend=backend
        )
    if print_flag:
        print(f"Jaccard distance computing time cost: {time.perf_counter() - start}")
    return result
