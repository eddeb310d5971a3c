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


# --- k-reciprocal Jaccard distance, for clustering (issue 17) ------------------------


def _k_reciprocal(order: np.ndarray, i: int, width: int) -> np.ndarray:
    """The items among the first ``width`` of row ``i`` of ``order`` whose own first
    ``width`` contain ``i`` (in ``i``'s order)."""
    forward = order[i, :width]
    return np.array([j for j in forward if i in order[j, :width]], dtype=np.int64)


def jaccard_distance_reference(features, *, k1: int = 30, k2: int = 6) -> np.ndarray:
    """Dense ``[N, N]`` k-reciprocal Jaccard distance (Zhong et al., CVPR 2017) as the
    unsupervised re-ID projects compute it for DBSCAN (SpCL, cluster-contrast-reid, MMT,
    OpenUnReID: ``compute_jaccard_distance`` in ``utils/faiss_rerank.py``), in float64.

    Args:
        features: ``[N, d]`` numpy array or CPU tensor, used as given (those projects pass
            L2-normalised rows; nothing is normalised here).
        k1: the kNN list length, *self included*: ``1 <= k1 <= N``.
        k2: rows averaged by the query expansion, self included: ``1 <= k2 <= k1``.

    Returns:
        ``[N, N]`` float64 distances in ``[0, 1]``, symmetric, diagonal 0 up to rounding
        (~1e-15; but see the exact copies below).

    Steps:
        1. ``order[i]``: the ``k1`` items nearest to ``i`` by squared L2 distance
           ``|x_i - x_j|^2``, ascending, equal distances by smaller index (a stable sort).
        2. ``R(i, w)``: the ``j`` among ``order[i, :w]`` with ``i`` in ``order[j, :w]``.
           The k-reciprocal set is ``R = R(i, k1)``; the half sets are ``R(c, h + 1)`` with
           ``h = int(np.around(k1 / 2))`` (half to even: k1=5 gives 2, k1=7 gives 4).
        3. Expansion: ``E = R`` united with ``R(c, h + 1)`` for every ``c`` in ``R`` where
           ``|R(c, h + 1) & R| > 2/3 |R(c, h + 1)|`` (the overlap with ``R``, not with the
           growing ``E``).
        4. ``V[i, j] = softmax_j(-(2 - 2 x_i . x_j))`` over ``j`` in ``E``, 0 elsewhere
           (so each row sums to 1; ``2 - 2 x_i . x_j`` is the squared distance of unit rows).
        5. If ``k2 != 1``: ``V[i] <- mean of V[order[i, :k2]]`` (the old ``V``'s rows).
        6. ``m[i, j] = sum_k min(V[i, k], V[j, k])``; ``D = 1 - m / (2 - m)``, which is
           ``1 - sum min / sum max`` since the rows sum to 1; negatives set to 0.

    Differs from the published code only in the kNN: theirs is FAISS's ``IndexFlatL2``
    (float32 distances, FAISS's order among equal ones), ours float64 with the tie rule
    above; and it computes in float32 where we use float64 (differences ~1e-7). Note that
    the published search asks FAISS for ``k1`` neighbours (not ``k1 + 1``), so the
    k-reciprocal lists are ``k1`` long with self, and the half lists ``h + 1`` long.
    An item outside its own list (``k1`` or more exact copies of it with smaller indices)
    is in no k-reciprocal set at all: its row of ``V`` is 0 before step 5, and with
    ``k2 = 1`` its distances, its own included, are all 1, as in the published code.
    Out-of-range ``k1``/``k2`` raise here; there ``k2 > k1`` silently averages ``k1``
    rows and ``k1 > N`` reads FAISS's ``-1`` padding as the last row.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be [N, d] with N >= 1, got shape {x.shape}")
    n = x.shape[0]
    if not 1 <= k1 <= n:
        raise ValueError(f"k1 must be in [1, N] = [1, {n}] (self included), got {k1}")
    if not 1 <= k2 <= k1:
        raise ValueError(f"k2 must be in [1, k1] = [1, {k1}], got {k2}")

    # 1. kNN lists by squared L2 distance, ties by smaller index
    order = np.empty((n, k1), dtype=np.int64)
    for i in range(n):
        sq_dist = ((x - x[i]) ** 2).sum(axis=1)
        order[i] = np.argsort(sq_dist, kind="stable")[:k1]

    # 2. k-reciprocal sets and half sets
    half = int(np.around(k1 / 2))
    reciprocal = [_k_reciprocal(order, i, k1) for i in range(n)]
    reciprocal_half = [_k_reciprocal(order, i, half + 1) for i in range(n)]

    v = np.zeros((n, n))
    for i in range(n):
        r = reciprocal[i]
        # 3. expansion by the candidates' half sets that overlap R by more than 2/3
        expanded = set(r.tolist())
        for c in r:
            candidate = reciprocal_half[c]
            overlap = len(np.intersect1d(candidate, r))
            if 3 * overlap > 2 * len(candidate):
                expanded.update(candidate.tolist())
        e = np.array(sorted(expanded), dtype=np.int64)
        if len(e) == 0:
            continue
        # 4. softmax of minus the distances 2 - 2 x_i . x_j
        logits = -(2.0 - 2.0 * (x[e] @ x[i]))
        weights = np.exp(logits - logits.max())
        v[i, e] = weights / weights.sum()

    # 5. query expansion over the k2 nearest, self included
    if k2 != 1:
        v = np.stack([v[order[i, :k2]].mean(axis=0) for i in range(n)])

    # 6. Jaccard distance of the weighted sets; min(V[i, k], V[j, k]) = 0 where V[i, k] = 0
    dist = np.empty((n, n))
    for i in range(n):
        support = np.nonzero(v[i])[0]
        m = np.minimum(v[i, support], v[:, support]).sum(axis=1)
        dist[i] = 1.0 - m / (2.0 - m)
    dist[dist < 0] = 0.0
    return dist


def gnn_distance_reference(
    features, *, k1: int = 26, k2: int = 7, iterations: int = 2, lamb: float = 0.3
) -> np.ndarray:
    """Dense ``[N, N]`` GNN re-ranked distance of every pair of features, in float64:
    ``max(0, 1 - s)`` with ``s = (1 - lamb) A @ A.T + lamb C`` (``A`` the propagated rows
    of :func:`propagated_rows` on the canonical unit rows, ``C`` their canonical
    similarities), and 0 on the diagonal.

    Args:
        features: ``[N, d]`` numpy array or CPU tensor (made canonical unit rows here).
        k1, k2, iterations, lamb: as :func:`triton_rerank.gnn_rerank` (not validated).
    """
    nodes = unit_rows(_as_tensor(features, torch.float64))
    a = propagated_rows(nodes, k1=k1, k2=k2, iterations=iterations)
    scores = (1 - lamb) * (a @ a.T) + lamb * canonical_similarities(nodes).double()
    distance = torch.clamp(1 - scores, min=0).numpy()
    np.fill_diagonal(distance, 0.0)
    return distance


def cosine_distance_reference(features) -> np.ndarray:
    """Dense ``[N, N]`` cosine distance ``max(0, 1 - C)`` of the canonical unit rows
    (``C`` their canonical similarities), float64, 0 on the diagonal."""
    nodes = unit_rows(_as_tensor(features, torch.float64))
    distance = torch.clamp(1 - canonical_similarities(nodes).double(), min=0).numpy()
    np.fill_diagonal(distance, 0.0)
    return distance


def eps_from_rho_reference(distances: np.ndarray, rho: float) -> float:
    """The DBSCAN radius of the unsupervised re-ID projects (the ``rho`` rule of their
    training scripts, e.g. SSG and the UDA examples that SpCL builds on), on a dense
    ``[N, N]`` distance matrix, as they write it: the strict upper triangle's non-zero
    entries, sorted; ``top = round(rho * count)`` (half to even); ``eps`` the mean of the
    ``top`` smallest, in the matrix's dtype."""
    upper = np.triu(distances, 1)
    upper = upper[np.nonzero(upper)]
    upper = np.sort(upper, axis=None)
    top = np.round(rho * upper.size).astype(int)
    return float(upper[:top].mean())
