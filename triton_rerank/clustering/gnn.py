"""The GNN re-ranked distance of every pair of features, as a sparse matrix.

GNN re-ranking (Zhang et al., arXiv 2012.07620; :func:`triton_rerank.gnn_rerank`)
scores a pair by ``s(i, j) = (1 - lamb) <A_i, A_j> + lamb c(i, j)``, with ``A`` the rows
propagated over the kNN graph and ``c`` the cosine similarity. For clustering, the
features are both queries and gallery: every node's propagated row is scored against
every node's, and the distance is

    ``d(i, j) = max(0, 1 - s(i, j))``, ``d(i, i) = 0``,

in ``[0, 1 + lamb]``. :func:`gnn_distance` computes the scores one block of rows at a
time (``cpu/scoring.py``, the CPU path's scoring, on a propagation where every node is
also a gallery item) and keeps the pairs below ``max_distance``: time ``O(N^2 k2)``
like the re-ranking of ``N`` queries, memory ``O(N k)`` for the graph plus one score
block plus the output. The dense oracle is
``triton_rerank.reference.gnn_distance_reference``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import torch

from .. import checks
from ..cpu.propagation import propagate
from ..cpu.scoring import score_block
from .inputs import (
    checked_features,
    checked_max_distance,
    knn_backend,
    knn_lists,
    symmetric_matrix,
    upper_pairs_from_scores,
)

# The largest GNN distance: 1 - s with s >= -lamb >= -1.
LARGEST_DISTANCE = 2.0
# Pairs kept by default: d < 0.7, as for the Jaccard distance (the radius DBSCAN needs
# is smaller: pairs of one identity score well above 0.3 after propagation).
DEFAULT_MAX_DISTANCE = 0.7


def gnn_distance(
    features,
    *,
    k1: int = 26,
    k2: int = 7,
    iterations: int = 2,
    lamb: float = 0.3,
    max_distance: float = DEFAULT_MAX_DISTANCE,
    backend: str = "auto",
    block_bytes: int | None = None,
    max_pairs: int | None = None,
) -> scipy.sparse.csr_matrix:
    """The GNN re-ranked distance ``1 - s`` of every pair closer than ``max_distance``
    (the definition is in the module doc).

    Args:
        features: ``[N, d]`` floats (numpy array, torch tensor on any device), made
            canonical unit rows.
        k1, k2, iterations, lamb: as :func:`triton_rerank.gnn_rerank` (``1 <= k1 <= N``,
            ``1 <= k2 <= k1``, ``iterations >= 0``, ``0 <= lamb <= 1``).
        max_distance: in ``(0, 2]``: the pairs kept are those whose float32 distance is
            below it (2 keeps every pair: a dense matrix in sparse form).
        backend: where the kNN lists are computed (``"auto"``: the Triton kernels for
            CUDA tensors; ``"cpu"``; ``"triton"``); propagation and scoring run on the
            CPU.
        block_bytes: memory of one score block (default ``limits.SCORE_BLOCK_BYTES``).
        max_pairs: if given (>= 1), keep only the ``max_pairs`` smallest non-zero
            distances below ``max_distance`` (and every zero, and the pairs tied with the
            largest kept): what the ``rho`` rule needs, in ``O(max_pairs)`` memory
            whatever ``max_distance``. The pairs left out are farther than every pair kept.

    Returns:
        ``[N, N]`` float32 CSR matrix, symmetric, columns ascending: every pair with
        ``d < max_distance`` (zeros stored explicitly) and the diagonal (0). A pair not
        stored is at distance ``>= max_distance``.

    Raises:
        ValueError: bad features, parameters out of range, or an unknown backend.
        TypeError: non-integer ``k1``, ``k2``, ``iterations``, non-float features.
    """
    backend = knn_backend(features, backend)
    nodes = checked_features(features)
    n = nodes.shape[0]
    if n < 2:
        raise ValueError(f"the GNN distance needs at least 2 features, got {n}")
    k1, k2, iterations, lamb, _ = checks.check_rerank_params(
        k1=k1, k2=k2, iterations=iterations, lamb=lamb, topk=None, n_nodes=n, n_gallery=n
    )
    max_distance = checked_max_distance(max_distance, LARGEST_DISTANCE)
    if max_pairs is not None:
        max_pairs = checks.check_int(max_pairs, "max_pairs", minimum=1)
    values, indices = knn_lists(
        nodes, k1, backend=backend, device=getattr(features, "device", None)
    )
    graph = propagate(values, indices, n_query=n, k2=k2, iterations=iterations, all_pairs=True)
    del values, indices
    unit = torch.from_numpy(nodes)

    def score_rows(start: int, stop: int, out: np.ndarray) -> None:
        if lamb > 0:  # the base similarity, which score_block mixes in
            torch.matmul(unit[start:stop], unit.T, out=torch.from_numpy(out))
        score_block(graph, start, stop, lamb, out)

    upper = upper_pairs_from_scores(n, score_rows, max_distance, block_bytes, max_pairs)
    return symmetric_matrix(upper, np.zeros(n, np.float32))
