"""The sparse k-reciprocal Jaccard distance and its DBSCAN pseudo-labels (issue 17),
against the dense oracle ``reference.jaccard_distance_reference``.

The oracle takes the features as given; it gets the canonical unit rows that
``jaccard_distance`` works on (``checks.unit_rows``), so both rank the same numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compare import assert_sparse_matches_dense, clustered, clustered_with_duplicates
from sklearn.cluster import DBSCAN
from sklearn.datasets import load_digits

from triton_rerank import checks
from triton_rerank.clustering import jaccard_distance, pseudo_labels
from triton_rerank.reference import jaccard_distance_reference

TOLERANCE = 1e-6


def digits() -> np.ndarray:
    return load_digits().data[:700].astype(np.float32)


def assert_matches_dense(features, k1, k2, max_distance):
    """The sparse matrix against the dense oracle (``compare.assert_sparse_matches_dense``)."""
    dense = jaccard_distance_reference(checks.unit_rows(features), k1=k1, k2=k2)
    sparse = jaccard_distance(features, k1=k1, k2=k2, max_distance=max_distance)
    assert_sparse_matches_dense(sparse, dense, max_distance, TOLERANCE)
    return dense, sparse


def assert_same_labels(features, dense, *, eps, k1, k2, min_samples=4):
    # the dense float32 matrix, as the projects hold it (DBSCAN compares in float32)
    dense32 = np.asarray(dense, dtype=np.float32)
    expected = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(dense32)
    got = pseudo_labels(features, eps=eps, min_samples=min_samples, k1=k1, k2=k2)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)
    return got


@pytest.mark.parametrize("k1, k2", [(20, 6), (30, 6), (12, 1), (7, 3)])
def test_clustered_features(k1, k2):
    x = clustered(seed=k1)
    dense, _ = assert_matches_dense(x, k1, k2, max_distance=0.7)
    labels = assert_same_labels(x, dense, eps=0.6, k1=k1, k2=k2)
    assert labels.max() >= 1  # several clusters: the comparison means something


def test_every_pair_sharing_support_with_max_distance_1():
    x = clustered(n=200, seed=3)
    dense, sparse = assert_matches_dense(x, 20, 6, max_distance=1.0)
    assert sparse.nnz == (dense < 1).sum()


@pytest.mark.parametrize("k2", [1, 6])
def test_duplicate_rows(k2):
    x = clustered_with_duplicates()
    dense, sparse = assert_matches_dense(x, 20, k2, max_distance=0.7)
    coo = sparse.tocoo()
    zeros = (coo.data == 0) & (coo.row != coo.col)
    assert zeros.any()  # pairs at distance exactly 0 are stored, as explicit zeros
    if k2 == 1:  # copies outside every reciprocal set: distance 1 to all, self included
        assert (sparse.diagonal() == 1).any()
    for eps in (0.3, 0.6):
        assert_same_labels(x, dense, eps=eps, k1=20, k2=k2)


def test_sklearn_digits():
    x = digits()
    dense, _ = assert_matches_dense(x, 30, 6, max_distance=0.7)
    assert_same_labels(x, dense, eps=0.6, k1=30, k2=6)
    assert_same_labels(x, dense, eps=0.5, k1=30, k2=6, min_samples=2)


@pytest.mark.parametrize("n, k1, k2", [(2, 1, 1), (3, 2, 2), (6, 5, 3), (9, 4, 4)])
def test_tiny(n, k1, k2):
    x = clustered(n=n, dim=5, n_clusters=2, seed=n)
    dense, _ = assert_matches_dense(x, k1, k2, max_distance=1.0)
    assert_same_labels(x, dense, eps=0.6, k1=k1, k2=k2, min_samples=2)


def test_torch_input_and_not_normalised_rows():
    """Rows are made unit rows first: scaled features give the same matrix."""
    x = clustered(n=150, seed=5)
    expected = jaccard_distance(x, k1=10, k2=3)
    for given in (torch.from_numpy(x), 7.5 * x.astype(np.float64)):
        got = jaccard_distance(given, k1=10, k2=3)
        assert (got != expected).nnz == 0


def test_k_errors():
    x = clustered(n=20, dim=4)
    with pytest.raises(ValueError, match="k1=20 is larger than 19"):
        jaccard_distance(x, k1=20)
    with pytest.raises(ValueError, match="k1"):
        pseudo_labels(x, k1=25)
    with pytest.raises(ValueError, match="k2=6 is larger than 5"):
        jaccard_distance(x, k1=5, k2=6)
    with pytest.raises(ValueError, match="k1 must be >= 1"):
        jaccard_distance(x, k1=0)
    with pytest.raises(TypeError, match="k1 must be an integer"):
        jaccard_distance(x, k1=2.5)
    with pytest.raises(ValueError, match="at least 2 features"):
        jaccard_distance(x[:1], k1=1, k2=1)


@pytest.mark.parametrize(
    "features, error, message",
    [
        (np.array([[1.0, 0.0], [np.nan, 1.0], [0.5, 0.5]]), ValueError, "NaN or inf in 1 row"),
        (np.ones(5), ValueError, "must be \\[n, d\\]"),
        (np.zeros((0, 3)), ValueError, "features is empty"),
        (np.zeros((3, 0)), ValueError, "must be \\[n, d\\]"),
        (np.array([[1.0, 0.0], [0.0, 0.0], [0.5, 0.5]]), ValueError, "rows of norm 0"),
        (np.ones((3, 2), dtype=np.int64), TypeError, "must hold floats"),
    ],
)
def test_bad_features(features, error, message):
    with pytest.raises(error, match=message):
        jaccard_distance(features, k1=1, k2=1)


def test_bad_parameters():
    x = clustered(n=20, dim=4)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="max_distance must be in"):
            jaccard_distance(x, k1=5, k2=2, max_distance=bad)
    with pytest.raises(TypeError, match="max_distance"):
        jaccard_distance(x, k1=5, k2=2, max_distance="0.5")
    with pytest.raises(ValueError, match="method must be one of 'jaccard'"):
        pseudo_labels(x, method="spectral", k1=5, k2=2)
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="eps must be in"):
            pseudo_labels(x, eps=bad, k1=5, k2=2)
    with pytest.raises(ValueError, match="min_samples must be >= 1"):
        pseudo_labels(x, min_samples=0, k1=5, k2=2)


def test_labels_keep_pairs_exactly_at_the_float32_eps():
    """eps just below (in float64) the smallest distance d*, with float32(eps) == d*:
    DBSCAN compares in float32, so the pairs at d* are neighbours (a cluster), and the
    sparse matrix must keep them (else every point would be noise)."""
    x = clustered(seed=5)
    full = jaccard_distance(x, k1=12, k2=3, max_distance=1.0).tocoo()
    off_diagonal = full.data[(full.row != full.col) & (full.data > 0)]
    target = off_diagonal.min()
    eps = float(np.nextafter(np.float64(target), -np.inf))
    assert np.float32(eps) == target and eps < float(target)
    expected = DBSCAN(eps=eps, min_samples=2, metric="precomputed").fit_predict(full.tocsr())
    assert (expected >= 0).sum() >= 2  # the test has teeth: the pair at d* is a cluster
    got = pseudo_labels(x, eps=eps, min_samples=2, k1=12, k2=3)
    np.testing.assert_array_equal(got, expected)
