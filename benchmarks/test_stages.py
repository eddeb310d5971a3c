"""pytest-benchmark suites, grouped by stage: knn, propagate, scoring, end-to-end, torchreid,
faiss.

Each benchmark also asserts something about its result, so a disabled (single) run
in CI still checks it.
"""

from __future__ import annotations

import numpy as np
import pytest

from triton_rerank import gnn_rerank
from triton_rerank.cpu.knn import knn_graph
from triton_rerank.cpu.propagation import propagate
from triton_rerank.cpu.scoring import rerank_scores

K1, K2 = 26, 7


@pytest.fixture(scope="module")
def knn(features, nodes):
    values, indices, base = knn_graph(
        nodes, K1, n_query=len(features.query_features), keep_query_gallery=True
    )
    return values, indices, base


@pytest.mark.benchmark(group="knn")
def test_knn(benchmark, features, nodes):
    values, indices, _ = benchmark(
        knn_graph, nodes, K1, n_query=len(features.query_features), keep_query_gallery=True
    )
    assert np.all(indices[:, 0] == np.arange(len(nodes)))  # self first (distinct rows)


@pytest.mark.benchmark(group="propagate")
def test_propagate(benchmark, features, knn):
    values, indices, _ = knn
    graph = benchmark(
        propagate, values, indices, n_query=len(features.query_features), k2=K2, iterations=2
    )
    assert graph.query_rows.n_rows == len(features.query_features)


@pytest.mark.benchmark(group="scoring")
def test_scoring_topk(benchmark, features, nodes, knn):
    values, indices, _ = knn
    n_query = len(features.query_features)
    graph = propagate(values, indices, n_query=n_query, k2=K2, iterations=2)
    top_values, top_indices = benchmark(
        rerank_scores, graph, nodes[:n_query], nodes[n_query:], lamb=0.3, topk=100
    )
    assert np.all(np.diff(top_values.numpy(), axis=1) <= 0)


@pytest.mark.benchmark(group="end-to-end")
def test_end_to_end(benchmark, features):
    scores = benchmark(gnn_rerank, features.query_features, features.gallery_features, k1=K1, k2=K2)
    assert scores.shape == (len(features.query_features), len(features.gallery_features))


@pytest.mark.benchmark(group="torchreid")
def test_torchreid_drop_in(benchmark, features):
    torch = pytest.importorskip("torch")
    from triton_rerank.integrations.torchreid import re_ranking, torchreid_module

    distance = torchreid_module("metrics").compute_distance_matrix
    qf, gf = torch.from_numpy(features.query_features), torch.from_numpy(features.gallery_features)
    matrices = (distance(qf, gf).numpy(), distance(qf, qf), distance(gf, gf))
    dist = benchmark(re_ranking, *matrices, k1=K1, k2=K2)
    assert dist.shape == matrices[0].shape and dist.dtype == np.float32


@pytest.fixture(scope="module")
def flat_index(features):
    faiss = pytest.importorskip("faiss")
    index = faiss.IndexFlatIP(features.gallery_features.shape[1])
    index.add(features.gallery_features)
    return index


@pytest.mark.benchmark(group="faiss")
def test_faiss_exact_search(benchmark, features, flat_index):
    """One query batch against a database whose kNN graph is cached."""
    from triton_rerank.integrations.faiss import RerankedIndex

    reranked = RerankedIndex(flat_index, k1=K1, k2=K2)
    reranked.search(features.query_features[:2], 10)  # builds the cache
    distances, labels = benchmark(reranked.search, features.query_features, 100)
    expected = gnn_rerank(
        features.query_features, features.gallery_features, k1=K1, k2=K2, topk=100
    )[1]
    assert (labels == expected).mean() > 0.99


@pytest.mark.benchmark(group="faiss")
def test_faiss_inductive_build(benchmark, flat_index):
    from triton_rerank.integrations.faiss import RerankedIndex

    graph = benchmark(RerankedIndex(flat_index, k1=K1, k2=K2, mode="inductive").build_graph)
    assert graph.size == flat_index.ntotal


@pytest.mark.benchmark(group="faiss")
def test_faiss_inductive_search(benchmark, features, flat_index):
    from triton_rerank.integrations.faiss import RerankedIndex

    reranked = RerankedIndex(flat_index, k1=K1, k2=K2, mode="inductive")
    reranked.build_graph()
    distances, labels = benchmark(reranked.search, features.query_features, 100)
    assert np.all(labels >= 0) and np.all(np.diff(distances, axis=1) <= 0)
