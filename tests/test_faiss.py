"""The FAISS adapter on real FAISS indexes (faiss-cpu; the GPU part needs faiss-gpu)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from tests.compare import assert_same_topk, four_halves_vectors
from tests.compare import gaussian as gaussian_rows
from triton_rerank import gnn_rerank, reference
from triton_rerank.app.synthetic import clustered_vectors
from triton_rerank.evaluation.metrics import list_recall
from triton_rerank.integrations.faiss import (
    RerankedIndex,
    UnnormalisedVectorsWarning,
    database_vectors,
)
from triton_rerank.reference import gnn_rerank_reference

PARAMS = {"k1": 12, "k2": 4, "iterations": 2, "lamb": 0.3}

# sub-indexes (shards, quantizers) must outlive the index that uses them
_KEEP_ALIVE = []


def flat_ip(x):
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


def flat_l2(x):
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    return index


def id_map(x):
    index = faiss.IndexIDMap(faiss.IndexFlatIP(x.shape[1]))
    index.add_with_ids(x, 1000 + 7 * np.arange(x.shape[0])[::-1])
    return index


def shards(x):
    index = faiss.IndexShards(x.shape[1], False, True)  # successive ids
    parts = [faiss.IndexFlatIP(x.shape[1]) for _ in range(3)]
    for part, rows in zip(parts, np.array_split(x, 3), strict=True):
        part.add(rows)
        index.add_shard(part)
    _KEEP_ALIVE.extend(parts)
    return index


def hnsw(x):
    index = faiss.IndexHNSWFlat(x.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    index.add(x)
    return index


def ivf_with_direct_map(x):
    quantizer = faiss.IndexFlatIP(x.shape[1])
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], 8, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    index.make_direct_map()
    _KEEP_ALIVE.append(quantizer)
    return index


def expected_labels(index, positions):
    """Positions in the added order -> the ids the index returns."""
    if isinstance(index, faiss.IndexIDMap):
        return faiss.vector_to_array(index.id_map)[positions]
    return positions


def expected_distances(index, scores):
    return 2 - 2 * scores if index.metric_type == faiss.METRIC_L2 else scores


@pytest.fixture(scope="module")
def gaussian():
    return gaussian_rows(np.random.default_rng(7), 25, 400)


@pytest.fixture(scope="module")
def clustered():
    x, _ = clustered_vectors(3000, 32, 60, spread=1.0, seed=3)
    return x[:100], np.ascontiguousarray(x[100:])


# -- exact mode ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_index", [flat_ip, flat_l2, id_map, shards, hnsw, ivf_with_direct_map]
)
def test_exact_mode_equals_gnn_rerank(make_index, gaussian):
    xq, xb = gaussian
    index = make_index(xb)
    D, I = RerankedIndex(index, **PARAMS).search(xq, 10)
    want_d, want_i = gnn_rerank(xq, xb, topk=10, **PARAMS)
    np.testing.assert_array_equal(I, expected_labels(index, want_i))
    np.testing.assert_allclose(D, expected_distances(index, want_d), rtol=0, atol=1e-6)
    assert D.dtype == np.float32 and I.dtype == np.int64


def test_exact_mode_matches_the_reference(gaussian):
    xq, xb = gaussian
    D, I = RerankedIndex(flat_ip(xb), **PARAMS).search(xq, 15)
    assert_same_topk(D, I, gnn_rerank_reference(xq, xb, **PARAMS), 15)


def test_exact_mode_on_digits(digits):
    xq = digits.query_features.astype(np.float32)
    xb = digits.gallery_features.astype(np.float32)
    # k1=26 would put an fp32 near-tie at the k1-th place of some digits, where the
    # reference itself is sensitive to rounding; k1=30 is tie-free (as in test_rerank)
    kwargs = dict(k1=30, k2=5, lamb=0.1)
    D, I = RerankedIndex(flat_l2(xb), **kwargs).search(xq, 20)
    want_d, want_i = gnn_rerank(xq, xb, topk=20, **kwargs)
    np.testing.assert_array_equal(I, want_i)
    np.testing.assert_allclose(D, 2 - 2 * want_d, rtol=0, atol=1e-6)
    assert_same_topk(1 - D / 2, I, gnn_rerank_reference(xq, xb, **kwargs), 20)


@pytest.mark.parametrize("lamb", [0.0, 0.3])
def test_exact_mode_keeps_the_tie_rule(lamb):
    # exactly representable vectors with many equal similarities (and lamb=0 tie blocks)
    x = four_halves_vectors(np.random.default_rng(5), 300)
    xq, xb = x[:20], x[20:]
    D, I = RerankedIndex(flat_ip(xb), k1=10, k2=3, lamb=lamb).search(xq, 30)
    want_d, want_i = gnn_rerank(xq, xb, k1=10, k2=3, lamb=lamb, topk=30)
    np.testing.assert_array_equal(I, want_i)
    np.testing.assert_array_equal(D, want_d)


def test_exact_mode_on_a_lossy_index_uses_its_reconstructed_vectors(gaussian):
    xq, xb = gaussian
    index = faiss.IndexPQ(16, 4, 6, faiss.METRIC_INNER_PRODUCT)
    index.train(xb)
    index.add(xb)
    _, I = RerankedIndex(index, **PARAMS).search(xq, 10)
    _, want_i = gnn_rerank(xq, index.reconstruct_n(0, index.ntotal), topk=10, **PARAMS)
    np.testing.assert_array_equal(I, want_i)


def test_database_graph_is_cached_and_rebuilt_after_changes(gaussian):
    xq, xb = gaussian
    reranked = RerankedIndex(flat_ip(xb[:300]), **PARAMS)
    reranked.search(xq, 5)
    cached = reranked._database
    reranked.search(xq[:3], 5)
    assert reranked._database is cached
    reranked.add(xb[300:350])  # through the wrapper
    _, I = reranked.search(xq, 5)
    np.testing.assert_array_equal(I, gnn_rerank(xq, xb[:350], topk=5, **PARAMS)[1])
    reranked.index.add(xb[350:])  # behind its back: ntotal changed
    _, I = reranked.search(xq, 5)
    np.testing.assert_array_equal(I, gnn_rerank(xq, xb, topk=5, **PARAMS)[1])
    reranked.remove_ids(np.arange(100, dtype=np.int64))
    _, I = reranked.search(xq, 5)
    np.testing.assert_array_equal(I, gnn_rerank(xq, xb[100:], topk=5, **PARAMS)[1])
    reranked.reset()
    with pytest.raises(ValueError, match="index is empty"):
        reranked.search(xq, 5)


@pytest.mark.parametrize("mode", ["exact", "inductive"])
def test_torch_and_numpy_agree(mode, clustered):
    xq, xb = clustered
    reranked = RerankedIndex(flat_ip(xb), mode=mode, **PARAMS)
    D, I = reranked.search(xq, 10)
    Dt, It = reranked.search(torch.from_numpy(xq).double(), 10)
    assert isinstance(Dt, torch.Tensor) and Dt.dtype == torch.float32
    assert It.dtype == torch.int64
    np.testing.assert_array_equal(It.numpy(), I)
    np.testing.assert_allclose(Dt.numpy(), D, rtol=0, atol=1e-6)


def test_unnormalised_vectors_are_normalised(gaussian):
    xq, xb = gaussian
    scale = np.random.default_rng(2).uniform(0.5, 3, (xb.shape[0], 1)).astype(np.float32)
    _, I = RerankedIndex(flat_l2(xb * scale), **PARAMS).search(xq * 5, 10)
    np.testing.assert_array_equal(I, gnn_rerank(xq, xb, topk=10, **PARAMS)[1])


# -- inductive mode -----------------------------------------------------------------------


def test_inductive_mode_recalls_most_of_exact_mode(clustered):
    xq, xb = clustered
    index = flat_ip(xb)
    _, exact = RerankedIndex(index, **PARAMS).search(xq, 10)
    _, inductive = RerankedIndex(index, mode="inductive", **PARAMS).search(xq, 10)
    _, plain = index.search(xq, 10)
    # measured 0.93 here (plain search: 0.72); the floor leaves room for fp noise
    assert list_recall(inductive, exact) >= 0.85
    assert list_recall(inductive, exact) > list_recall(plain, exact) + 0.1


def test_inductive_mode_on_an_approximate_graph_and_l2_index(clustered):
    xq, xb = clustered
    index = flat_l2(xb)
    _, exact = RerankedIndex(index, **PARAMS).search(xq, 10)
    reranked = RerankedIndex(index, mode="inductive", shortlist=60, **PARAMS)
    reranked.build_graph(graph_index=hnsw(xb))
    D, inductive = reranked.search(xq, 10)
    assert list_recall(inductive, exact) >= 0.85
    assert np.all(np.diff(D, axis=1) >= 0)  # L2 convention: ascending distances


def test_inductive_results_do_not_depend_on_the_batch(clustered):
    xq, xb = clustered
    reranked = RerankedIndex(id_map(xb), mode="inductive", **PARAMS)
    D, I = reranked.search(xq, 10)
    for i in (0, 37, 99):
        d_one, i_one = reranked.search(xq[i : i + 1], 10)
        np.testing.assert_array_equal(i_one[0], I[i])
        np.testing.assert_array_equal(d_one[0], D[i])
    assert set(I.ravel()) <= set(faiss.vector_to_array(reranked.index.id_map))


def test_inductive_mode_pads_short_shortlists(clustered):
    xq, xb = clustered
    quantizer = faiss.IndexFlatL2(xb.shape[1])
    index = faiss.IndexIVFFlat(quantizer, xb.shape[1], 64)
    index.train(xb)
    index.add(xb)
    index.make_direct_map()
    index.nprobe = 1  # lists of ~45 vectors: fewer than 200
    D, I = RerankedIndex(index, mode="inductive", **PARAMS).search(xq, 200)
    short = I == -1
    assert short.any() and (~short).any()
    assert np.all(np.isposinf(D[short])) and np.all(np.isfinite(D[~short]))
    assert np.all(np.diff(short.astype(int), axis=1) >= 0)  # padding comes last


def test_shortlist_seeds_grow_the_shortlist_through_the_graph(clustered):
    xq, xb = clustered
    index = id_map(xb)
    reranked = RerankedIndex(index, mode="inductive", shortlist=150, shortlist_seeds=20, **PARAMS)
    D, I = reranked.search(xq, 10)
    # the same graph, re-ranking the grown shortlist of the index's own top 20
    graph = reranked._graph
    ids = faiss.vector_to_array(index.id_map)
    _, seed_ids = index.search(xq, 20)
    seeds = np.argsort(ids)[np.searchsorted(np.sort(ids), seed_ids)]
    unit = reranked._search.check_queries(xq)[0]  # the queries as the adapter reads them
    scores, positions = graph.rerank_grown(unit, seeds, 10, PARAMS["lamb"], 150)
    np.testing.assert_array_equal(I, ids[positions])
    np.testing.assert_array_equal(D, scores)
    # the default takes the whole shortlist from the search: other results, as good
    _, default = RerankedIndex(index, mode="inductive", shortlist=150, **PARAMS).search(xq, 10)
    _, exact = RerankedIndex(index, **PARAMS).search(xq, 10)
    assert not np.array_equal(I, default)
    assert list_recall(I, exact) >= 0.85 and list_recall(default, exact) >= 0.85
    with pytest.raises(ValueError, match="shortlist_seeds"):
        RerankedIndex(index, mode="inductive", shortlist_seeds=0)


def test_graph_save_and_load_round_trip(tmp_path, clustered):
    xq, xb = clustered
    index = id_map(xb)
    built = RerankedIndex(index, mode="inductive", **PARAMS)
    built.save_graph(tmp_path / "graph.npz")
    loaded = RerankedIndex(index, mode="inductive", **PARAMS)
    loaded.load_graph(tmp_path / "graph.npz")
    for a, b in zip(built.search(xq, 10), loaded.search(xq, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"built with \(k1, k2, iterations\) = \(12, 4, 2\)"):
        RerankedIndex(index, mode="inductive", k1=20).load_graph(tmp_path / "graph.npz")
    with pytest.raises(ValueError, match="another database"):
        RerankedIndex(flat_ip(xb[:500]), mode="inductive", **PARAMS).load_graph(
            tmp_path / "graph.npz"
        )
    (tmp_path / "bad.npz").write_bytes(b"not a graph")
    with pytest.raises(ValueError, match="not a triton-rerank graph file"):
        loaded.load_graph(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError):
        loaded.load_graph(tmp_path / "missing.npz")


def test_inductive_graph_over_unnormalised_vectors_warns(gaussian):
    xq, xb = gaussian
    with pytest.warns(UnnormalisedVectorsWarning, match="not unit-norm"):
        RerankedIndex(flat_l2(xb), mode="inductive", **PARAMS).search(xq, 5)


def test_inductive_mode_without_propagation(clustered):
    xq, xb = clustered
    _, exact = RerankedIndex(flat_ip(xb), k1=12, k2=1).search(xq, 10)
    _, inductive = RerankedIndex(flat_ip(xb), k1=12, k2=1, mode="inductive").search(xq, 10)
    assert list_recall(inductive, exact) >= 0.85


# -- errors -------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::triton_rerank.integrations.faiss.UnnormalisedVectorsWarning")
def test_bad_input_gives_clear_errors(gaussian):
    xq, xb = gaussian
    reranked = RerankedIndex(flat_ip(xb))
    cases = [
        (
            lambda: reranked.search(xq[:, :8], 5),
            ValueError,
            "dimension 8 but the index has dimension 16",
        ),
        (
            lambda: reranked.search(xq, 401),
            ValueError,
            "k=401 is larger than 400 .the index holds 400 vectors",
        ),
        (lambda: reranked.search(xq, 0), ValueError, "k must be >= 1"),
        (lambda: reranked.search(xq, 2.5), TypeError, "k must be an integer"),
        (lambda: reranked.search(xq[0], 5), ValueError, "must be 2-D"),
        (lambda: reranked.search(xq[:0], 5), ValueError, "queries is empty"),
        (lambda: reranked.search(np.full_like(xq, np.nan), 5), ValueError, "NaN or inf"),
        (lambda: reranked.search(np.zeros_like(xq), 5), ValueError, "zero-norm"),
        (lambda: reranked.search(xq.astype(np.int32), 5), TypeError, "floating-point"),
        (lambda: reranked.search(xq.tolist(), 5), TypeError, "numpy.ndarray or a torch"),
        (lambda: RerankedIndex(faiss.IndexFlatIP(16)).search(xq, 5), ValueError, "index is empty"),
        (lambda: RerankedIndex(xb), TypeError, "must be a FAISS index"),
        (
            lambda: RerankedIndex(faiss.IndexFlat(16, faiss.METRIC_L1)),
            ValueError,
            "inner-product or L2 index",
        ),
        (lambda: RerankedIndex(flat_ip(xb), mode="fast"), ValueError, "mode must be one of"),
        (lambda: RerankedIndex(flat_ip(xb), backend="triton"), ValueError, "CPU path"),
        (lambda: RerankedIndex(flat_ip(xb), k1=5, k2=6), ValueError, "k2 must not exceed k1"),
        (lambda: RerankedIndex(flat_ip(xb), lamb=2), ValueError, "lamb must be in"),
        (
            lambda: RerankedIndex(flat_ip(xb), mode="inductive", shortlist=5).search(xq, 10),
            ValueError,
            "shortlist=5 is smaller than k=10",
        ),
        (
            lambda: RerankedIndex(flat_ip(xb[:8]), mode="inductive", k1=10).search(xq, 5),
            ValueError,
            "k1=10 is larger than 8",
        ),
        (
            lambda: RerankedIndex(flat_ip(xb), mode="inductive").build_graph(flat_ip(xb[:9])),
            ValueError,
            "graph_index holds 9 vectors",
        ),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


def ivf_with_own_ids(x, direct_map: bool):
    quantizer = faiss.IndexFlatIP(x.shape[1])
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], 8, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    if direct_map:
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
    index.add_with_ids(x, 5 + 10 * np.arange(x.shape[0]))
    _KEEP_ALIVE.append(quantizer)
    return index


def test_ivf_index_holding_its_own_ids(gaussian):
    xq, xb = gaussian
    D, I = RerankedIndex(ivf_with_own_ids(xb, direct_map=True), **PARAMS).search(xq, 10)
    want_d, want_i = gnn_rerank(xq, xb, topk=10, **PARAMS)
    np.testing.assert_array_equal(I, 5 + 10 * want_i)
    np.testing.assert_allclose(D, want_d, rtol=0, atol=1e-6)


def test_an_index_that_cannot_return_vectors_is_named(gaussian):
    xq, xb = gaussian
    index = ivf_with_own_ids(xb, direct_map=False)
    with pytest.raises(
        ValueError, match="IndexIVFFlat cannot return its stored vectors.*set_direct_map_type"
    ):
        RerankedIndex(index).search(xq, 5)
    with pytest.raises(ValueError, match="cannot return its stored vectors"):
        database_vectors(index)


# -- GPU indexes --------------------------------------------------------------------------

HAS_FAISS_GPU = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@pytest.mark.skipif(
    not HAS_FAISS_GPU, reason="needs faiss-gpu and a CUDA device (faiss-cpu is installed here)"
)
def test_gpu_index_exact_mode_equals_gnn_rerank(gaussian):
    xq, xb = gaussian
    resources = faiss.StandardGpuResources()
    index = faiss.index_cpu_to_gpu(resources, 0, flat_ip(xb))
    D, I = RerankedIndex(index, **PARAMS).search(torch.from_numpy(xq).cuda(), 10)
    want_d, want_i = gnn_rerank(xq, xb, topk=10, **PARAMS)
    assert I.is_cuda
    np.testing.assert_array_equal(I.cpu().numpy(), want_i)
    np.testing.assert_allclose(D.cpu().numpy(), want_d, rtol=0, atol=1e-5)


# -- canonical kNN lists ------------------------------------------------------------------


def gaussian_with_copies(seed: int, n: int = 310, d: int = 16):
    """Gaussian vectors, a third of them exact copies of others (scattered)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[rng.integers(0, n, n // 3)] = x[rng.integers(0, n, n // 3)]
    return x[:30], np.ascontiguousarray(x[30:])


@pytest.mark.parametrize("seed", range(4))
def test_exact_mode_equals_gnn_rerank_on_duplicate_vectors(seed):
    xq, xb = gaussian_with_copies(seed)
    reranked = RerankedIndex(flat_ip(xb), **PARAMS)
    D, I = reranked.search(xq, 20)
    want_d, want_i = gnn_rerank(xq, xb, topk=20, **PARAMS)
    np.testing.assert_array_equal(I, want_i)
    np.testing.assert_array_equal(D, want_d)
    # the cached database lists are the canonical kNN of the database alone
    _, _, db_values, db_indices = reranked._exact_database()
    ref_values, ref_indices = reference.knn(
        torch.from_numpy(xb / np.linalg.norm(xb, axis=1, keepdims=True)).float(), PARAMS["k1"]
    )
    np.testing.assert_array_equal(db_indices, ref_indices.numpy())


def test_inductive_graph_of_an_exact_index_has_the_canonical_lists():
    _, xb = gaussian_with_copies(7)
    xb = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    for index in (flat_ip(xb), id_map(xb), shards(xb)):
        graph = RerankedIndex(index, mode="inductive", **PARAMS).build_graph()
        # back to the caller's positions: internal node p is position caller_position[p]
        lists = graph.caller_position[graph.knn_indices][np.argsort(graph.caller_position)]
        want = reference.knn(torch.from_numpy(xb.astype(np.float32)), PARAMS["k1"])[1]
        np.testing.assert_array_equal(lists, want.numpy())


def test_negative_ids_are_refused_by_both_modes(gaussian):
    xq, xb = gaussian
    index = faiss.IndexIDMap(faiss.IndexFlatIP(xb.shape[1]))
    index.add_with_ids(xb, np.arange(xb.shape[0]) - 5)
    for mode in MODES_UNDER_TEST:
        with pytest.raises(ValueError, match=r"negative ids \(e.g. -5\).* ids >= 0"):
            RerankedIndex(index, mode=mode, **PARAMS).search(xq, 5)


MODES_UNDER_TEST = ("exact", "inductive")
