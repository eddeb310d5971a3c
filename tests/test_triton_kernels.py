"""The Triton kernels one by one (``ref`` vs ``tri``): compiled on a GPU, else interpreted.

Shapes are small (the interpreter is slow) but chosen to hit every code path: masked
row/column/feature tails, several column tiles, k from 1 to 128.
"""

import numpy as np
import pytest
import torch
from compare import assert_same_topk, four_halves_vectors

from triton_rerank import reference

triton = pytest.importorskip("triton", reason="the Triton kernel tests need triton")
tl = pytest.importorskip("triton.language")
tiles = pytest.importorskip("triton_rerank.gpu.tiles")
pack_keys, unpack_keys = tiles.pack_keys, tiles.unpack_keys

# Every launcher's new output buffers start as NaN / -7 (see conftest.py), so an element
# a kernel leaves unwritten fails the comparisons.
pytestmark = [pytest.mark.interpreter, pytest.mark.usefixtures("poisoned_kernel_outputs")]

TOPK_CASES = [
    # (n, m, d, k, dtype)
    (37, 150, 20, 5, torch.float32),  # tails in rows, columns and features
    (40, 200, 33, 26, torch.float16),  # Market's k1, several column tiles
    (20, 130, 16, 1, torch.float32),  # k = 1
    (17, 300, 8, 128, torch.bfloat16),  # k = 128: one running top-k per 128-column tile
    (5, 64, 3, 64, torch.float32),  # k = m
    # k = m unaligned: the 128-wide tile has 58 masked columns, which score 0 and beat
    # every negative score unless masked out of the top-k
    (5, 70, 3, 70, torch.float32),  # (through the certified path: all columns candidates)
    (6, 70, 5, 70, torch.float16),  # (the streaming kernel alone)
]


def test_kernel_outputs_start_poisoned(poisoned_kernel_outputs):
    from triton_rerank.gpu import topk_similarity

    values = topk_similarity.torch.empty(2, 3, dtype=torch.float32)
    indices = topk_similarity.torch.empty(2, 3, dtype=torch.int64)
    assert torch.isnan(values).all() and torch.all(indices == -7)


def _features(rng, n, d, dtype, device):
    return torch.from_numpy(rng.standard_normal((n, d), dtype=np.float32)).to(device, dtype)


@pytest.mark.parametrize(
    "n, m, d, k, dtype",
    TOPK_CASES,
    ids=[f"n{n}-m{m}-d{d}-k{k}-{str(t)[6:]}" for n, m, d, k, t in TOPK_CASES],
)
def test_topk_similarity_matches_sorted_products(n, m, d, k, dtype, kernel_device):
    from triton_rerank.gpu.topk_similarity import topk_similarity

    rng = np.random.default_rng(n + m + d + k)
    x, y = _features(rng, n, d, dtype, kernel_device), _features(rng, m, d, dtype, kernel_device)
    tri_values, tri_indices = topk_similarity(x, y, k)
    assert tri_values.device == x.device and tri_indices.dtype == torch.int64
    ref = x.double() @ y.double().T  # low-precision inputs: the products are exact in fp32
    assert_same_topk(tri_values, tri_indices, ref, k, atol=1e-5)


def test_topk_similarity_of_a_matrix_with_itself_finds_every_row_first(kernel_device):
    from triton_rerank.gpu.topk_similarity import topk_similarity

    rng = np.random.default_rng(3)
    x = torch.nn.functional.normalize(_features(rng, 90, 24, torch.float32, kernel_device))
    values, indices = topk_similarity(x, x, 10)
    assert torch.equal(indices[:, 0].cpu(), torch.arange(90))
    assert_same_topk(values, indices, x.double() @ x.double().T, 10)


