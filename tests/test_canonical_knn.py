"""The canonical kNN: lists decided by the tie rule on the canonical similarities, never by
rounding, identical on every backend and mode, and certified soundly (see
``triton_rerank/canonical.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compare import assert_same_ranking

import triton_rerank.cpu.knn as graph_module
from triton_rerank import canonical, gnn_rerank, reference
from triton_rerank.checks import check_features
from triton_rerank.cpu.kernels.canonical import canonical_dot
from triton_rerank.cpu.knn import knn_graph, knn_with_database

PRECISIONS = ["bf16", "fp32"]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def straddling_copies(rng, n: int, d: int, k: int, at: int, copies: int) -> np.ndarray:
    """Unit rows where row 0's ``at``-th neighbour (1-based) has ``copies`` exact copies,
    so that the k-th place falls inside a group of identical rows; the rows are then
    shuffled (row 0 stays first), so copies sit at indices before and after the others."""
    anchor = unit(rng.standard_normal((1, d)))[0]
    # neighbours at distinct, well-separated similarities to the anchor
    levels = np.linspace(0.95, 0.3, n - 1)
    others = unit(rng.standard_normal((n - 1, d)))
    others -= (others @ anchor)[:, None] * anchor
    others = unit(others)
    rows = levels[:, None] * anchor + np.sqrt(1 - levels**2)[:, None] * others
    rows[at - 1 : at - 1 + copies] = rows[at - 1]  # the copies around place `at`
    order = np.concatenate([[0], 1 + rng.permutation(n - 2)])
    return unit(np.concatenate([anchor[None], rows])[order])


def data(kind: str, rng, n: int, d: int, k: int) -> np.ndarray:
    if kind == "gaussian":
        return unit(rng.standard_normal((n, d)))
    if kind == "copies everywhere":  # every third row copies its neighbour
        x = rng.standard_normal((n, d))
        x[1::3] = x[0::3][: len(x[1::3])]
        return unit(x)
    if kind == "all identical":
        return unit(np.repeat(rng.standard_normal((1, d)), n, axis=0))
    if kind == "half identical":
        x = rng.standard_normal((n, d))
        x[: n // 2] = x[0]
        return unit(x)
    if kind == "copies at the k1 boundary":
        return straddling_copies(rng, n, d, k, at=k - 1, copies=4)
    if kind == "copies at the k2 boundary":
        return straddling_copies(rng, n, d, k, at=5, copies=3)
    if kind == "near-ties at the bound":
        # tight clusters of ~100 (more than k + margin): gaps far below bf16 resolution
        n_clusters = max(1, n // 100)
        centres = rng.standard_normal((n_clusters, d))
        x = centres[rng.integers(0, n_clusters, n)] + 1e-4 * rng.standard_normal((n, d))
        return unit(x)
    raise ValueError(kind)


KINDS = [
    "gaussian",
    "copies everywhere",
    "all identical",
    "half identical",
    "copies at the k1 boundary",
    "copies at the k2 boundary",
    "near-ties at the bound",
]
SIZES = [  # (n, d, k, strip rows)
    (90, 16, 26, 7),  # several strips, unaligned
    (61, 5, 26, 61),  # one strip, d = 5
    (700, 33, 26, 128),  # many strips, several 256-column chunks
]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("n, d, k, strip_rows", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("kind", KINDS)
def test_lists_equal_the_canonical_reference(kind, n, d, k, strip_rows, precision):
    x = data(kind, np.random.default_rng(n + d), n, d, k)
    values, indices, _ = knn_graph(
        torch.from_numpy(x), k, strip_bytes=4 * n * strip_rows, precision=precision
    )
    ref_values, ref_indices = reference.knn(torch.from_numpy(x), k)
    np.testing.assert_array_equal(indices, ref_indices.numpy())
    np.testing.assert_array_equal(values, ref_values.numpy())


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize(
    "kind", ["copies everywhere", "copies at the k1 boundary", "near-ties at the bound"]
)
def test_query_strips_and_the_kept_base_give_the_same_lists(kind, precision):
    x = data(kind, np.random.default_rng(4), 300, 24, 26)
    nodes = torch.from_numpy(x)
    values, indices, base = knn_graph(
        nodes,
        26,
        n_query=37,
        keep_query_gallery=True,
        strip_bytes=4 * 300 * 50,
        precision=precision,
    )
    ref_values, ref_indices = reference.knn(nodes, 26)
    np.testing.assert_array_equal(indices, ref_indices.numpy())
    np.testing.assert_array_equal(values, ref_values.numpy())
    np.testing.assert_allclose(base.numpy(), x[:37] @ x[37:].T, atol=1e-6)


def test_identical_rows_have_bit_identical_values_wherever_they_sit():
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((500, 64)))
    x[[3, 250, 499]] = x[100]
    values, indices, _ = knn_graph(torch.from_numpy(x), 10, strip_bytes=4 * 500 * 33)
    for row in (3, 250, 499):
        np.testing.assert_array_equal(indices[row], indices[100])
        np.testing.assert_array_equal(values[row], values[100])
    # and the canonical value itself is symmetric and position-free
    assert canonical_dot(x[3], x[7]) == canonical_dot(x[7], x[3]) == canonical_dot(x[499], x[7])


def test_canonical_dot_is_the_ordered_float64_sum():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((2, 300)).astype(np.float32) * 10.0 ** rng.uniform(-5, 5, 300)
    total = 0.0
    for a, b in zip(x.astype(np.float64), y.astype(np.float64), strict=True):
        total += a * b
    assert canonical_dot(x.astype(np.float32), y.astype(np.float32)) == np.float32(total)


@pytest.mark.parametrize("scale", [1e-30, 1e-22, 1.0, 3e19, 1e30], ids=lambda s: f"{s:g}")
def test_unit_rows_are_scale_free_and_equal_the_reference(scale):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 48)).astype(np.float32)
    scaled = (x.astype(np.float64) * scale).astype(np.float32)
    ours = check_features(scaled[:10], scaled[10:], normalize=True).nodes
    np.testing.assert_array_equal(ours.numpy(), reference.unit_rows(torch.from_numpy(scaled)))
    # a power of two never changes a unit row, whatever the magnitude
    doubled = check_features(scaled[:10] * 2, scaled[10:] * 2, normalize=True).nodes
    np.testing.assert_array_equal(doubled.numpy(), ours.numpy())
    np.testing.assert_allclose(np.linalg.norm(ours.numpy(), axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(ours.numpy(), unit(x), atol=1e-6)


@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e200, 1e300], ids=lambda s: f"{s:g}")
def test_unit_rows_of_float64_rows_beyond_float32(scale):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 16))
    ours = check_features(x[:4] * scale, x[4:] * scale, normalize=True).nodes.numpy()
    np.testing.assert_allclose(ours, unit(x), atol=1e-6)
    np.testing.assert_array_equal(ours, reference.unit_rows(torch.from_numpy(x * scale)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_unit_rows_on_the_cpu_and_with_torch_are_bit_identical(dtype):
    # the CPU kernel and the torch version (what CUDA tensors use) of one definition
    rng = np.random.default_rng(11)
    x = rng.standard_normal((300, 70)) * 10.0 ** rng.uniform(-3, 3, (300, 1))
    x = torch.from_numpy(x).to(dtype)
    ours, with_torch = torch.empty(300, 70), torch.empty(300, 70)
    canonical.unit_rows(x, ours)
    canonical.unit_rows_with_torch(x, with_torch)
    assert torch.equal(ours, with_torch)
    assert torch.equal(ours, reference.unit_rows(x))


def test_duplicate_rows_across_query_and_gallery_normalise_identically():
    rng = np.random.default_rng(4)
    xq = rng.standard_normal((5, 37)) * 1e-3
    xg = np.concatenate([rng.standard_normal((20, 37)), xq[::-1]])
    nodes = check_features(xq, xg, normalize=True).nodes.numpy()
    np.testing.assert_array_equal(nodes[:5], nodes[-5:][::-1])


@pytest.mark.parametrize(
    "kind",
    [
        "copies everywhere",
        "all identical",
        "half identical",
        "copies at the k1 boundary",
        "near-ties at the bound",
    ],
)
def test_bf16_and_fp32_passes_give_bit_identical_results(kind, monkeypatch):
    x = data(kind, np.random.default_rng(5), 260, 40, 26)
    xq, xg = x[:40], x[40:]
    results = {}
    for precision in PRECISIONS:
        monkeypatch.setenv("TRITON_RERANK_KNN_PRECISION", precision)
        results[precision] = (gnn_rerank(xq, xg), *gnn_rerank(xq, xg, topk=30))
    for ours_bf16, ours_fp32 in zip(results["bf16"], results["fp32"], strict=True):
        np.testing.assert_array_equal(ours_bf16, ours_fp32)


@pytest.mark.parametrize(
    "kind",
    ["copies everywhere", "all identical", "copies at the k1 boundary", "near-ties at the bound"],
)
def test_a_query_batch_against_cached_database_lists_equals_one_graph(kind):
    # the FAISS exact mode's path: database lists computed once, queries added per batch
    x = data(kind, np.random.default_rng(6), 240, 20, 12)
    nodes = torch.from_numpy(x)
    n_query = 30
    db_values, db_indices, _ = knn_graph(nodes[n_query:], 12)
    values, indices, base = knn_with_database(
        nodes, n_query, db_values, db_indices, 12, keep_query_gallery=True, strip_bytes=4 * 240 * 8
    )
    want_values, want_indices, _ = knn_graph(nodes, 12)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_allclose(base.numpy(), x[:n_query] @ x[n_query:].T, atol=1e-6)


def test_the_certificate_sends_near_ties_to_the_canonical_recomputation():
    x = data("near-ties at the bound", np.random.default_rng(7), 200, 32, 26)
    report = {}
    values, indices, _ = knn_graph(torch.from_numpy(x), 26, precision="bf16", report=report)
    assert report["close_calls"] > 100  # bf16 cannot separate 1e-4 gaps
    ref_values, ref_indices = reference.knn(torch.from_numpy(x), 26)
    np.testing.assert_array_equal(indices, ref_indices.numpy())
    # well-separated rows are all proven by the fast pass
    gaussian = torch.from_numpy(data("gaussian", np.random.default_rng(8), 400, 64, 10))
    knn_graph(gaussian, 10, report=report)
    assert report["close_calls"] == 0


def _bound_cases(rng):
    """Rows with mixed magnitudes (1e-30 to 1e3), cancelling pairs and subnormals."""
    x = rng.standard_normal((30, 96)) * 10.0 ** rng.uniform(-6, 3, (30, 96))
    cancelling = np.empty_like(x)
    cancelling[:, 0::2], cancelling[:, 1::2] = x[:, 1::2], -x[:, 0::2]
    y = np.concatenate(
        [
            cancelling + 1e-3 * rng.standard_normal(x.shape),
            rng.standard_normal((30, 96)),
            np.full((2, 96), 1e-41),
            rng.standard_normal((2, 96)) * 1e-30,
        ]
    )
    return np.concatenate([x, y]).astype(np.float32)


def _rounding_and_errors(nodes, way: str):
    """The bfloat16 copy and the bounds: from torch (``canonical``) or from the CPU
    path's one pass (``knn.bf16_copy``, what ``knn_graph`` uses)."""
    if way == "torch":
        rounding = canonical.bf16_rounding(nodes)
        return rounding, graph_module.ProductErrors.of(nodes, rounding)
    rounding, norms = graph_module.bf16_copy(nodes)
    return rounding, graph_module.ProductErrors.of(nodes, rounding, norms)


