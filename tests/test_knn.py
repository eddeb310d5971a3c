"""knn_graph (strips of U @ U.T + numba running top-k) against the reference's full sort."""

import numpy as np
import pytest
import torch
from compare import half_unit_vectors

from triton_rerank import reference
from triton_rerank.cpu.knn import knn_graph


def reference_knn(nodes: np.ndarray, k: int):
    values, indices = reference.knn(torch.from_numpy(nodes), k)
    return values.numpy(), indices.numpy()


@pytest.mark.parametrize(
    "n, d, k, strip_rows",
    [
        (1, 3, 1, 1),  # a single node
        (40, 8, 40, 7),  # k = N, strips of 7 rows (unaligned)
        (300, 16, 10, 300),  # one strip, several 256-column chunks
        (617, 32, 26, 64),  # many strips, unaligned tail (n + 17)
    ],
    ids=lambda v: str(v),
)
def test_matches_reference_on_random_data(n, d, k, strip_rows):
    rng = np.random.default_rng(n)
    nodes = rng.standard_normal((n, d)).astype(np.float32)
    nodes /= np.linalg.norm(nodes, axis=1, keepdims=True)
    values, indices, _ = knn_graph(torch.from_numpy(nodes), k, strip_bytes=4 * n * strip_rows)
    ref_values, ref_indices = reference_knn(nodes, k)
    assert indices.dtype == np.int64 and values.dtype == np.float32
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_allclose(values, ref_values, atol=1e-6)
    assert np.all(indices[:, 0] == np.arange(n))  # self first when rows are distinct


@pytest.mark.parametrize("strip_rows", [1, 5, 64])
@pytest.mark.parametrize("n_query", [0, 13])  # 13: gallery strips first, then query strips
def test_exact_ties_take_smaller_index(strip_rows, n_query):
    # 16 distinct rows among 90: many exact ties and duplicates, self not always first
    rng = np.random.default_rng(7)
    nodes = half_unit_vectors(rng, 90)
    values, indices, _ = knn_graph(
        torch.from_numpy(nodes),
        30,
        strip_bytes=4 * 90 * strip_rows,
        n_query=n_query,
        keep_query_gallery=n_query > 0,
    )
    ref_values, ref_indices = reference_knn(nodes, 30)
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_array_equal(values, ref_values.astype(np.float32))


@pytest.mark.parametrize("n_query, strip_rows", [(50, 16), (1, 7), (119, 200)])
def test_query_gallery_similarities_are_a_by_product(n_query, strip_rows):
    rng = np.random.default_rng(3)
    nodes = rng.standard_normal((120, 8)).astype(np.float32)
    values, indices, base = knn_graph(
        torch.from_numpy(nodes),
        5,
        n_query=n_query,
        strip_bytes=4 * 120 * strip_rows,
        keep_query_gallery=True,
    )
    assert base.shape == (n_query, 120 - n_query)
    np.testing.assert_allclose(base.numpy(), nodes[:n_query] @ nodes[n_query:].T, atol=1e-5)
    ref_values, ref_indices = reference_knn(nodes, 5)
    np.testing.assert_array_equal(indices, ref_indices)