def test_topk_similarity_tie_rule_equal_scores_by_smaller_column(kernel_device):
    from triton_rerank.gpu.topk_similarity import topk_similarity

    # +-0.5 rows: exact products, many equal scores, +0.0 and -0.0 among them
    rng = np.random.default_rng(7)
    x = torch.from_numpy(four_halves_vectors(rng, 33)).to(kernel_device)
    y = torch.from_numpy(four_halves_vectors(rng, 140)).to(kernel_device)
    y[70:] = y[:70].clone()  # every score appears at least twice
    values, indices = topk_similarity(x, y, 40)
    ref_values, ref_indices = reference.similarity_topk(x, y, 40)
    assert torch.equal(indices.cpu(), ref_indices)
    assert torch.equal(values.cpu(), ref_values.float())


@triton.jit
def _pack_keys_probe(scores_ptr, cols_ptr, keys_ptr, values_ptr, out_cols_ptr, BLOCK: tl.constexpr):
    """Keys of one row of scores (``tiles.pack_keys``), and the keys unpacked again."""
    o = tl.arange(0, BLOCK)
    b_keys = pack_keys(tl.load(scores_ptr + o)[None, :], tl.load(cols_ptr + o))
    tl.store(keys_ptr + o[None, :], b_keys)
    b_values, b_cols = unpack_keys(b_keys)
    tl.store(values_ptr + o[None, :], b_values)
    tl.store(out_cols_ptr + o[None, :], b_cols)


def test_pack_keys_ties_negative_zero_with_positive_zero(kernel_device):
    # exact zeros of both signs (an inner product of orthogonal rows, or a tiny negative
    # one scaled by lamb, is -0.0 or +0.0), among the smallest non-zero scores
    tiny = 2.0**-149
    scores = [0.0, -0.0, -0.0, 0.0, 1.0, -1.0, tiny, -tiny]
    cols = [5, 2, 7, 0, 3, 4, 1, 6]
    assert np.signbit(scores).tolist() == [False, True, True, False, False, True, False, True]
    scores_t = torch.tensor(scores, dtype=torch.float32, device=kernel_device)
    cols_t = torch.tensor(cols, dtype=torch.int32, device=kernel_device)
    keys, values, out_cols = (
        torch.empty(8, dtype=dtype, device=kernel_device)
        for dtype in (torch.int64, torch.float32, torch.int64)
    )
    _pack_keys_probe[(1,)](scores_t, cols_t, keys, values, out_cols, BLOCK=8)
    keys = keys.cpu()
    # (score descending, column ascending) with -0.0 == +0.0: the four zeros by column
    order = torch.argsort(keys, descending=True)
    assert [cols[i] for i in order] == [3, 1, 0, 2, 5, 7, 6, 4]
    zero = keys[scores_t.cpu() == 0]  # equal scores: keys differ in the column bits only
    assert torch.equal(zero >> 32, torch.zeros(4, dtype=torch.int64))
    assert torch.equal(out_cols.cpu(), torch.tensor(cols))
    assert torch.equal(values.cpu(), scores_t.cpu())  # (-0.0 == 0.0 for torch.equal)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"k": 0}, r"k must be in \[1, min\(m, 256\)\] with m = 50, got 0"),
        ({"k": 51}, r"got 51"),
        ({"y_dtype": torch.float16}, r"share one dtype"),
        ({"y_dim": 9}, r"must be \[n, d\] and \[m, d\], got \(10, 8\) and \(50, 9\)"),
    ],
)
def test_topk_similarity_rejects_bad_input(kwargs, pattern):
    from triton_rerank.gpu.topk_similarity import topk_similarity

    x = torch.ones(10, 8)
    y = torch.ones(50, kwargs.get("y_dim", 8), dtype=kwargs.get("y_dtype", torch.float32))
    with pytest.raises(ValueError, match=pattern):
        topk_similarity(x, y, kwargs.get("k", 5))


def _clustered_unit_rows(rng, n_clusters, per_cluster, d, spread, device):
    centres = rng.standard_normal((n_clusters, d))
    x = np.repeat(centres, per_cluster, axis=0) + spread * rng.standard_normal(
        (n_clusters * per_cluster, d)
    )
    x = torch.from_numpy(x.astype(np.float32)).to(device)
    return torch.nn.functional.normalize(x, dim=1).contiguous()


