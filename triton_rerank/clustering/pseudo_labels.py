"""DBSCAN pseudo-labels of unsupervised re-ID, on a sparse re-ranked distance.

The projects run ``DBSCAN(eps=0.6, min_samples=4, metric="precomputed")`` on the dense
``[N, N]`` Jaccard distance every epoch. DBSCAN only looks at the pairs within ``eps``
(its neighbourhood is ``d <= eps``), so :func:`pseudo_labels` gives it a sparse matrix
holding exactly those pairs (``jaccard.py``, ``gnn.py`` or ``cosine.py``), and the
labels are those of DBSCAN on the dense matrix.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .. import checks
from .cosine import cosine_distance
from .eps import DEFAULT_RHO, TooFewStoredPairs, checked_rho, eps_from_rho
from .gnn import gnn_distance
from .inputs import row_count
from .jaccard import jaccard_distance

METHODS = ("jaccard", "gnn", "cosine")
# The default radius per method: the projects' for Jaccard; for GNN the best of
# 0.02-0.3 on scikit-learn's digits and on 10,000 Fashion-MNIST images (NMI 0.87 and
# 0.54; Jaccard at 0.6: 0.87 and 0.49). The cosine distance's scale depends on the
# features too much for one value: its radius comes from the rho rule unless given.
DEFAULT_EPS = {"jaccard": 0.6, "gnn": 0.1}
# The largest distance of each method.
LARGEST = {"jaccard": 1.0, "gnn": 2.0, "cosine": 2.0}
# Where the rho rule starts looking for the Jaccard distance: its default max_distance.
FIRST_MAX_DISTANCE = {"jaccard": 0.7}


def method_distance(features, method: str, max_distance: float, **options):
    """The sparse distance of ``method`` (``"jaccard"``, ``"gnn"`` or ``"cosine"``) with
    pairs below ``max_distance``; ``options``: its own parameters."""
    if method == "jaccard":
        return jaccard_distance(features, max_distance=max_distance, **options)
    if method == "gnn":
        return gnn_distance(features, max_distance=max_distance, **options)
    return cosine_distance(features, max_distance=max_distance, **options)


def eps_by_rho(features, method: str, rho: float, **options):
    """The ``rho`` rule's radius (``eps.py``) for ``method``'s distance.

    GNN and cosine: one pass over all pairs that keeps only the smallest ones the rule
    can take (``max_pairs``). Jaccard: the sparse matrix below the default
    ``max_distance``, and with ``max_distance = 1`` (pairs not stored then at exactly 1)
    when that stores too few pairs.

    Returns:
        ``(eps, distances, complete_below)``: the radius, the sparse matrix it came from,
        and a distance below which that matrix stores every pair.
    """
    if method != "jaccard":
        n = row_count(features)
        most = int(np.round(rho * (n * (n - 1) // 2))) + 1
        distances = method_distance(features, method, LARGEST[method], max_pairs=most, **options)
        # max_pairs keeps every pair up to the largest one kept (ties included)
        largest_kept = np.float32(distances.data.max(initial=0.0))
        complete_below = float(np.nextafter(largest_kept, np.float32(np.inf)))
        return eps_from_rho(distances, rho), distances, complete_below
    max_distance = FIRST_MAX_DISTANCE[method]
    try:
        distances = jaccard_distance(features, max_distance=max_distance, **options)
        return eps_from_rho(distances, rho), distances, max_distance
    except TooFewStoredPairs:
        distances = jaccard_distance(features, max_distance=1.0, **options)
        return eps_from_rho(distances, rho, unstored=1.0), distances, 1.0


@dataclass(frozen=True)
class Clustering:
    """What :func:`cluster` found.

    Attributes:
        labels: ``[N]`` int64 cluster labels, ``-1`` for noise.
        eps: DBSCAN's radius (given, or from the ``rho`` rule).
        stored_pairs: entries of the sparse distance matrix DBSCAN ran on.
    """

    labels: np.ndarray
    eps: float
    stored_pairs: int


def cluster(
    features,
    *,
    method: str = "jaccard",
    eps: float | None = None,
    rho: float | None = None,
    min_samples: int = 4,
    **options,
) -> Clustering:
    """:func:`pseudo_labels`, with the radius used and the size of the matrix."""
    from sklearn.cluster import DBSCAN

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if method == "cosine" and options:
        raise TypeError(f"method 'cosine' takes no options, got {', '.join(options)}")
    if eps is not None and rho is not None:
        raise ValueError("give eps or rho, not both")
    min_samples = checks.check_int(min_samples, "min_samples", minimum=1)
    distances = None
    if eps is None:
        if method in DEFAULT_EPS and rho is None:
            eps = DEFAULT_EPS[method]
        else:
            rho = checked_rho(DEFAULT_RHO if rho is None else rho)
            eps, distances, complete_below = eps_by_rho(features, method, rho, **options)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {eps!r}")
    eps = float(eps)
    if not 0.0 < eps < LARGEST[method]:
        raise ValueError(
            f"eps must be in (0, {LARGEST[method]:g}) for method {method!r}, got {eps}"
        )
    # DBSCAN compares the float32 distances with eps in float32 (numpy's weak Python
    # scalars): it needs every pair with float32 distance <= float32(eps)
    cutoff = float(np.nextafter(np.float32(eps), np.float32(np.inf)))
    # the rho rule's matrix serves when it holds every pair DBSCAN needs
    if distances is None or not np.float32(eps) < complete_below:
        distances = method_distance(features, method, min(cutoff, LARGEST[method]), **options)
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(distances)
    return Clustering(labels.astype(np.int64), eps, int(distances.nnz))


def pseudo_labels(
    features,
    *,
    method: str = "jaccard",
    eps: float | None = None,
    rho: float | None = None,
    min_samples: int = 4,
    **options,
) -> np.ndarray:
    """Cluster labels of ``features`` by DBSCAN on a re-ranked (or plain) distance.

    Args:
        features: ``[N, d]`` floats (numpy array or torch tensor), made unit rows.
        method: ``"jaccard"`` (the k-reciprocal Jaccard distance of the projects),
            ``"gnn"`` (the GNN re-ranked distance) or ``"cosine"`` (no re-ranking).
        eps: DBSCAN's radius, in ``(0, largest distance)`` (1 for Jaccard, 2 otherwise).
        rho: choose ``eps`` by the ``rho`` rule instead (``eps.py``; the projects use
            1.6e-3). With neither: ``eps = 0.6`` for Jaccard (the projects' value), 0.1
            for GNN (see ``DEFAULT_EPS``), ``rho = 1.6e-3`` for cosine.
        min_samples: DBSCAN's core-point size, the point itself included (>= 1).
        options: the method's parameters (``k1``, ``k2`` for Jaccard; ``k1``, ``k2``,
            ``iterations``, ``lamb`` for GNN; ``backend`` for both).

    Returns:
        ``[N]`` int64 labels, ``-1`` for noise; identical to
        ``DBSCAN(eps, min_samples=min_samples, metric="precomputed").fit_predict(D)`` on
        the dense float32 distance matrix ``D``.

    Raises:
        ValueError: an unknown method, both ``eps`` and ``rho``, ``eps`` or ``rho`` out of
            range, ``min_samples < 1``, and the errors of the distance.
        TypeError: an option the method does not take.
    """
    return cluster(
        features, method=method, eps=eps, rho=rho, min_samples=min_samples, **options
    ).labels
