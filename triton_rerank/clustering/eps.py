"""DBSCAN's radius from a quantile of the pairwise distances: the ``rho`` rule.

Several unsupervised re-ID projects (the UDA and self-similarity-grouping training
scripts that SpCL and its descendants start from) choose ``eps`` once, from the first
epoch's distances: the strict upper triangle's non-zero entries, sorted; ``top =
round(rho * count)``; ``eps`` = the mean of the ``top`` smallest (``rho = 1.6e-3``).
:func:`eps_from_rho` gives the same number from the sparse matrices of this package,
bit for bit: a pair the matrix does not store is farther than every stored one, so the
``top`` smallest are stored ones as long as ``top`` does not exceed the stored non-zero
pairs. ``reference.eps_from_rho_reference`` is the dense rule.
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse

# The projects' value.
DEFAULT_RHO = 1.6e-3


class TooFewStoredPairs(ValueError):
    """The ``rho`` rule needs more of the smallest distances than the matrix stores."""


def checked_rho(rho) -> float:
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real):
        raise TypeError(f"rho must be a real number in (0, 1], got {rho!r}")
    if not 0.0 < float(rho) <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    return float(rho)


def eps_from_rho(distances, rho: float = DEFAULT_RHO, *, unstored: float | None = None) -> float:
    """The mean of the ``round(rho * count)`` smallest non-zero pairwise distances.

    Args:
        distances: ``[N, N]`` symmetric distances: a dense numpy array, or a sparse
            matrix of this package (``jaccard_distance``, ``gnn_distance``,
            ``cosine_distance``: pairs not stored are farther than every stored one;
            stored zeros count as zeros).
        rho: the share of the ``N (N - 1) / 2`` pairs, in ``(0, 1]``.
        unstored: the distance of every pair the sparse matrix does not store, when it
            is known: ``1.0`` for ``jaccard_distance(..., max_distance=1)`` (pairs that
            share no support are at exactly 1). Lets the rule reach past the stored pairs.

    Returns:
        ``eps`` as a Python float, equal to the dense rule on the same distances.

    Raises:
        TooFewStoredPairs (a ValueError): the rule needs more pairs than are stored;
            compute the distances with a larger ``max_distance``.
        ValueError: not a square matrix, fewer than 2 items, or ``rho`` so small that no
            pair is taken.
    """
    rho = checked_rho(rho)
    if distances.ndim != 2 or distances.shape[0] != distances.shape[1]:
        raise ValueError(f"distances must be a square [N, N] matrix, got shape {distances.shape}")
    n = distances.shape[0]
    if n < 2:
        raise ValueError(f"the rho rule needs at least 2 items, got {n}")
    if not scipy.sparse.issparse(distances):
        upper = np.asarray(distances)[np.triu_indices(n, 1)]
        stored, n_unstored = upper[upper != 0], 0
    else:
        coo = distances.tocoo()
        upper = coo.data[coo.col > coo.row]
        stored = upper[upper != 0]
        n_unstored = n * (n - 1) // 2 - upper.size
    top = int(np.round(rho * (stored.size + n_unstored)))
    if top == 0:
        raise ValueError(
            f"rho = {rho} takes no pair: {stored.size + n_unstored} non-zero distances"
        )
    smallest = np.sort(stored)[:top]
    if top > stored.size:
        if unstored is None:
            raise TooFewStoredPairs(
                f"rho = {rho} needs the {top} smallest non-zero distances but only "
                f"{stored.size} are stored: compute the distances with a larger max_distance"
            )
        smallest = np.concatenate([smallest, np.full(top - stored.size, unstored, stored.dtype)])
    return float(smallest.mean())