@pytest.mark.parametrize("way", ["torch", "one pass"])
def test_the_error_bounds_hold(way):
    nodes = torch.from_numpy(_bound_cases(np.random.default_rng(9)))
    exact = nodes.double() @ nodes.double().T
    rounding, errors = _rounding_and_errors(nodes, way)
    assert torch.equal(rounding[0], nodes.to(torch.bfloat16))
    # float32 products (torch's own blocking) and the canonical values
    fp32 = (nodes @ nodes.T).double()
    assert torch.all((fp32 - exact).abs().max(dim=1).values <= errors.fp32)
    canon = reference.canonical_similarities(nodes).double()
    assert torch.all((canon - exact).abs().max(dim=1).values <= errors.canonical)
    # bfloat16 products with bfloat16 output (torch's kernels): within the bound of the
    # float32 sums plus the slack of the output rounding
    low = (rounding[0] @ rounding[0].T).double()
    slack = canonical.bf16_output_slack(low)
    assert torch.all((low - exact).abs() <= slack + errors.bf16[:, None])
    # and the bounds are not uselessly loose on unit rows
    unit_rows = torch.from_numpy(data("gaussian", np.random.default_rng(10), 200, 512, 1))
    _, unit_errors = _rounding_and_errors(unit_rows, way)
    assert float(unit_errors.bf16.max()) < 6e-3 and float(unit_errors.fp32.max()) < 1e-4


def test_gnn_rerank_is_tie_exact_against_the_reference_on_copies():
    # the user's report: Gaussian features with rows copied exactly (27 of 90 draws off
    # by up to 0.5 before the canonical kNN)
    for seed in range(30):
        rng = np.random.default_rng(seed)
        q, g = int(rng.integers(1, 17)), int(rng.integers(10, 101))
        x = rng.standard_normal((q + g, 16)).astype(np.float32)
        x[rng.integers(0, q + g, (q + g) // 3)] = x[rng.integers(0, q + g, (q + g) // 3)]
        k1 = min(10, q + g)
        ref = gnn_rerank_reference_scores(x[:q], x[q:], k1)
        assert_same_ranking(gnn_rerank(x[:q], x[q:], k1=k1, k2=min(4, k1)), ref)


def gnn_rerank_reference_scores(xq, xg, k1):
    return reference.gnn_rerank_reference(xq, xg, k1=k1, k2=min(4, k1))
