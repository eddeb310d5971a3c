"""Dense, obviously-correct GNN re-ranking: the test oracle and the benchmarks' baseline.

Every matrix here is a dense ``[N, N]`` tensor, exactly as DESIGN.md §1 writes the
algorithm. Memory is several ``N * N`` buffers, so keep N small (tests) or accept
gigabytes (benchmarks). Deliberately shares no code with the fast path.
"""

from __future__ import annotations

import numpy as np
import torch

NORM_EPS = 1e-12


def _as_tensor(x, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return x.detach().to(device="cpu", dtype=dtype)


def _normalize_rows(x: torch.Tensor) -> torch.Tensor:
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / torch.clamp(norms, min=NORM_EPS)


def knn(nodes: torch.Tensor, k: int):
    """Top-k of ``nodes @ nodes.T`` per row by a full stable sort (ties: smaller column).

    Returns:
        ``(values [N, k], indices [N, k] int64)``.
    """
    order = torch.sort(nodes @ nodes.T, dim=1, descending=True, stable=True)
    return order.values[:, :k], order.indices[:, :k]


def propagated_rows(nodes: torch.Tensor, *, k1: int, k2: int, iterations: int) -> torch.Tensor:
    """Steps 1-4: the final dense ``[N, N]`` rows A, on ``nodes``' device."""
    n = nodes.shape[0]
    values, indices = knn(nodes, k1)
    a = torch.zeros(n, n, dtype=nodes.dtype, device=nodes.device)
    a.scatter_(1, indices, 1.0)
    if k2 == 1:
        return a
    weights = values[:, :k2] ** 2
    for _ in range(iterations):
        a = a + a.T
        aggregated = torch.zeros_like(a)
        for j in range(k2):
            aggregated += weights[:, j:j + 1] * a[indices[:, j]]
        a = _normalize_rows(aggregated)
    return a


def gnn_rerank_reference(query, gallery, *, k1: int = 26, k2: int = 7, iterations: int = 2,
                         lamb: float = 0.3, normalize: bool = True,
                         dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Re-ranked ``[q, g]`` similarity, computed densely in ``dtype`` on the CPU.

    Args:
        query: ``[q, d]`` numpy array or tensor.
        gallery: ``[g, d]``.
        k1, k2, iterations, lamb, normalize: as :func:`triton_rerank.gnn_rerank`
            (not validated here: this is an oracle, not a user entry point).
        dtype: ``torch.float64`` (default) or ``torch.float32``.

    Returns:
        ``[q, g]`` tensor of ``dtype``.
    """
    xq, xg = _as_tensor(query, dtype), _as_tensor(gallery, dtype)
    if normalize:
        xq, xg = _normalize_rows(xq), _normalize_rows(xg)
    n_query = xq.shape[0]
    a = propagated_rows(torch.cat([xq, xg]), k1=k1, k2=k2, iterations=iterations)
    sim = a[:n_query] @ a[n_query:].T
    return (1 - lamb) * sim + lamb * (xq @ xg.T)


def ranking(scores: torch.Tensor) -> torch.Tensor:
    """Gallery indices per query by descending score, ties by smaller index. ``[q, g]`` int64."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices
