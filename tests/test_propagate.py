"""Sparse propagation steps against dense arithmetic and the reference's propagated rows."""

import numpy as np
import pytest
import torch
from compare import assert_same_ranking, assert_same_topk

import triton_rerank.limits as limits
from triton_rerank import gnn_rerank, reference
from triton_rerank.cpu.kernels.dense_rows import symmetrise_in_place
from triton_rerank.cpu.knn import knn_graph
from triton_rerank.cpu.propagation import adjacency, aggregate, propagate, symmetrise
from triton_rerank.cpu.sparse_rows import SparseRows


def random_sparse(rng, n, per_row):
    cols = np.stack([rng.choice(n, per_row, replace=False) for _ in range(n)])
    return SparseRows.from_dense_rows(cols, rng.random((n, per_row), dtype=np.float32), n)


def test_symmetrise_is_a_plus_a_transpose():
    a = random_sparse(np.random.default_rng(0), 50, 6)
    dense = a.to_dense()
    np.testing.assert_array_equal(symmetrise(a).to_dense(), dense + dense.T)


@pytest.mark.parametrize("normalize", [True, False])
def test_aggregate_is_weighted_sum_of_neighbour_rows(normalize):
    rng = np.random.default_rng(1)
    s = random_sparse(rng, 60, 9)
    nbr_idx = np.stack([rng.choice(60, 4, replace=False) for _ in range(60)]).astype(np.int64)
    nbr_w = rng.random((60, 4), dtype=np.float32)
    rows = np.array([0, 5, 59, 17], dtype=np.int64)  # a subset, out of order
    out = aggregate(rows, nbr_idx, nbr_w, s, normalize=normalize).to_dense()
    dense = s.to_dense().astype(np.float64)
    expected = np.einsum("rt,rtc->rc", nbr_w[rows], dense[nbr_idx[rows]])
    if normalize:
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_aggregate_keeps_zero_rows_zero():
    s = SparseRows.from_dense_rows(np.array([[1], [0], [1]]), np.zeros((3, 1), np.float32), 3)
    out = aggregate(np.arange(3), np.array([[0], [1], [2]]), np.ones((3, 1), np.float32), s)
    assert np.all(out.to_dense() == 0) and not np.isnan(out.values).any()


def test_adjacency_is_binary_knn_rows():
    a = adjacency(np.array([[0, 2], [1, 0], [2, 1]], dtype=np.int64)).to_dense()
    np.testing.assert_array_equal(a, [[1, 0, 1], [1, 1, 0], [0, 1, 1]])


@pytest.mark.parametrize("k2, iterations", [(7, 1), (7, 2), (3, 3), (1, 2), (5, 0)])
def test_propagated_rows_match_reference(k2, iterations):
    rng = np.random.default_rng(k2 * 10 + iterations)
    nodes = rng.standard_normal((140, 12)).astype(np.float32)
    nodes /= np.linalg.norm(nodes, axis=1, keepdims=True)
    n_query, k1 = 30, 15
    values, indices, _ = knn_graph(torch.from_numpy(nodes), k1)
    graph = propagate(values, indices, n_query=n_query, k2=k2, iterations=iterations)
    ref_rows = reference.propagated_rows(
        torch.from_numpy(nodes), k1=k1, k2=k2, iterations=iterations
    ).numpy()
    # columns are internal node ids: internal id p is node node_order[p]
    order = graph.node_order
    assert sorted(order) == list(range(140))
    ref_internal = ref_rows[:, order]
    np.testing.assert_allclose(graph.query_rows.to_dense(), ref_internal[:n_query], atol=1e-6)
    # the gallery rows are never stored: rebuild them from M and the gallery weights
    m = graph.mixing.to_dense().astype(np.float64)
    gallery_rows = np.einsum("gt,gtc->gc", graph.gallery_val, m[graph.gallery_idx])
    gallery_rows *= graph.gallery_inv_norm[:, None]
    np.testing.assert_allclose(gallery_rows, ref_internal[n_query:], atol=1e-6)


def degenerate(kind: str, n: int, d: int = 12) -> np.ndarray:
    """Features whose propagated rows are dense: all identical, or half identical."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[: n if kind == "all identical" else n // 2] = x[0]
    return x


@pytest.mark.parametrize("kind", ["all identical", "half identical"])
@pytest.mark.parametrize(
    "k2, iterations, lamb, topk", [(7, 2, 0.3, None), (4, 1, 0.0, 9), (5, 3, 0.3, 20)]
)
def test_dense_rows_on_degenerate_data_match_the_reference(
    kind, k2, iterations, lamb, topk, monkeypatch
):
    monkeypatch.setattr(limits, "DENSE_MIN_BYTES", 0)  # dense at any size
    x = degenerate(kind, 160)
    kwargs = dict(k1=15, k2=k2, iterations=iterations, lamb=lamb)
    graph = propagate(
        *knn_graph(torch.from_numpy(x / np.linalg.norm(x, axis=1)[:, None]), 15)[:2],
        n_query=30,
        k2=k2,
        iterations=iterations,
    )
    if iterations >= 2:  # the first aggregation round makes the rows dense
        assert isinstance(graph.mixing, np.ndarray)
        assert isinstance(graph.query_rows, np.ndarray)
    ref = reference.gnn_rerank_reference(x[:30], x[30:], **kwargs)
    if topk is None:
        assert_same_ranking(gnn_rerank(x[:30], x[30:], **kwargs), ref)
    else:
        assert_same_topk(*gnn_rerank(x[:30], x[30:], topk=topk, **kwargs), ref, topk)


def test_symmetrise_in_place_is_exactly_a_plus_a_transpose():
    a = np.random.default_rng(3).random((150, 150), dtype=np.float32)  # several tiles
    expected = a + a.T
    symmetrise_in_place(a)
    np.testing.assert_array_equal(a, expected)
    np.testing.assert_array_equal(a, a.T)


def test_dense_rows_that_do_not_fit_are_a_clear_error(monkeypatch):
    monkeypatch.setattr(limits, "DENSE_MIN_BYTES", 0)
    monkeypatch.setattr(limits, "available_bytes", lambda device=None: 10_000)
    x = degenerate("all identical", 120)
    with pytest.raises(
        MemoryError,
        match=r"dense float32 \[120, 120\] matrix needs .* remove "
        r"duplicate features",
    ):
        gnn_rerank(x[:20], x[20:], k1=10, k2=4, topk=5)
