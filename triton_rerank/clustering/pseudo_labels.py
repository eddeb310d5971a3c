"""DBSCAN pseudo-labels of unsupervised re-ID, on the sparse Jaccard distance.

The projects run ``DBSCAN(eps=0.6, min_samples=4, metric="precomputed")`` on the dense
``[N, N]`` Jaccard distance every epoch. DBSCAN only looks at the pairs within ``eps``
(its neighbourhood is ``d <= eps``), so :func:`pseudo_labels` gives it the sparse matrix
of :func:`~triton_rerank.clustering.jaccard.jaccard_distance` holding exactly those
pairs, and the labels are those of DBSCAN on the dense matrix.
"""

from __future__ import annotations

import numbers

import numpy as np

from .. import checks
from .jaccard import jaccard_distance

METHODS = ("jaccard",)


def pseudo_labels(
    features,
    *,
    method: str = "jaccard",
    eps: float = 0.6,
    min_samples: int = 4,
    k1: int = 30,
    k2: int = 6,
) -> np.ndarray:
    """Cluster labels of ``features`` by DBSCAN on their k-reciprocal Jaccard distance.

    Args:
        features: ``[N, d]`` floats (numpy array or torch tensor), made unit rows.
        method: ``"jaccard"`` (the only one so far).
        eps: DBSCAN's radius, ``0 < eps < 1`` (at 1 every pair would be neighbours).
        min_samples: DBSCAN's core-point size, the point itself included (>= 1).
        k1, k2: of :func:`~triton_rerank.clustering.jaccard.jaccard_distance`.

    Returns:
        ``[N]`` int64 labels, ``-1`` for noise; identical to
        ``DBSCAN(eps, min_samples=min_samples, metric="precomputed").fit_predict(D)`` on
        the dense float32 distance matrix ``D``.

    Raises:
        ValueError: an unknown method, ``eps`` outside ``(0, 1)``, ``min_samples < 1``,
            and the errors of ``jaccard_distance``.
    """
    from sklearn.cluster import DBSCAN

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number in (0, 1), got {eps!r}")
    eps = float(eps)
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    min_samples = checks.check_int(min_samples, "min_samples", minimum=1)
    # DBSCAN compares the float32 distances with eps in float32 (numpy's weak Python
    # scalars): keep every pair with float32 distance <= float32(eps)
    cutoff = float(np.nextafter(float(np.float32(eps)), np.inf))
    distances = jaccard_distance(features, k1=k1, k2=k2, max_distance=cutoff)
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(distances)
    return labels.astype(np.int64)