def test_certified_topk_recomputes_close_calls_and_stays_exact(kernel_device):
    from triton_rerank.gpu.certified_topk import certified_topk

    # 3 tight clusters of 70: inside a cluster similarities differ by ~1e-4, below
    # float16's resolution, so the half-precision pass alone gets the order wrong
    x = _clustered_unit_rows(np.random.default_rng(11), 3, 70, 32, 0.01, kernel_device)
    ref = x.cpu().double() @ x.cpu().double().T
    half = x.cpu().half().double()
    ref_order = torch.sort(ref, dim=1, descending=True, stable=True).indices[:, :26]
    half_order = torch.sort(half @ half.T, dim=1, descending=True, stable=True).indices[:, :26]
    assert (half_order != ref_order).any(dim=1).float().mean() > 0.5  # the test has teeth
    values, indices, n_recomputed = certified_topk(x, x, 26)
    assert 0 < n_recomputed <= x.shape[0]
    assert_same_topk(values, indices, ref, 26, atol=1e-6)


def test_certified_topk_certifies_well_separated_rows(kernel_device):
    from triton_rerank.gpu.certified_topk import certified_topk

    x = _clustered_unit_rows(np.random.default_rng(12), 8, 30, 48, 0.5, kernel_device)
    y = _clustered_unit_rows(np.random.default_rng(13), 8, 40, 48, 0.5, kernel_device)
    values, indices, n_recomputed = certified_topk(x, y, 10)
    assert n_recomputed == 0
    assert_same_topk(values, indices, x.cpu().double() @ y.cpu().double().T, 10, atol=1e-6)


def test_certified_topk_with_values_below_float16_normal_range(kernel_device):
    from triton_rerank.gpu.certified_topk import certified_topk

    # float16 rounds 1.01 * 2**-25 up to 2**-24 (double): every column gets the same
    # float16 score, and the best one (32) is left out of the 32 candidates
    tiny = 2.0**-25
    x = torch.full((1, 64), 1.01 * tiny, device=kernel_device)
    y = torch.full((33, 64), -1.01 * tiny, device=kernel_device)
    y[:32, 0] = -1.02 * tiny
    values, indices, n_recomputed = certified_topk(x, y, 1)
    assert n_recomputed == 1
    assert indices.item() == 32


def test_error_bound_covers_float16_rounding():
    from triton_rerank.gpu.certified_topk import error_bound

    rng = np.random.default_rng(14)
    # magnitudes from 1e-9 (below float16's normal range) to 1e3, signs mixed
    x = rng.standard_normal((60, 256)) * 10.0 ** rng.uniform(-9, 3, (60, 256))
    y = rng.standard_normal((80, 256)) * 10.0 ** rng.uniform(-9, 3, (80, 256))
    x[:10] = 1.01 * 2.0**-25  # rows that float16 doubles
    y[:10] = -1.01 * 2.0**-25
    x, y = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))
    exact = x.double() @ y.double().T
    rounded = x.half().double() @ y.half().double().T  # fp16 products, summed exactly
    worst = (rounded - exact).abs().max(dim=1).values
    bound = error_bound(x, y).double()
    assert torch.all(worst <= bound)
    assert torch.all(bound < 100 * worst)  # and not uselessly loose


