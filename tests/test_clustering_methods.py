"""The GNN and cosine clustering distances, the rho rule, pseudo-labels by every method,
the projects' drop-in call and the Triton kNN of the clustering (issue 17), against the
dense oracles of ``triton_rerank.reference``."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import torch
from compare import assert_sparse_matches_dense, clustered, clustered_with_duplicates
from sklearn.cluster import DBSCAN
from sklearn.datasets import load_digits

from triton_rerank import checks
from triton_rerank.clustering import (
    TooFewStoredPairs,
    compute_jaccard_distance,
    cosine_distance,
    eps_from_rho,
    gnn_distance,
    jaccard_distance,
    pseudo_labels,
)
from triton_rerank.reference import (
    cosine_distance_reference,
    eps_from_rho_reference,
    gnn_distance_reference,
    jaccard_distance_reference,
)

# float32 scoring against the float64 oracle, on distances of order 1
TOLERANCE = 2e-6


def digits() -> np.ndarray:
    return load_digits().data[:500].astype(np.float32)


def fashion_subset(n=600) -> np.ndarray:
    """``n`` real Fashion-MNIST images as 784-d float rows (Debian's
    dataset-fashion-mnist; ``.ci/run`` installs it)."""
    from triton_rerank.app.data import FASHION_MNIST_DIR, load_fashion_mnist_split

    try:
        data = load_fashion_mnist_split(FASHION_MNIST_DIR, queries_per_class=5)
    except (FileNotFoundError, OSError, ValueError) as error:
        pytest.skip(f"Fashion-MNIST is not installed: {error}")
    return np.asarray(data.gallery_features[:n], dtype=np.float32)


DATA = {
    "clustered": lambda: clustered(n=300, seed=2),
    "duplicates": clustered_with_duplicates,
    "digits": digits,
    "fashion-mnist": fashion_subset,
}


def as_projects_hold_it(dense: np.ndarray) -> np.ndarray:
    """A float64 oracle matrix as float32, with the distances of exact copies (zero up
    to rounding: about 1e-16 in the oracle, 0 or about 1e-8 in ours) set to 0: the rho
    rule leaves zeros out, so it must see the same ones."""
    dense32 = dense.astype(np.float32)
    dense32[dense32 < 1e-5] = 0.0
    return dense32


def dbscan_dense(dense: np.ndarray, eps: float, min_samples: int = 4) -> np.ndarray:
    """DBSCAN on the dense float32 matrix, as the projects run it."""
    dense32 = np.asarray(dense, dtype=np.float32)
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(dense32)


# --- GNN distance -----------------------------------------------------------------


@pytest.mark.parametrize("data", DATA)
def test_gnn_distance_matches_the_dense_oracle(data):
    x = DATA[data]()
    dense = gnn_distance_reference(x, k1=20, k2=6)
    sparse = gnn_distance(x, k1=20, k2=6, max_distance=0.6, block_bytes=4 * len(x) * 37)
    assert_sparse_matches_dense(sparse, dense, 0.6, TOLERANCE)
    eps = eps_from_rho_reference(as_projects_hold_it(dense), 0.01)  # several clusters
    labels = pseudo_labels(x, method="gnn", eps=eps, k1=20, k2=6)
    np.testing.assert_array_equal(labels, dbscan_dense(dense, eps))
    assert labels.max() >= 1  # several clusters: the comparison means something


def test_jaccard_distance_on_fashion_mnist_matches_the_dense_oracle():
    x = fashion_subset()
    dense = jaccard_distance_reference(checks.unit_rows(x), k1=30, k2=6)
    sparse = jaccard_distance(x, k1=30, k2=6)
    assert_sparse_matches_dense(sparse, dense, 0.7, 1e-6)
    labels = pseudo_labels(x, eps=0.6, k1=30, k2=6)
    np.testing.assert_array_equal(labels, dbscan_dense(dense, 0.6))
    assert labels.max() >= 1


@pytest.mark.parametrize(
    "k1, k2, iterations, lamb", [(10, 1, 2, 0.3), (12, 4, 1, 0.0), (8, 3, 3, 1.0), (26, 7, 0, 0.5)]
)
def test_gnn_distance_parameters(k1, k2, iterations, lamb):
    x = clustered(n=200, seed=k1)
    dense = gnn_distance_reference(x, k1=k1, k2=k2, iterations=iterations, lamb=lamb)
    sparse = gnn_distance(x, k1=k1, k2=k2, iterations=iterations, lamb=lamb, max_distance=0.8)
    assert_sparse_matches_dense(sparse, dense, 0.8, TOLERANCE)


def test_gnn_distance_every_pair_with_max_distance_2():
    x = clustered(n=120, seed=4)
    sparse = gnn_distance(x, k1=10, k2=3, max_distance=2.0)
    assert sparse.nnz == 120 * 120
    assert_sparse_matches_dense(sparse, gnn_distance_reference(x, k1=10, k2=3), 2.0, TOLERANCE)


@pytest.mark.parametrize("n, k1, k2", [(2, 1, 1), (2, 2, 2), (5, 5, 3), (9, 4, 4)])
def test_gnn_distance_tiny(n, k1, k2):
    x = clustered(n=n, dim=5, n_clusters=2, seed=n)
    sparse = gnn_distance(x, k1=k1, k2=k2, max_distance=2.0)
    assert_sparse_matches_dense(sparse, gnn_distance_reference(x, k1=k1, k2=k2), 2.0, TOLERANCE)


def test_gnn_distance_errors():
    x = clustered(n=20, dim=4)
    with pytest.raises(ValueError, match="k1=21 is larger than 20"):
        gnn_distance(x, k1=21, k2=2)
    with pytest.raises(ValueError, match="k2 must not exceed k1"):
        gnn_distance(x, k1=3, k2=4)
    with pytest.raises(ValueError, match="lamb"):
        gnn_distance(x, k1=3, k2=2, lamb=1.5)
    with pytest.raises(ValueError, match=r"max_distance must be in \(0, 2\]"):
        gnn_distance(x, k1=3, k2=2, max_distance=2.5)
    with pytest.raises(ValueError, match="at least 2 features"):
        gnn_distance(x[:1], k1=1, k2=1)
    with pytest.raises(ValueError, match="NaN or inf"):
        gnn_distance(np.where(np.arange(20)[:, None] == 3, np.nan, x), k1=3, k2=2)


# --- cosine distance --------------------------------------------------------------


@pytest.mark.parametrize("data", ["clustered", "duplicates", "digits"])
def test_cosine_distance_matches_the_dense_oracle(data):
    x = DATA[data]()
    dense = cosine_distance_reference(x)
    sparse = cosine_distance(x, max_distance=0.4, block_bytes=4 * len(x) * 29)
    assert_sparse_matches_dense(sparse, dense, 0.4, 1e-5)


# --- the rho rule -----------------------------------------------------------------


@pytest.mark.parametrize("rho", [1.6e-3, 1e-2, 0.05])
def test_rho_rule_on_the_sparse_matrix_equals_the_dense_rule(rho):
    """Bit for bit: the dense rule on the full matrix (pairs not stored are at exactly 1)
    and the sparse rule on the pairs below 0.7 take the same sorted prefix."""
    x = clustered_with_duplicates()
    full = jaccard_distance(x, k1=20, k2=6, max_distance=1.0)
    dense = np.ones(full.shape, np.float32)
    coo = full.tocoo()
    dense[coo.row, coo.col] = coo.data
    expected = eps_from_rho_reference(dense, rho)
    assert eps_from_rho(dense, rho) == expected
    assert eps_from_rho(full, rho, unstored=1.0) == expected
    assert eps_from_rho(jaccard_distance(x, k1=20, k2=6, max_distance=0.7), rho) == expected


@pytest.mark.parametrize("rho", [1.6e-3, 1e-2])
def test_rho_rule_against_the_oracle(rho):
    """Pairs whose weight rows are equal have distance 0 up to rounding (1e-16 or 0,
    either way), which the rule's "non-zero" cannot decide alike: both sides count them
    as zeros here."""
    x = clustered(n=300, seed=8)
    oracle = jaccard_distance_reference(checks.unit_rows(x), k1=20, k2=6)
    ours = np.ones((300, 300))
    coo = jaccard_distance(x, k1=20, k2=6).tocoo()
    ours[coo.row, coo.col] = coo.data
    expected = eps_from_rho_reference(as_projects_hold_it(oracle), rho)
    assert abs(eps_from_rho(as_projects_hold_it(ours), rho) - expected) <= 1e-6


def test_rho_rule_reports_too_few_stored_pairs():
    x = clustered(n=200, seed=1)
    sparse = jaccard_distance(x, k1=20, k2=6, max_distance=0.2)
    with pytest.raises(TooFewStoredPairs, match="larger max_distance"):
        eps_from_rho(sparse, 0.2)
    with pytest.raises(ValueError, match="takes no pair"):
        eps_from_rho(sparse, 1e-9)
    with pytest.raises(ValueError, match=r"rho must be in \(0, 1\]"):
        eps_from_rho(sparse, 0.0)
    with pytest.raises(ValueError, match="square"):
        eps_from_rho(np.zeros((3, 4)), 0.1)


@pytest.mark.parametrize("method", ["jaccard", "gnn", "cosine"])
def test_pseudo_labels_by_rho_equal_dense_dbscan(method):
    """The radius is the rho rule on the method's own matrix; the labels are DBSCAN's on
    the dense oracle with that radius."""
    x = digits()
    if method == "jaccard":
        dense = jaccard_distance_reference(checks.unit_rows(x), k1=20, k2=6)
        distances, options = jaccard_distance(x, k1=20, k2=6), {"k1": 20, "k2": 6}
    elif method == "gnn":
        dense = gnn_distance_reference(x, k1=20, k2=6)
        distances, options = gnn_distance(x, k1=20, k2=6), {"k1": 20, "k2": 6}
    else:
        dense, distances, options = cosine_distance_reference(x), cosine_distance(x), {}
    eps = eps_from_rho(distances, 1.6e-3)
    labels = pseudo_labels(x, method=method, rho=1.6e-3, **options)
    np.testing.assert_array_equal(labels, dbscan_dense(dense, eps))
    assert labels.max() >= 1


def test_pseudo_labels_errors():
    x = clustered(n=30, dim=4)
    with pytest.raises(ValueError, match="eps or rho, not both"):
        pseudo_labels(x, eps=0.5, rho=0.01, k1=5, k2=2)
    with pytest.raises(ValueError, match=r"eps must be in \(0, 2\) for method 'gnn'"):
        pseudo_labels(x, method="gnn", eps=2.0, k1=5, k2=2)
    with pytest.raises(TypeError, match="takes no options"):
        pseudo_labels(x, method="cosine", eps=0.2, k1=5)
    with pytest.raises(TypeError):
        pseudo_labels(x, method="jaccard", eps=0.5, k1=5, k2=2, lamb=0.3)


# --- the drop-in ------------------------------------------------------------------


def test_drop_in_dense_equals_the_oracle_and_sparse_equals_jaccard_distance(capsys):
    x = torch.from_numpy(clustered(n=250, seed=6))
    dense = compute_jaccard_distance(x, k1=20, k2=6, search_option=3)
    assert "Jaccard distance computing time cost" in capsys.readouterr().out
    assert isinstance(dense, np.ndarray) and dense.dtype == np.float32
    oracle = jaccard_distance_reference(checks.unit_rows(x.numpy()), k1=20, k2=6)
    assert np.abs(dense - oracle).max() <= 1e-6
    sparse = compute_jaccard_distance(x, k1=20, k2=6, print_flag=False, dense=False)
    assert scipy.sparse.issparse(sparse)
    assert (sparse != jaccard_distance(x, k1=20, k2=6)).nnz == 0
    np.testing.assert_array_equal(
        dbscan_dense(dense, 0.6),
        DBSCAN(eps=0.6, min_samples=4, metric="precomputed").fit_predict(sparse),
    )


def test_drop_in_is_sparse_above_the_dense_limit(monkeypatch):
    from triton_rerank.clustering import drop_in

    monkeypatch.setattr(drop_in, "DENSE_MAX_ITEMS", 99)
    x = clustered(n=100, seed=7)
    assert scipy.sparse.issparse(compute_jaccard_distance(x, print_flag=False))
    assert isinstance(compute_jaccard_distance(x[:99], print_flag=False), np.ndarray)


# --- the Triton kNN ---------------------------------------------------------------


@pytest.mark.interpreter
def test_triton_knn_gives_the_same_distances(kernel_device):
    """The clustering's kNN on the Triton kernels (compiled on a GPU, the interpreter
    here) gives the CPU path's lists, so the same matrices."""
    x = clustered_with_duplicates()[:120]
    features = torch.from_numpy(x).to(kernel_device)
    for distance, options in (
        (jaccard_distance, {"k1": 12, "k2": 3}),
        (gnn_distance, {"k1": 12, "k2": 3}),
    ):
        expected = distance(x, backend="cpu", **options)
        got = distance(features, backend="triton", **options)
        assert (got != expected).nnz == 0


