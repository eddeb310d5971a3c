"""Comparison helpers: fast-path results against the dense reference."""

from __future__ import annotations

import numpy as np
import torch

# fp32 fast path against the fp64 reference, on scores of order 1.
SCORE_ATOL = 2e-5


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return (
            x.detach().cpu().to(torch.float64).numpy() if x.is_floating_point() else x.cpu().numpy()
        )
    return np.asarray(x)


def ranking(scores: np.ndarray) -> np.ndarray:
    """Descending order per row, ties by smaller index."""
    return np.argsort(-scores, axis=1, kind="stable")


def tie_free(sorted_scores: np.ndarray, atol: float) -> np.ndarray:
    """Mask of positions whose score differs from both neighbours by more than ``atol``."""
    gaps = np.abs(np.diff(sorted_scores, axis=1)) > atol
    pad = np.ones((sorted_scores.shape[0], 1), dtype=bool)
    return np.concatenate([pad, gaps], axis=1) & np.concatenate([gaps, pad], axis=1)


def assert_same_ranking(ours, ref, atol: float = SCORE_ATOL) -> None:
    """Scores agree; our ranking, read at the reference's scores, is the reference's; and
    the indices are identical wherever the reference has no (near-)tie."""
    ours, ref = to_numpy(ours).astype(np.float64), to_numpy(ref).astype(np.float64)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=atol)
    ref_order, our_order = ranking(ref), ranking(ours)
    ref_sorted = np.take_along_axis(ref, ref_order, 1)
    np.testing.assert_allclose(
        np.take_along_axis(ref, our_order, 1), ref_sorted, rtol=0, atol=2 * atol
    )
    clear = tie_free(ref_sorted, 4 * atol)
    np.testing.assert_array_equal(our_order[clear], ref_order[clear])


def assert_same_topk(values, indices, ref, k: int, atol: float = SCORE_ATOL) -> None:
    """``(values, indices)`` are the top-k of ``ref`` up to ties (see assert_same_ranking)."""
    values, indices, ref = to_numpy(values), to_numpy(indices), to_numpy(ref).astype(np.float64)
    assert values.shape == indices.shape == (ref.shape[0], k)
    assert indices.dtype == np.int64
    # (a negative index would wrap around in take_along_axis below)
    out_of_range = (indices < 0) | (indices >= ref.shape[1])
    assert not out_of_range.any(), (
        f"indices outside [0, {ref.shape[1]}): "
        f"{indices[out_of_range][:5]} at {np.argwhere(out_of_range)[:5].tolist()}"
    )
    ref_order = ranking(ref)
    ref_sorted = np.take_along_axis(ref, ref_order, 1)
    np.testing.assert_allclose(values, ref_sorted[:, :k], rtol=0, atol=atol)
    np.testing.assert_allclose(
        np.take_along_axis(ref, indices, 1), ref_sorted[:, :k], rtol=0, atol=2 * atol
    )
    clear = tie_free(ref_sorted, 4 * atol)[:, :k]
    np.testing.assert_array_equal(indices[clear], ref_order[:, :k][clear])
    # values are reported in descending order, equal values by smaller index
    assert np.all(np.diff(values, axis=1) <= 0)


def four_halves_vectors(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    """Rows with four entries +-0.5 and the rest 0: unit norm, exact dot products (multiples
    of 0.25), thousands of distinct rows, yet frequent exact ties between similarities."""
    x = np.zeros((n, d), dtype=np.float32)
    for row in x:
        row[rng.choice(d, 4, replace=False)] = rng.choice([-0.5, 0.5], size=4)
    return x


def half_unit_vectors(rng: np.random.Generator, n: int, d: int = 4) -> np.ndarray:
    """Rows with entries +-1/sqrt(d) (d a power of 4): unit norm and exact dot products,
    so ties are exact in fp32 and fp64 alike. With d=4 there are only 16 distinct rows."""
    return (rng.choice([-1.0, 1.0], size=(n, d)) / np.sqrt(d)).astype(np.float32)


def gaussian(rng, n_query, n_gallery, d=16):
    """Continuous rows: no two similarities tie."""
    return (
        rng.standard_normal((n_query, d)).astype(np.float32),
        rng.standard_normal((n_gallery, d)).astype(np.float32),
    )


def exact_with_duplicates(rng, n_query, n_gallery):
    """Exactly representable unit rows (so fp32 and fp64 tie alike), with deliberate
    duplicates: every 7th gallery row copies its neighbour, the last copies a query."""
    xq, xg = four_halves_vectors(rng, n_query), four_halves_vectors(rng, n_gallery)
    xg[1::7] = xg[0::7][: len(xg[1::7])]
    xg[-1] = xq[0]
    return xq, xg


# --- clustering: data and the sparse-against-dense comparison -----------------------


def clustered(n=400, dim=32, n_clusters=25, spread=0.8, seed=0) -> np.ndarray:
    from triton_rerank.app.synthetic import clustered_vectors

    return clustered_vectors(n, dim, n_clusters, spread=spread, seed=seed)[0]


def clustered_with_duplicates(seed=0) -> np.ndarray:
    """Clustered rows with exact copies: one row 25 times (more than k1=20 copies, so
    some copies are in no k-reciprocal set), others in pairs and triples, shuffled."""
    rng = np.random.default_rng(seed)
    base = clustered(n=160, n_clusters=12, seed=seed)
    rows = np.concatenate([base, np.repeat(base[:1], 24, axis=0), base[5:25], base[5:15]])
    return rows[rng.permutation(len(rows))]


def assert_sparse_matches_dense(sparse, dense: np.ndarray, max_distance: float, atol: float):
    """``sparse`` holds exactly the pairs of ``dense`` below ``max_distance`` (up to
    ``atol`` at the cutoff), each within ``atol``, plus the diagonal; it is symmetric,
    float32, with sorted columns and no duplicate entries."""
    n = dense.shape[0]
    assert sparse.shape == (n, n) and sparse.dtype == np.float32
    assert sparse.has_sorted_indices
    coo = sparse.tocoo()
    stored = np.zeros((n, n), dtype=bool)
    stored[coo.row, coo.col] = True
    assert len(coo.data) == stored.sum()  # no duplicate entries
    assert np.abs(coo.data - dense[coo.row, coo.col]).max() <= atol
    assert stored.diagonal().all()
    off_diagonal = coo.row != coo.col
    assert (coo.data[off_diagonal] < max_distance).all()
    missed = ~stored & (dense < max_distance - atol)
    assert not missed.any(), f"{missed.sum()} pairs below max_distance are not stored"
    assert (stored == stored.T).all() and (sparse != sparse.T).nnz == 0
