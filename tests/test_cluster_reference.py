"""The k-reciprocal Jaccard distance oracle (issue 17): properties and hand-checked examples.

The side-by-side check against the published ``compute_jaccard_distance`` (SpCL,
cluster-contrast-reid) is not here: it needs their code. These tests need only numpy.
"""

import numpy as np
import pytest
import torch

from triton_rerank.reference import jaccard_distance_reference


def on_circle(angles) -> np.ndarray:
    """Unit rows ``(cos a, sin a)``: for angles within pi of each other, the kNN order is
    the order of ``|a_i - a_j|`` and ``2 - 2 x_i . x_j = 2 - 2 cos(a_i - a_j)``."""
    angles = np.asarray(angles, dtype=np.float64)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def softmax_weight(angles, i, support, j) -> float:
    """``V[i, j]`` of step 4: the softmax of ``-(2 - 2 cos)`` over ``support``."""
    a = np.asarray(angles, dtype=np.float64)
    weights = {s: np.exp(-(2 - 2 * np.cos(a[i] - a[s]))) for s in support}
    return weights[j] / sum(weights.values())


def unit_gaussian(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("k1,k2", [(10, 4), (10, 1), (25, 6), (5, 5)])
def test_range_symmetry_diagonal(k1, k2):
    dist = jaccard_distance_reference(unit_gaussian(60, 8, seed=k1 + k2), k1=k1, k2=k2)
    assert dist.shape == (60, 60) and dist.dtype == np.float64
    assert (dist >= 0).all() and (dist <= 1 + 1e-12).all()
    # m[i, j] = sum_k min(V[i, k], V[j, k]) is symmetric; m[i, i] = sum_k V[i, k] = 1
    np.testing.assert_allclose(dist, dist.T, rtol=0, atol=1e-14)
    np.testing.assert_allclose(np.diag(dist), 0.0, rtol=0, atol=1e-14)


def test_permutation_equivariant():
    x = unit_gaussian(50, 6, seed=3)  # continuous: no ties, so the order is irrelevant
    perm = np.random.default_rng(4).permutation(50)
    dist = jaccard_distance_reference(x, k1=12, k2=3)
    np.testing.assert_allclose(
        jaccard_distance_reference(x[perm], k1=12, k2=3), dist[np.ix_(perm, perm)], atol=1e-14
    )


# two tight clusters of three on the unit circle: 0, 1, 2 and 3, 4, 5
TWO_CLUSTERS = [0.0, 0.1, 0.3, 2.0, 2.1, 2.3]


def test_two_clusters_k1_2_k2_1():
    """k1 = 2: each list is [self, nearest]; h = round(1) = 1 so the half lists are the
    same. 0 and 1 are each other's nearest, so R(0) = R(1) = {0, 1}; 1 is the nearest of
    2 but 2 is not in 1's list, so R(2) = {2} (likewise {3, 4} and {5}). No expansion
    adds anything. With d = 2 - 2 cos 0.1, V[0] = (p, q) and V[1] = (q, p) on {0, 1},
    p = 1 / (1 + e^-d), q = 1 - p; m[0, 1] = 2q, so D[0, 1] = 1 - 2q / (2 - 2q) = 1 - e^-d.
    Disjoint supports give m = 0, D = 1."""
    dist = jaccard_distance_reference(on_circle(TWO_CLUSTERS), k1=2, k2=1)
    expected = np.ones((6, 6))
    np.fill_diagonal(expected, 0.0)
    close = 1 - np.exp(-(2 - 2 * np.cos(0.1)))
    expected[0, 1] = expected[1, 0] = expected[3, 4] = expected[4, 3] = close
    np.testing.assert_allclose(dist, expected, rtol=0, atol=1e-12)


def test_two_clusters_query_expansion_k2_2():
    """As above, then V[i] <- mean(V[i], V[nearest of i]): V[0] = V[1] = (1/2, 1/2) on
    {0, 1}, so D[0, 1] = 0; V[2] = (q/2, p/2, 1/2) on {0, 1, 2}, so m[0, 2] = (p + q) / 2
    = 1/2 and D[0, 2] = D[1, 2] = 1 - (1/2) / (3/2) = 2/3. The clusters stay apart."""
    dist = jaccard_distance_reference(on_circle(TWO_CLUSTERS), k1=2, k2=2)
    block = np.array([[0, 0, 2 / 3], [0, 0, 2 / 3], [2 / 3, 2 / 3, 0]])
    expected = np.ones((6, 6))
    expected[:3, :3] = expected[3:, 3:] = block
    np.testing.assert_allclose(dist, expected, rtol=0, atol=1e-12)


# eight points on a line (tiny angles), k1 = 6: h = 3, half lists 4 long
LINE = [0.0, 0.08, 0.09, 0.20, 0.27, 0.30, 0.36, 0.38]


def test_expansion_joins_sets_that_do_not_meet():
    """Lists (nearest first): 0: 0 1 2 3 4 5; 1: 1 2 0 3 4 5; 2: 2 1 0 3 4 5;
    3: 3 4 5 2 1 6; 4: 4 5 3 6 7 2; 5: 5 4 6 7 3 2; 6: 6 7 5 4 3 2; 7: 7 6 5 4 3 2.
    R(0) = {0, 1, 2} (0 is in none of the lists of 3, 4, 5); R(7) = {4, 5, 6, 7}: disjoint.
    Half lists of 4: R_h(2) = {0, 1, 2, 3} meets R(0) in 3 > 2/3 * 4, so E(0) = {0, 1, 2, 3};
    R_h(4) = {3, 4, 5, 6} meets R(7) in 3, so E(7) = {3, 4, 5, 6, 7}. With k2 = 1 the only
    common item is 3: D[0, 7] = 1 - m / (2 - m), m = min(V[0, 3], V[7, 3])."""
    dist = jaccard_distance_reference(on_circle(LINE), k1=6, k2=1)
    m = min(softmax_weight(LINE, 0, [0, 1, 2, 3], 3), softmax_weight(LINE, 7, [3, 4, 5, 6, 7], 3))
    assert 0 < m < 0.5
    np.testing.assert_allclose(dist[0, 7], 1 - m / (2 - m), rtol=0, atol=1e-12)
    np.testing.assert_allclose(dist[7, 0], dist[0, 7], rtol=0, atol=1e-15)


def test_exact_copies_tie_rule():
    """Rows 0, 1, 2 equal, k1 = 2: equal distances by smaller index, so every copy's list
    is [0, 1]. R(0) = R(1) = {0, 1} with weights 1/2 each: D[0, 1] = 0. Copy 2 is in no
    list, not even its own: R(2) is empty, V[2] = 0, and with k2 = 1 its row and column,
    its diagonal included, are all 1 (m = 0)."""
    x = on_circle([0.0, 0.0, 0.0, 1.5, 1.6, 1.8])
    dist = jaccard_distance_reference(x, k1=2, k2=1)
    assert dist[0, 1] == dist[1, 0] == pytest.approx(0.0, abs=1e-15)
    np.testing.assert_array_equal(dist[2], 1.0)
    np.testing.assert_array_equal(dist[:, 2], 1.0)


def test_k1_equal_to_n_is_allowed():
    """The lists hold k1 items with self (the published code asks FAISS for k1), so k1 = N
    is every item: all sets are everything, all rows of V have the full support."""
    x = unit_gaussian(12, 4, seed=5)
    dist = jaccard_distance_reference(x, k1=12, k2=1)
    assert (dist < 1).all()
    np.testing.assert_allclose(np.diag(dist), 0.0, atol=1e-14)


def test_inputs_float32_and_tensor():
    x = unit_gaussian(30, 5, seed=6).astype(np.float32)
    dist = jaccard_distance_reference(x, k1=8, k2=3)
    np.testing.assert_array_equal(jaccard_distance_reference(torch.from_numpy(x), k1=8, k2=3), dist)


@pytest.mark.parametrize(
    "k1,k2,match",
    [(11, 3, "k1 must be in"), (0, 1, "k1 must be in"), (5, 6, "k2 must be in"), (5, 0, "k2")],
)
def test_bad_parameters(k1, k2, match):
    with pytest.raises(ValueError, match=match):
        jaccard_distance_reference(unit_gaussian(10, 3, seed=0), k1=k1, k2=k2)


@pytest.mark.parametrize("shape", [(0, 3), (5,), (2, 3, 4)])
def test_bad_shapes(shape):
    with pytest.raises(ValueError, match="features must be"):
        jaccard_distance_reference(np.zeros(shape), k1=1, k2=1)


def test_overlap_must_exceed_two_thirds():
    """k1 = 6 (half lists of 4) on a line: lists 1: 1 2 3 4 0 5; 5: 5 4 3 6 2 1;
    6: 6 7 5 4 3 2; 7: 7 6 5 4 3 2 (0-4 lie left of 5). R(7) = {6, 7} and
    R_h(6) = {5, 6, 7} meets it in 2, exactly 2/3 of 3: not more, so 5 is not added and
    E(7) = {6, 7}. E(1) = {0, ..., 5} (R_h(5) = {5, 6} meets R(1) in 1 only), so the
    supports are disjoint: D[1, 7] = 1. With ">=" 5 would join E(7) and D[1, 7] < 1."""
    positions = np.array([2, 15, 17, 20, 21, 31, 44, 52]) * 0.01
    dist = jaccard_distance_reference(on_circle(positions), k1=6, k2=1)
    assert dist[1, 7] == dist[7, 1] == 1.0
    assert dist[1, 5] < 1 and dist[5, 7] < 1


def test_half_length_rounds_half_to_even():
    """k1 = 7: h = int(np.around(3.5)) = 4, so the half lists are 5 long (3.5 -> 3 would
    make them 4). Lists: 4: 4 3 2 1 5 6 0; 5: 5 6 7 8 4 3 2. R(0) = {0, 1, 2, 3, 4} and
    R(7) = {5, 6, 7, 8} are disjoint; R_h(4) = {1, 2, 3, 4, 5} meets R(0) in 4 > 2/3 * 5,
    so 5 joins E(0) and D[0, 7] < 1 (with lists of 4, R_h(4) = {1, 2, 3, 4}: D = 1)."""
    positions = np.array([1, 9, 15, 16, 18, 32, 33, 36, 42]) * 0.01
    dist = jaccard_distance_reference(on_circle(positions), k1=7, k2=1)
    assert dist[0, 7] < 1