def entries(matrix) -> dict:
    coo = matrix.tocoo()
    return dict(
        zip(zip(coo.row.tolist(), coo.col.tolist(), strict=True), coo.data.tolist(), strict=True)
    )


@pytest.mark.parametrize("distance", [gnn_distance, cosine_distance])
def test_max_pairs_keeps_the_smallest_and_gives_the_same_eps(distance):
    """A pass that keeps only the smallest pairs (small blocks, so it prunes as it goes)
    stores exactly the full matrix's pairs up to the max_pairs-th smallest non-zero."""
    x = clustered_with_duplicates()
    n = len(x)
    options = {"k1": 20, "k2": 6} if distance is gnn_distance else {}
    options["block_bytes"] = 4 * n * 11
    full = distance(x, max_distance=2.0, **options)
    upper = full.tocoo()
    upper_values = upper.data[upper.col > upper.row]
    for most in (1, 50, 700):
        kept = distance(x, max_distance=2.0, max_pairs=most, **options)
        largest = np.sort(upper_values[upper_values != 0])[most - 1]
        expected = {
            pair: value
            for pair, value in entries(full).items()
            if value <= largest or pair[0] == pair[1]
        }
        assert entries(kept) == expected
        if most >= 50:
            rho = most / (n * (n - 1) / 2)
            assert eps_from_rho(kept, rho) == eps_from_rho(full, rho)
    with pytest.raises(ValueError, match="max_pairs must be >= 1"):
        distance(x, max_pairs=0, **options)
