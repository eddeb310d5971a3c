"""gnn_rerank (CPU path) against the dense reference: rankings must match."""

import itertools

import numpy as np
import pytest
import torch
from compare import (
    assert_same_ranking,
    assert_same_topk,
    exact_with_duplicates,
    gaussian,
    half_unit_vectors,
    ranking,
    to_numpy,
)

from triton_rerank import GNNReranker, gnn_rerank, limits
from triton_rerank.cpu.pipeline import keeps_query_gallery
from triton_rerank.reference import gnn_rerank_reference

GRID = list(itertools.product([0.0, 0.3], [1, 7], [1, 2, 3]))


@pytest.mark.parametrize("make_data", [gaussian, exact_with_duplicates])
@pytest.mark.parametrize(
    "lamb, k2, iterations", GRID, ids=[f"lamb{a}-k2{b}-it{c}" for a, b, c in GRID]
)
def test_random_data_matches_reference(lamb, k2, iterations, make_data):
    rng = np.random.default_rng(int(lamb * 10) + 10 * k2 + 100 * iterations)
    xq, xg = make_data(rng, 25, 130)
    kwargs = dict(k1=20, k2=k2, iterations=iterations, lamb=lamb)
    ref = gnn_rerank_reference(xq, xg, **kwargs)
    assert_same_ranking(gnn_rerank(xq, xg, **kwargs), ref)
    values, indices = gnn_rerank(xq, xg, topk=10, **kwargs)
    assert_same_topk(values, indices, ref, 10)


@pytest.mark.parametrize(
    "lamb, k2, iterations", GRID, ids=[f"lamb{a}-k2{b}-it{c}" for a, b, c in GRID]
)
def test_exactly_tied_data_matches_reference(lamb, k2, iterations):
    # +-0.5 unit vectors: 16 distinct rows, so exact kNN ties and duplicate rows everywhere
    rng = np.random.default_rng(5)
    xq, xg = half_unit_vectors(rng, 12), half_unit_vectors(rng, 60)
    kwargs = dict(k1=12, k2=k2, iterations=iterations, lamb=lamb)
    assert_same_ranking(gnn_rerank(xq, xg, **kwargs), gnn_rerank_reference(xq, xg, **kwargs))


@pytest.mark.parametrize(
    "n_query, n_gallery", [(1, 40), (30, 1), (1, 1)], ids=["q1", "g1", "q1-g1"]
)
def test_single_query_or_gallery_item(n_query, n_gallery):
    rng = np.random.default_rng(9)
    xq = rng.standard_normal((n_query, 8)).astype(np.float32)
    xg = rng.standard_normal((n_gallery, 8)).astype(np.float32)
    k1 = min(10, n_query + n_gallery)
    kwargs = dict(k1=k1, k2=min(3, k1))
    ref = gnn_rerank_reference(xq, xg, **kwargs)
    assert_same_ranking(gnn_rerank(xq, xg, **kwargs), ref)
    values, indices = gnn_rerank(xq, xg, topk=n_gallery, **kwargs)
    assert_same_topk(values, indices, ref, n_gallery)


@pytest.mark.parametrize("lamb, k2", [(0.3, 4), (0.0, 1)], ids=["lamb0.3-k2_4", "lamb0-k2_1"])
def test_more_queries_than_scoring_tasks_matches_reference(lamb, k2):
    # the CPU scoring cuts the queries into a few chunks per thread, each reusing one
    # scratch row for its queries: with 150 queries every chunk scores many, so a row left
    # dirty shows
    import numba

    from triton_rerank.cpu.kernels import jit

    n_query = 150
    assert n_query > 2 * jit.CHUNKS_PER_THREAD * numba.get_num_threads()
    rng = np.random.default_rng(21)
    xq, xg = exact_with_duplicates(rng, n_query, 40)
    kwargs = dict(k1=8, k2=k2, iterations=2, lamb=lamb)
    ref = gnn_rerank_reference(xq, xg, **kwargs)
    assert_same_ranking(gnn_rerank(xq, xg, **kwargs), ref)
    values, indices = gnn_rerank(xq, xg, topk=6, **kwargs)
    assert_same_topk(values, indices, ref, 6)


TOPK_BLOCKS = [(0.3, True), (0.3, False), (0.0, False)]


@pytest.mark.parametrize(
    "lamb, keeps_base", TOPK_BLOCKS, ids=["kept-base", "base-per-block", "lamb0"]
)
def test_topk_in_several_score_blocks_matches_reference(lamb, keeps_base, monkeypatch):
    # 7 queries per [block, g] score block: 25 queries take 4 blocks, the last partial.
    # The base similarity either comes from the kNN step (one [q, g] buffer) or is
    # computed per block (BASE_KEEP_BYTES 0; always so with lamb = 0)
    n_query, n_gallery = 25, 130
    monkeypatch.setattr(limits, "SCORE_BLOCK_BYTES", 4 * n_gallery * 7)
    if not keeps_base:
        monkeypatch.setattr(limits, "BASE_KEEP_BYTES", 0)
    topk = 10
    assert keeps_query_gallery(n_query, n_gallery, lamb=lamb, topk=topk) == keeps_base
    rng = np.random.default_rng(22)
    xq, xg = exact_with_duplicates(rng, n_query, n_gallery)
    kwargs = dict(k1=20, k2=7, iterations=2, lamb=lamb)
    values, indices = gnn_rerank(xq, xg, topk=topk, **kwargs)
    assert_same_topk(values, indices, gnn_rerank_reference(xq, xg, **kwargs), topk)
    monkeypatch.undo()
    one_block = gnn_rerank(xq, xg, topk=topk, **kwargs)
    np.testing.assert_array_equal(values, one_block[0])
    np.testing.assert_array_equal(indices, one_block[1])


