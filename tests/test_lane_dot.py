"""lane_dot: the fixed-order float32 inner product of the inductive scoring, written as
LLVM vector code, against its definition computed with numpy float32 operations."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from triton_rerank.cpu.kernels.inductive_scores import _similarities
from triton_rerank.cpu.kernels.lane_dot import LANES, lane_dot, lane_dot_rows, lane_dot_scalar


def defined_order(a: np.ndarray, b: np.ndarray) -> np.float32:
    """The module's order, one rounded numpy float32 operation at a time."""
    d = a.shape[0]
    n_full = d - d % LANES
    partial = np.zeros(LANES, np.float32)
    for e in range(0, n_full, LANES):
        partial = partial + a[e : e + LANES] * b[e : e + LANES]
    for e in range(n_full, d):
        partial[e - n_full] = partial[e - n_full] + a[e] * b[e]
    p = partial
    return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]))


@njit
def _lane_dots(a, b, out):
    for i in range(a.shape[0]):
        out[i] = lane_dot(a[i], b[i])


def rows_whose_sums_depend_on_the_order(n: int, d: int, seed: int):
    """Entries of magnitudes 1e-4 .. 1e4 with mixed signs: any other order of the sum
    changes the last bits of most of them."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-4, 4, (2, n, d))
    a, b = (rng.standard_normal((n, d)) * s for s in scale)
    return a.astype(np.float32), b.astype(np.float32)


@pytest.mark.parametrize("d", [1, 3, 7, 8, 9, 15, 16, 17, 64, 128, 131, 784])
def test_lane_dot_sums_in_the_defined_order(d):
    a, b = rows_whose_sums_depend_on_the_order(200, d, seed=d)
    out = np.empty(200, np.float32)
    _lane_dots(a, b, out)
    expected = np.array([defined_order(x, y) for x, y in zip(a, b, strict=True)], np.float32)
    np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))
    scalar = np.array([lane_dot_scalar(x, y) for x, y in zip(a, b, strict=True)], np.float32)
    np.testing.assert_array_equal(scalar.view(np.uint32), expected.view(np.uint32))
    if d >= 2 * LANES:  # the order is visible: a plain sequential sum differs
        sequential = np.array(
            [np.cumsum(x * y, dtype=np.float32)[-1] for x, y in zip(a, b, strict=True)]
        )
        assert (sequential.view(np.uint32) != expected.view(np.uint32)).mean() > 0.5


@njit
def _row_dots(a, matrix, rows, out):
    """lane_dot_rows over ``rows`` in tuples of one to four rows (the widths used)."""
    n = rows.shape[0]
    c = 0
    while c + 4 <= n:
        out[c], out[c + 1], out[c + 2], out[c + 3] = lane_dot_rows(
            a, matrix, (rows[c], rows[c + 1], rows[c + 2], rows[c + 3])
        )
        c += 4
    if c + 3 <= n:
        out[c], out[c + 1], out[c + 2] = lane_dot_rows(
            a, matrix, (rows[c], rows[c + 1], rows[c + 2])
        )
        c += 3
    if c + 2 <= n:
        out[c], out[c + 1] = lane_dot_rows(a, matrix, (rows[c], rows[c + 1]))
        c += 2
    if c < n:
        (out[c],) = lane_dot_rows(a, matrix, (rows[c],))


@pytest.mark.parametrize("d", [1, 7, 8, 17, 128, 131])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 41])
def test_lane_dot_rows_is_lane_dot_row_by_row(d, n):
    matrix, _ = rows_whose_sums_depend_on_the_order(60, d, seed=d + n)
    a, _ = rows_whose_sums_depend_on_the_order(1, d, seed=3)
    rows = np.random.default_rng(n).integers(0, 60, n)  # repeats included
    out = np.empty(n, np.float32)
    _row_dots(a[0], matrix, rows, out)
    expected = np.array([defined_order(a[0], matrix[r]) for r in rows], np.float32)
    np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("count", [0, 1, 3, 4, 5, 300, 303])
def test_similarities_of_scattered_rows_match_lane_dot(count):
    vectors, _ = rows_whose_sums_depend_on_the_order(500, 131, seed=1)
    query = vectors[7].copy()
    positions = np.random.default_rng(2).integers(0, 500, count)
    out = np.empty(count, np.float32)
    _similarities(query, vectors, positions, out)
    expected = np.array([defined_order(query, vectors[p]) for p in positions], np.float32)
    np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))