def test_float16_pass_stays_within_the_error_bound(kernel_device):
    """The kernel's own float16 products and sums (tensor cores on a GPU) against fp64 of
    the float32 rows, on cancelling data: large entries of both signs, small sums."""
    from triton_rerank.gpu.certified_topk import error_bound
    from triton_rerank.gpu.streaming_topk import streaming_topk

    rng = np.random.default_rng(16)
    x = rng.standard_normal((40, 96)) * 10.0 ** rng.uniform(-3, 2, (40, 96))
    # y_c pairs dimensions (2l, 2l+1) of x_c as (x_2l+1, -x_2l): large products that cancel
    cancelling = np.empty((40, 96))
    cancelling[:, 0::2], cancelling[:, 1::2] = x[:, 1::2], -x[:, 0::2]
    y = np.concatenate(
        [cancelling + 1e-3 * rng.standard_normal((40, 96)), rng.standard_normal((88, 96))]
    )
    x, y = (torch.from_numpy(a.astype(np.float32)).to(kernel_device) for a in (x, y))
    m = y.shape[0]
    values, indices = streaming_topk(m, x.shape[0], m, x=x.half(), y=y.half())  # all columns
    approx = torch.empty_like(values).scatter_(1, indices, values).cpu().double()
    exact = x.cpu().double() @ y.cpu().double().T
    assert torch.all((approx - exact).abs().max(dim=1).values <= error_bound(x, y).cpu())


def test_topk_similarity_beyond_float16_range_stays_exact(kernel_device):
    from triton_rerank.gpu.topk_similarity import topk_similarity

    rng = np.random.default_rng(15)
    x = _features(rng, 30, 16, torch.float32, kernel_device) * 1e5  # inf in float16
    values, indices = topk_similarity(x, x, 5)
    assert torch.isfinite(values).all()
    ref = x.cpu().double() @ x.cpu().double().T
    assert_same_topk(values / 1e10, indices, ref / 1e10, 5)  # scores of order 1e10


def _random_csr(rng, n_rows, n_cols, max_per_row, device, empty_rows=()):
    """CsrRows with unique random columns per row, and their dense ``[n_rows, n_cols]``."""
    from triton_rerank.gpu.aggregate import CsrRows

    dense = np.zeros((n_rows, n_cols), dtype=np.float32)
    for r in range(n_rows):
        if r not in empty_rows:
            cols = rng.choice(n_cols, rng.integers(1, max_per_row + 1), replace=False)
            dense[r, cols] = rng.uniform(0.1, 1.0, cols.size)
    rows, cols = np.nonzero(dense)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_rows))])
    csr = CsrRows(
        torch.from_numpy(indptr).to(device),
        torch.from_numpy(cols).to(device),
        torch.from_numpy(dense[rows, cols]).to(device),
        n_cols,
    )
    return csr, torch.from_numpy(dense).double()


def _overlapping_rows(kernel_device):
    """W ``[12, 60]`` (40 weights per row: several weight blocks; row 5 empty) and S
    ``[60, 1100]`` (rows up to 150 long: several entry steps; columns shared between
    rows, so the sums collide), with their dense forms."""
    rng = np.random.default_rng(5)
    weights, w_dense = _random_csr(rng, 12, 60, 40, kernel_device, empty_rows=(5,))
    source, s_dense = _random_csr(rng, 60, 1100, 150, kernel_device)
    return weights, source, reference.aggregated_rows(w_dense, s_dense, normalize=False)[0]


def _overlapping_dense():
    """The dense W and S of :func:`_overlapping_rows` (same seed)."""
    rng = np.random.default_rng(5)
    w_dense = _random_csr(rng, 12, 60, 40, "cpu", empty_rows=(5,))[1]
    return w_dense, _random_csr(rng, 60, 1100, 150, "cpu")[1]


def test_aggregate_dense_matches_dense_product(kernel_device):
    from triton_rerank.gpu.aggregate import aggregate_dense

    weights, source, ref = _overlapping_rows(kernel_device)
    tri = aggregate_dense(weights, source)
    torch.testing.assert_close(tri.cpu().double(), ref, rtol=1e-5, atol=1e-7)
    assert torch.all(tri[5] == 0)
    block = aggregate_dense(weights.row_slice(3, 9), source)  # a view into the buffers
    torch.testing.assert_close(block.cpu().double(), ref[3:9], rtol=1e-5, atol=1e-7)


