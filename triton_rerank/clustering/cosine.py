"""The plain cosine distance of every pair of features, as a sparse matrix: the
no-re-ranking baseline of the clustering (``pseudo_labels(method="cosine")``).

``d(i, j) = max(0, 1 - <u_i, u_j>)`` of the canonical unit rows, from float32 matrix
products one block of rows at a time (within about ``d * 6e-8`` of the canonical value
of ``reference.cosine_distance_reference``), ``d(i, i) = 0``. Time ``O(N^2 d)``, memory
one block plus the output.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import torch

from .. import checks
from .inputs import (
    checked_features,
    checked_max_distance,
    symmetric_matrix,
    upper_pairs_from_scores,
)

# Pairs kept by default: cosine similarity above 0.7.
DEFAULT_MAX_DISTANCE = 0.3


def cosine_distance(
    features,
    *,
    max_distance: float = DEFAULT_MAX_DISTANCE,
    block_bytes: int | None = None,
    max_pairs: int | None = None,
) -> scipy.sparse.csr_matrix:
    """``1 - cosine similarity`` of every pair closer than ``max_distance``.

    Args:
        features: ``[N, d]`` floats (numpy array, torch tensor on any device), made
            canonical unit rows.
        max_distance: in ``(0, 2]``; the pairs kept are those whose float32 distance is
            below it.
        block_bytes: memory of one block of products (default
            ``limits.SCORE_BLOCK_BYTES``).
        max_pairs: if given (>= 1), keep only the ``max_pairs`` smallest non-zero
            distances below ``max_distance`` (and every zero, and the pairs tied with the
            largest kept): what the ``rho`` rule needs, in ``O(max_pairs)`` memory
            whatever ``max_distance``. The pairs left out are farther than every pair kept.

    Returns:
        ``[N, N]`` float32 CSR matrix, symmetric, columns ascending: every pair with
        ``d < max_distance`` (zeros stored explicitly) and the diagonal (0).

    Raises:
        ValueError: bad features or ``max_distance``.
    """
    nodes = torch.from_numpy(checked_features(features))
    max_distance = checked_max_distance(max_distance, 2.0)
    if max_pairs is not None:
        max_pairs = checks.check_int(max_pairs, "max_pairs", minimum=1)

    def score_rows(start: int, stop: int, out: np.ndarray) -> None:
        torch.matmul(nodes[start:stop], nodes.T, out=torch.from_numpy(out))

    upper = upper_pairs_from_scores(
        nodes.shape[0], score_rows, max_distance, block_bytes, max_pairs
    )
    return symmetric_matrix(upper, np.zeros(nodes.shape[0], np.float32))
