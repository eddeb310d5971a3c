"""Dense, obviously-correct GNN re-ranking: the test oracle and the benchmarks' baseline.

Every matrix here is a dense ``[N, N]`` tensor, exactly as the algorithm is written
(docs: the design), with the canonical values of ``triton_rerank/canonical.py`` spelled out
densely: unit rows scaled by a power of two and summed in order, and the kNN similarity
of every pair summed in float64 in order k = 0, 1, ... (one ``N x N`` update per feature
dimension), rounded to float32. So the oracle is tie-exact on any data: exact duplicate
rows tie exactly. Memory is several ``N * N`` buffers, so keep N small (tests) or accept
gigabytes (benchmarks; ``similarity="matmul"`` times a plain matrix product instead).
Deliberately shares no code with the fast path.
"""

from __future__ import annotations

import numpy as np
import torch

NORM_EPS = 1e-12


def _as_tensor(x, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return x.detach().to(device=device, dtype=dtype)


def _normalize_rows(x: torch.Tensor) -> torch.Tensor:
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / torch.clamp(norms, min=NORM_EPS)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Canonical float32 unit rows: ``y = x * 2**-e`` (``max |y|`` in [0.5, 1)), then
    ``y / sqrt(y_0**2 + y_1**2 + ...)`` summed in that order, all in float64."""
    x = x.to(torch.float64)
    _, exponent = torch.frexp(x.abs().amax(dim=1, keepdim=True))
    half = -exponent // 2
    y = torch.ldexp(torch.ldexp(x, half), -exponent - half)
    square_sum = torch.zeros(x.shape[0], 1, dtype=torch.float64, device=x.device)
    for k in range(x.shape[1]):
        square_sum = square_sum + y[:, k : k + 1] * y[:, k : k + 1]
    return (y / torch.sqrt(square_sum)).to(torch.float32)


def canonical_similarities(nodes: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, M]`` float32 canonical similarities of the float32 rows of ``nodes`` with
    those of ``other`` (default ``nodes``): float64 sums of the products in order
    k = 0, 1, ..., d - 1, rounded to float32."""
    x = nodes.to(torch.float64)
    y = x if other is None else other.to(torch.float64)
    total = torch.zeros(x.shape[0], y.shape[0], dtype=torch.float64, device=x.device)
    for k in range(x.shape[1]):
        total = total + x[:, k : k + 1] * y[:, k]
    return total.to(torch.float32)


# --- one small reference per op, for the kernel tests --------------------------------


def topk_by_tie_rule(scores: torch.Tensor, k: int):
    """Top-k of each row of a dense ``[n, m]`` matrix by a full stable sort: descending,
    equal values by smaller column. Returns ``(values [n, k], indices [n, k] int64)``."""
    order = torch.sort(scores, dim=1, descending=True, stable=True)
    return order.values[:, :k], order.indices[:, :k]


def similarity_topk(x: torch.Tensor, y: torch.Tensor, k: int):
    """The top-k op (``gpu/topk_similarity.py``, the CPU kNN selection): the canonical
    similarities of float32 rows, or the exact (float64) products of float16/bfloat16
    rows, top-k by the tie rule."""
    x, y = x.cpu(), y.cpu()
    if x.dtype == torch.float32:
        scores = canonical_similarities(x, y).double()
    else:
        scores = x.double() @ y.double().T
    return topk_by_tie_rule(scores, k)


def aggregated_rows(weights: torch.Tensor, source: torch.Tensor, *, normalize: bool = True):
    """The aggregation op (``gpu/aggregate.py``, ``cpu/kernels/aggregate.py``): the rows of
    ``W @ S`` for dense ``W [r, n]`` and ``S [n, m]`` in float64, and their L2 norms;
    each row divided by ``max(norm, NORM_EPS)`` when ``normalize``.
    Returns ``(rows [r, m] float64, norms [r] float64)``."""
    rows = weights.double() @ source.double()
    norms = torch.linalg.vector_norm(rows, dim=1)
    if normalize:
        rows = rows / torch.clamp(norms, min=NORM_EPS)[:, None]
    return rows, norms


def two_hop_scores(
    z: torch.Tensor,
    g_idx: torch.Tensor,
    g_val: torch.Tensor,
    g_inv_norm: torch.Tensor,
    query: torch.Tensor,
    gallery: torch.Tensor,
    *,
    lamb: float,
) -> torch.Tensor:
    """The scoring op (``gpu/scoring.py``, ``cpu/kernels/two_hop_scores.py``), in float64:
    ``(1 - lamb) * T + lamb * query @ gallery.T`` with the two-hop term
    ``T[i, j] = g_inv_norm[j] * sum_t g_val[j, t] * z[i, g_idx[j, t]]``.

    Args:
        z: ``[q, N]`` the queries' rows times M; g_idx, g_val: ``[g, t]``; g_inv_norm:
            ``[g]``; query ``[q, d]``, gallery ``[g, d]``.
    """
    z, g_idx = z.cpu().double(), g_idx.cpu()
    two_hop = (z[:, g_idx] * g_val.cpu().double()).sum(dim=2) * g_inv_norm.cpu().double()
    return (1 - lamb) * two_hop + lamb * (query.cpu().double() @ gallery.cpu().double().T)


def knn(nodes: torch.Tensor, k: int, similarity: str = "canonical"):
    """Top-k per row of the similarities of ``nodes`` by a full stable sort (ties: smaller
    column): canonical similarities of the float32 rows, or (``similarity="matmul"``) a
    plain ``nodes @ nodes.T`` in the rows' dtype.

    Returns:
        ``(values [N, k], indices [N, k] int64)``.
    """
    sims = canonical_similarities(nodes) if similarity == "canonical" else nodes @ nodes.T
    return topk_by_tie_rule(sims, k)


def propagated_rows(
    nodes: torch.Tensor,
    *,
    k1: int,
    k2: int,
    iterations: int,
    similarity: str = "canonical",
    dtype: torch.dtype = torch.float64,
):
    """Steps 1-4: the final dense ``[N, N]`` rows A in ``dtype``, on ``nodes``' device
    (``nodes``: float32 rows as the kNN compares them)."""
    n = nodes.shape[0]
    values, indices = knn(nodes, k1, similarity)
    values = values.to(dtype)
    a = torch.zeros(n, n, dtype=dtype, device=nodes.device)
    a.scatter_(1, indices, 1.0)
    if k2 == 1:
        return a
    weights = values[:, :k2] ** 2
    for _ in range(iterations):
        a = a + a.T
        aggregated = torch.zeros_like(a)
        for j in range(k2):
            aggregated += weights[:, j : j + 1] * a[indices[:, j]]
        a = _normalize_rows(aggregated)
    return a


def gnn_rerank_reference(
    query,
    gallery,
    *,
    k1: int = 26,
    k2: int = 7,
    iterations: int = 2,
    lamb: float = 0.3,
    normalize: bool = True,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    similarity: str = "canonical",
) -> torch.Tensor:
    """Re-ranked ``[q, g]`` similarity, computed densely in ``dtype`` on ``device``.

    Args:
        query: ``[q, d]`` numpy array or tensor.
        gallery: ``[g, d]``.
        k1, k2, iterations, lamb, normalize: as :func:`triton_rerank.gnn_rerank`
            (not validated here: this is an oracle, not a user entry point).
        dtype: of the propagation and the scores, ``torch.float64`` (default) or
            ``torch.float32``.
        device: where to compute (the CPU by default; the GPU check times it on CUDA).
        similarity: ``"canonical"`` (the library's definition, tie-exact) or ``"matmul"``
            (normalise and multiply in ``dtype``: the plain dense algorithm, for timings).

    Returns:
        ``[q, g]`` tensor of ``dtype``.
    """
    if similarity == "canonical":
        xq, xg = (_as_tensor(x, torch.float64, device) for x in (query, gallery))
        xq, xg = (unit_rows(x) if normalize else x.to(torch.float32) for x in (xq, xg))
    else:
        xq, xg = _as_tensor(query, dtype, device), _as_tensor(gallery, dtype, device)
        if normalize:
            xq, xg = _normalize_rows(xq), _normalize_rows(xg)
    n_query = xq.shape[0]
    nodes = torch.cat([xq, xg])
    a = propagated_rows(
        nodes, k1=k1, k2=k2, iterations=iterations, similarity=similarity, dtype=dtype
    )
    sim = a[:n_query] @ a[n_query:].T
    base = (
        canonical_similarities(nodes)[:n_query, n_query:]
        if similarity == "canonical"
        else xq @ xg.T
    )
    return (1 - lamb) * sim + lamb * base.to(dtype)


def ranking(scores: torch.Tensor) -> torch.Tensor:
    """Gallery indices per query by descending score, ties by smaller index. ``[q, g]`` int64."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def inductive_scores_reference(
    database, knn_values, knn_indices, query, *, k2: int, iterations: int, lamb: float
) -> np.ndarray:
    """Dense oracle of inductive re-ranking (``triton_rerank.database.inductive``): the scores of
    every database item for one query, all of them candidates, nothing pruned.

    The database graph is propagated alone (dense ``[g, g]`` matrices); the query is an
    extra node whose row, column and ``M_r[q]`` follow the rules in
    ``cpu/kernels/inductive_scores.py``, with the database rows frozen.

    Args:
        database: ``[g, d]`` unit rows.
        knn_values, knn_indices: ``[g, k1]`` the database's own kNN lists (self first,
            sorted by the tie rule; -1 / ``-inf`` where short).
        query: ``[d]`` unit row.
        k2, iterations, lamb: as :func:`triton_rerank.gnn_rerank`.

    Returns:
        ``[g]`` float64 scores.
    """
    x_db = np.asarray(database, np.float64)
    values, indices = np.asarray(knn_values, np.float64), np.asarray(knn_indices)
    g, k1 = indices.shape
    sims = x_db @ np.asarray(query, np.float64)
    rows, cols = np.nonzero(indices >= 0)
    a = np.zeros((g, g))
    a[rows, indices[rows, cols]] = 1.0
    w = np.zeros((g, g))
    top = indices[:, :k2] >= 0
    w_rows, w_cols = np.nonzero(top)
    w[w_rows, indices[w_rows, w_cols]] = values[w_rows, w_cols] ** 2
    # the query's neighbours: by similarity, equal similarities by smaller position
    neighbours = np.argsort(-sims, kind="stable")[: k1 - 1]
    row = np.zeros(g + 1)
    row[g] = 1.0
    row[neighbours] = 1.0
    lists_query = sims >= values[:, -1]  # the items whose lists would take q
    if k2 == 1 or iterations == 0:
        own = a.copy()
        displaced = lists_query & (indices[:, -1] >= 0)  # q displaces the k1-th
        own[displaced, indices[displaced, -1]] = 0.0
        scores = own @ row[:g] + lists_query * row[g]
        return (1 - lamb) * scores + lamb * sims
    m_q = np.concatenate([row[:g] + lists_query, [2 * row[g]]])
    query_weights = [(g, 1.0)] + [(n, sims[n] ** 2) for n in neighbours[: k2 - 1]]
    inv_norm = []
    for _ in range(iterations):
        m = a + a.T
        a = w @ m
        norms = np.maximum(np.linalg.norm(a, axis=1), NORM_EPS)
        a /= norms[:, None]
        inv_norm.append(1 / norms)
        new_row = np.zeros(g + 1)
        for n, weight in query_weights:
            new_row += weight * (m_q if n == g else np.concatenate([m[n], [m_q[n]]]))
        new_row /= max(np.linalg.norm(new_row), NORM_EPS)
        if len(inv_norm) < iterations:
            column = inv_norm[-1] * (w @ m_q[:g])
            m_q = np.concatenate([new_row[:g] + column, [2 * new_row[g]]])
        row = new_row
    # A_R[j] = inv_j * sum_t w_jt M[n_jt] (+ q's entry); q enters the top-k2 of the
    # items it is closer to than their k2-th neighbour, in place of that neighbour
    takes_query = sims >= values[:, k2 - 1]
    w_final = w.copy()
    displaced = takes_query & (indices[:, k2 - 1] >= 0)
    w_final[displaced, indices[displaced, k2 - 1]] = 0.0
    m_ext = np.concatenate([m, m_q[:g, None]], axis=1)  # rows n: M[n] and M[n, q]
    scores = w_final @ (m_ext @ row) + takes_query * sims**2 * (row @ m_q)
    scores *= inv_norm[-1]
    return (1 - lamb) * scores + lamb * sims