def test_lamb_zero_tie_block_is_ordered_by_gallery_index():
    # with lamb=0 every gallery item outside a query's neighbourhood scores exactly 0
    rng = np.random.default_rng(11)
    xq, xg = gaussian(rng, 4, 300, d=32)
    kwargs = dict(k1=4, k2=2, iterations=1, lamb=0.0)
    scores = gnn_rerank(xq, xg, **kwargs)
    values, indices = gnn_rerank(xq, xg, topk=300, **kwargs)
    for row_scores, row_values, row_indices in zip(scores, values, indices, strict=True):
        zero = np.flatnonzero(row_scores == 0)
        assert len(zero) > 200
        np.testing.assert_array_equal(row_indices[row_values == 0], zero)
    assert_same_ranking(scores, gnn_rerank_reference(xq, xg, **kwargs))


def test_pku_sketch_real_features(pku):
    ref = gnn_rerank_reference(pku.query_features, pku.gallery_features)
    assert_same_ranking(gnn_rerank(pku.query_features, pku.gallery_features), ref)
    values, indices = gnn_rerank(pku.query_features, pku.gallery_features, topk=20)
    assert_same_topk(values, indices, ref, 20)


def test_digits_real_images(digits):
    kwargs = dict(k1=30, k2=5, lamb=0.1)
    ref = gnn_rerank_reference(digits.query_features, digits.gallery_features, **kwargs)
    ours = gnn_rerank(digits.query_features, digits.gallery_features, **kwargs)
    assert_same_ranking(ours, ref)


def test_normalize_false_uses_raw_inner_products():
    rng = np.random.default_rng(2)
    xq = rng.standard_normal((10, 6)).astype(np.float32) * 3
    xg = rng.standard_normal((50, 6)).astype(np.float32) * 0.5
    xg[4] = 0  # a zero row is allowed without normalisation: its rows stay 0, never NaN
    kwargs = dict(k1=8, k2=4, normalize=False)
    ours = gnn_rerank(xq, xg, **kwargs)
    assert np.isfinite(ours).all()
    assert_same_ranking(ours, gnn_rerank_reference(xq, xg, **kwargs), atol=1e-4)


def test_float32_reference_agrees_with_float64():
    rng = np.random.default_rng(4)
    xq, xg = exact_with_duplicates(rng, 10, 80)
    ref64 = gnn_rerank_reference(xq, xg, k1=15)
    ref32 = gnn_rerank_reference(xq, xg, k1=15, dtype=torch.float32)
    assert ref32.dtype == torch.float32
    assert_same_ranking(ref32, ref64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_torch_in_torch_out(dtype):
    rng = np.random.default_rng(6)
    xq = torch.from_numpy(rng.standard_normal((8, 16))).to(dtype)
    xg = torch.from_numpy(rng.standard_normal((70, 16))).to(dtype)
    scores = gnn_rerank(xq, xg, k1=10, k2=4)
    assert isinstance(scores, torch.Tensor) and scores.dtype == torch.float32
    assert scores.shape == (8, 70) and scores.device == xq.device
    values, indices = gnn_rerank(xq, xg, k1=10, k2=4, topk=5)
    assert values.dtype == torch.float32 and indices.dtype == torch.int64
    ref = gnn_rerank_reference(xq.float(), xg.float(), k1=10, k2=4)
    assert_same_ranking(scores, ref)
    # numpy input of the same values gives the same numbers back as numpy (float64 holds
    # every value of each dtype exactly, and normalisation starts from the exact values)
    np_scores = gnn_rerank(xq.double().numpy(), xg.double().numpy(), k1=10, k2=4)
    assert isinstance(np_scores, np.ndarray) and np_scores.dtype == np.float32
    np.testing.assert_array_equal(np_scores, scores.numpy())


def test_numpy_float64_in_float32_out():
    rng = np.random.default_rng(8)
    values, indices = gnn_rerank(
        rng.standard_normal((5, 8)), rng.standard_normal((30, 8)), k1=6, k2=2, topk=4
    )
    assert values.dtype == np.float32 and indices.dtype == np.int64


def test_reranker_object_and_presets():
    rng = np.random.default_rng(10)
    xq, xg = rng.standard_normal((6, 8)), rng.standard_normal((90, 8))
    assert GNNReranker.veri776().k1 == 60 and GNNReranker.veri776().k2 == 10
    reranker = GNNReranker.market1501(lamb=0.0)
    np.testing.assert_array_equal(reranker(xq, xg), gnn_rerank(xq, xg, lamb=0.0))
    values, indices = reranker(xq, xg, topk=3)
    np.testing.assert_array_equal(indices, ranking(to_numpy(reranker(xq, xg)))[:, :3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_come_back_on_their_device():
    rng = np.random.default_rng(12)
    xq = torch.from_numpy(rng.standard_normal((8, 16))).float().cuda()
    xg = torch.from_numpy(rng.standard_normal((60, 16))).float().cuda()
    scores = gnn_rerank(xq, xg, k1=10, k2=4)
    assert scores.device == xq.device
    assert_same_ranking(scores, gnn_rerank_reference(xq, xg, k1=10, k2=4))