def _csr_to_dense(rows) -> torch.Tensor:
    indptr, cols = rows.indptr.cpu(), rows.indices.cpu()
    dense = torch.zeros(rows.n_rows, rows.n_cols, dtype=torch.float64)
    for r in range(rows.n_rows):
        row_cols = cols[indptr[r] : indptr[r + 1]]
        assert row_cols.unique().numel() == row_cols.numel(), f"row {r} repeats a column"
        dense[r, row_cols] = rows.values.cpu()[indptr[r] : indptr[r + 1]].double()
    return dense


@pytest.mark.parametrize(
    "start, stop, max_slots",
    [(0, 12, 2**26), (4, 11, 2**26), (0, 12, 2000)],
    ids=["all-rows", "row-slice", "several-launches"],
)
def test_aggregate_sparse_matches_normalised_dense_product(
    start, stop, max_slots, kernel_device, monkeypatch
):
    from triton_rerank import limits
    from triton_rerank.gpu import aggregate, launch_config

    # more rows than programs: each program's scratch row must be clean for its next row
    assert launch_config.INTERPRETER_PROGRAMS < stop - start
    # 2,000 slots: the 12 rows (about 20 x 75 slots each) take a launch per row or two
    monkeypatch.setattr(limits, "GPU_MAX_SLOTS_PER_LAUNCH", max_slots)
    weights, source, ref = _overlapping_rows(kernel_device)
    ref, ref_norms = reference.aggregated_rows(*_overlapping_dense(), normalize=False)
    ref, ref_norms = ref[start:stop], ref_norms[start:stop]
    rows, norms = aggregate.aggregate_sparse(weights.row_slice(start, stop), source)
    torch.testing.assert_close(norms.cpu().double(), ref_norms, rtol=1e-5, atol=0)
    assert int(rows.indptr[0]) == 0 and rows.indptr.shape[0] == stop - start + 1
    assert torch.all(rows.values != 0)
    dense = _csr_to_dense(rows)
    normalised = reference.aggregated_rows(*_overlapping_dense())[0][start:stop]
    torch.testing.assert_close(dense, normalised, rtol=1e-5, atol=1e-7)
    assert torch.equal(dense != 0, ref != 0)  # every summed column, once
    none, norms_only = aggregate.aggregate_sparse(
        weights.row_slice(start, stop), source, write_rows=False
    )
    assert none is None
    torch.testing.assert_close(norms_only, norms, rtol=1e-6, atol=0)


@pytest.mark.parametrize("lamb", [0.0, 0.3, 1.0])
def test_score_block_and_topk_block_match_the_two_hop_formula(lamb, kernel_device):
    from triton_rerank.gpu.scoring import score_block, topk_block
    from triton_rerank.gpu.tiles import TwoHopTerms

    rng = np.random.default_rng(int(10 * lamb))
    n_query, n_gallery, n_nodes, n_terms, d = 21, 150, 170, 5, 40
    xq = _features(rng, n_query, d, torch.float32, kernel_device)
    xg = _features(rng, n_gallery, d, torch.float32, kernel_device)
    z = torch.from_numpy(rng.uniform(0, 1, (n_query, n_nodes)).astype(np.float32))
    g_idx = torch.from_numpy(rng.integers(0, n_nodes, (n_gallery, n_terms)))
    g_val = torch.from_numpy(rng.uniform(0, 1, (n_gallery, n_terms)).astype(np.float32))
    g_inv_norm = torch.from_numpy(rng.uniform(0.5, 2, n_gallery).astype(np.float32))
    terms = TwoHopTerms(*(t.to(kernel_device) for t in (z, g_idx, g_val, g_inv_norm)))
    ref = reference.two_hop_scores(z, g_idx, g_val, g_inv_norm, xq, xg, lamb=lamb)

    tri = torch.full((n_query, n_gallery), float("nan"), device=kernel_device)
    score_block(xq, xg, lamb=lamb, two_hop=terms, out=tri)
    torch.testing.assert_close(tri.cpu().double(), ref, rtol=0, atol=2e-5)
    values, indices = topk_block(xq, xg, lamb=lamb, two_hop=terms, k=17)
    assert_same_topk(values, indices, ref, 17)
