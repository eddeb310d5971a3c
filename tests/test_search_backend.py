"""The search-backend protocol and the re-ranking that runs on it
(``triton_rerank.database.search_backend``, ``triton_rerank.database.reranked_search``).

``ArrayBackend`` below is a complete implementation of the protocol over numpy arrays
(brute-force search, a version counter): it pins down what the shared code path asks of
a backend, independently of FAISS, Milvus and LanceDB (whose adapters have their own
tests against the real stores).
"""

from __future__ import annotations

import warnings

import faiss
import numpy as np
import pytest

from tests.compare import four_halves_vectors
from triton_rerank import gnn_rerank
from triton_rerank.app.synthetic import clustered_vectors
from triton_rerank.checks import check_unit_rows
from triton_rerank.database.reranked_search import (
    DatabaseChangedError,
    IdPositions,
    RerankedSearch,
    UnnormalisedVectorsWarning,
    id_codes,
    padded_hits,
)
from triton_rerank.database.search_backend import SearchBackend, SearchHits
from triton_rerank.integrations.faiss import FaissBackend, RerankedIndex

PARAMS = {"k1": 12, "k2": 4, "iterations": 2, "lamb": 0.3}


class ArrayBackend:
    """The protocol over in-memory arrays; ``filter`` is a set of allowed ids."""

    description = "the array store"

    def __init__(self, vectors, ids, *, metric="ip", exact=True):
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.stored_ids = np.asarray(ids)
        self.metric, self.exact = metric, exact
        self.dimension = self.vectors.shape[1]
        self.generation = 0
        self.searches = 0

    def replace(self, vectors, ids):
        self.vectors, self.stored_ids = np.asarray(vectors, np.float32), np.asarray(ids)
        self.generation += 1

    def count(self):
        return self.vectors.shape[0]

    def version(self):
        return self.generation

    def ids(self, filter=None):
        keep = self._keep(filter)
        return np.sort(self.stored_ids[keep])

    def fetch(self, ids):
        positions, unknown = IdPositions(self.stored_ids)(np.asarray(ids))
        assert not unknown.any()
        return self.vectors[positions]

    def _keep(self, filter):
        if filter is None:
            return np.ones(self.count(), dtype=bool)
        return np.isin(self.stored_ids, list(filter))

    def search(self, queries, k, *, filter=None):
        self.searches += 1
        keep = np.flatnonzero(self._keep(filter))
        similarity = queries @ self.vectors[keep].T
        order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        lengths = [order.shape[1]] * queries.shape[0]
        return padded_hits(
            np.take_along_axis(similarity, order, 1).tolist(),
            self.stored_ids[keep][order].tolist(),
            lengths,
            k,
            fill_distance=-np.inf,
        )


@pytest.fixture(scope="module")
def data():
    """``(queries as canonical unit rows, database, database labels)``: the re-ranking
    takes queries checked by ``RerankedSearch.check_queries``."""
    x, labels = clustered_vectors(380, 16, 10, spread=1.0, seed=5)
    return check_unit_rows(x[:30], "queries", 16)[0], np.ascontiguousarray(x[30:]), labels[30:]


def sorted_store(xb, ids):
    """The database in the backends' canonical order (sorted ids) and the sort."""
    order = np.argsort(ids, kind="stable")
    return xb[order], np.asarray(ids)[order]


def test_every_adapter_backend_implements_the_protocol(data):
    _, xb, _ = data
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    assert isinstance(FaissBackend(index), SearchBackend)
    assert isinstance(ArrayBackend(xb, np.arange(len(xb))), SearchBackend)
    assert not isinstance(index, SearchBackend)


@pytest.mark.parametrize("ids", ["integers", "strings"])
def test_exact_mode_on_any_backend_equals_gnn_rerank(data, ids):
    xq, xb, _ = data
    keys = 7 * np.arange(len(xb))[::-1] - 50
    if ids == "strings":
        keys = np.array([f"row-{k}" for k in keys])
    hits = RerankedSearch(ArrayBackend(xb, keys), **PARAMS).search(xq, 10)
    stored, stored_ids = sorted_store(xb, keys)
    want_d, want_i = gnn_rerank(xq, stored, topk=10, **PARAMS)
    np.testing.assert_array_equal(hits.ids, stored_ids[want_i])
    # (the lamb term's cosine is computed in another order: as test_faiss, to 1e-6)
    np.testing.assert_allclose(hits.scores, want_d, rtol=0, atol=1e-6)
    assert hits.found.all() and hits.ids.dtype.kind == ("U" if ids == "strings" else "i")


def test_exact_mode_with_duplicates_keeps_the_tie_rule():
    x = four_halves_vectors(np.random.default_rng(3), 330)
    x[90:150] = x[30:90]  # a third of the database rows twice
    xq, xb = x[:30], np.ascontiguousarray(x[30:])
    keys = np.arange(len(xb)) * 3
    hits = RerankedSearch(ArrayBackend(xb, keys), k1=10, k2=3, lamb=0.0).search(xq, 25)
    want_d, want_i = gnn_rerank(xq, xb, k1=10, k2=3, lamb=0.0, topk=25)
    np.testing.assert_array_equal(hits.ids, keys[want_i])
    np.testing.assert_array_equal(hits.scores, want_d)


def test_inductive_mode_on_any_backend_equals_the_faiss_adapter(data):
    xq, xb, _ = data
    keys = np.arange(len(xb))[::-1] * 2
    stored, stored_ids = sorted_store(xb, keys)
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(stored)
    want_d, want_i = RerankedIndex(index, mode="inductive", **PARAMS).search(xq, 10)
    for exact in (True, False):  # canonical lists, or lists from the (exact) search
        backend = ArrayBackend(xb, keys, exact=exact)
        hits = RerankedSearch(backend, mode="inductive", **PARAMS).search(xq, 10)
        np.testing.assert_array_equal(hits.ids, stored_ids[want_i])
        np.testing.assert_array_equal(hits.scores, want_d)
        assert backend.searches == (1 if exact else 2)


def test_filters_restrict_the_candidates_not_the_graph(data):
    xq, xb, labels = data
    keys = np.arange(len(xb))
    allowed = set(keys[labels % 3 == 0].tolist())
    exact = RerankedSearch(ArrayBackend(xb, keys), **PARAMS)
    hits = exact.search(xq, 8, filter=allowed)
    every = gnn_rerank(xq, xb, topk=None, **PARAMS)
    every[:, labels % 3 != 0] = -np.inf
    want = np.argsort(-every, axis=1, kind="stable")[:, :8]
    np.testing.assert_array_equal(hits.ids, want)
    np.testing.assert_allclose(hits.scores, np.take_along_axis(every, want, 1), rtol=0, atol=1e-6)

    backend = ArrayBackend(xb, keys)
    inductive = RerankedSearch(backend, mode="inductive", shortlist=40, **PARAMS)
    hits = inductive.search(xq, 8, filter=allowed)
    shortlist = backend.search(xq, 40, filter=allowed).ids
    assert set(hits.ids.ravel()) <= allowed
    for row, found in zip(hits.ids, shortlist, strict=True):
        assert set(row) <= set(found)
    assert (np.diff(hits.scores, axis=1) <= 0).all()
    # the filtered shortlist's best 8 under the graph, which reaches beyond it
    reach = inductive.graph.rerank(xq, shortlist, 40 + 11 * 12, PARAMS["lamb"])
    for q in range(len(xq)):
        kept = [p for p in reach[1][q] if p in set(shortlist[q])][:8]
        np.testing.assert_array_equal(hits.ids[q], kept)


def test_a_filter_keeping_fewer_rows_than_k_pads(data):
    xq, xb, _ = data
    for mode in ("exact", "inductive"):
        reranking = RerankedSearch(ArrayBackend(xb, np.arange(len(xb))), mode=mode, **PARAMS)
        hits = reranking.search(xq, 6, filter={3, 5, 8})
        assert (hits.found.sum(axis=1) == 3).all()
        assert np.isneginf(hits.scores[:, 3:]).all() and (hits.ids[:, 3:] == -1).all()
        assert set(hits.ids[:, :3].ravel()) == {3, 5, 8}


def test_changes_are_detected_never_served_stale(data, tmp_path):
    xq, xb, _ = data
    backend = ArrayBackend(xb[:300], np.arange(300))
    strict = RerankedSearch(backend, mode="inductive", on_change="error", **PARAMS)
    strict.search(xq, 5)
    strict.save_graph(tmp_path / "graph.npz")
    backend.replace(xb, np.arange(len(xb)))  # rows inserted
    with pytest.raises(DatabaseChangedError, match="changed since the inductive graph"):
        strict.search(xq, 5)
    with pytest.raises(ValueError, match="another database"):
        strict.load_graph(tmp_path / "graph.npz")
    strict.build_graph()
    fresh = RerankedSearch(ArrayBackend(xb, np.arange(len(xb))), mode="inductive", **PARAMS)
    np.testing.assert_array_equal(strict.search(xq, 5).ids, fresh.search(xq, 5).ids)

    lenient = RerankedSearch(backend, mode="inductive", on_change="rebuild", **PARAMS)
    lenient.search(xq, 5)
    backend.replace(xb[:250], np.arange(250))  # rows deleted
    np.testing.assert_array_equal(
        lenient.search(xq, 5).ids,
        RerankedSearch(ArrayBackend(xb[:250], np.arange(250)), mode="inductive", **PARAMS)
        .search(xq, 5)
        .ids,
    )
    exact = RerankedSearch(backend, **PARAMS)
    exact.search(xq, 5)
    backend.replace(xb, np.arange(len(xb)))
    np.testing.assert_array_equal(exact.search(xq, 5).ids, gnn_rerank(xq, xb, topk=5, **PARAMS)[1])


def test_a_new_version_of_the_same_data_keeps_the_graph(data):
    xq, xb, _ = data
    backend = ArrayBackend(xb, np.arange(len(xb)))
    reranking = RerankedSearch(backend, mode="inductive", on_change="error", **PARAMS)
    reranking.search(xq, 5)
    graph = reranking.graph
    backend.generation += 1  # e.g. a compaction: new version, same rows
    reranking.search(xq, 5)
    assert reranking.graph is graph
    vectors = backend.vectors.copy()
    vectors[7] = vectors[8]  # same count and ids, another vector
    backend.replace(vectors, backend.stored_ids)
    with pytest.raises(DatabaseChangedError):
        reranking.search(xq, 5)


def test_search_results_naming_unknown_ids_count_as_a_change(data):
    xq, xb, _ = data
    backend = ArrayBackend(xb, np.arange(len(xb)))
    reranking = RerankedSearch(backend, mode="inductive", on_change="error", **PARAMS)
    reranking.search(xq, 5)
    backend.stored_ids = backend.stored_ids + 1000  # same count and version: unnoticed
    with pytest.raises(DatabaseChangedError, match="ids that the graph does not hold"):
        reranking.search(xq, 5)


def test_verify_graph_catches_replaced_vectors(data):
    xq, xb, _ = data
    backend = ArrayBackend(xb, np.arange(len(xb)))
    reranking = RerankedSearch(backend, mode="inductive", **PARAMS)
    reranking.build_graph()
    reranking.verify_graph()
    backend.vectors = backend.vectors[::-1].copy()  # behind the version's back
    with pytest.raises(DatabaseChangedError, match="differ from those the graph was built"):
        reranking.verify_graph()
    assert reranking.graph is None


def test_rerank_candidates_keeps_the_best_of_them(data):
    xq, xb, _ = data
    keys = np.arange(len(xb))
    candidates = np.stack([np.random.default_rng(q).permutation(len(xb))[:30] for q in range(30)])
    found = np.ones(candidates.shape, dtype=bool)
    found[:, 25:] = False
    exact = RerankedSearch(ArrayBackend(xb, keys), **PARAMS)
    hits = exact.rerank_candidates(xq, candidates, found, 10)
    every = gnn_rerank(xq, xb, topk=None, **PARAMS)
    for q in range(len(xq)):
        allowed = candidates[q, :25]
        want = allowed[np.argsort(-every[q, allowed], kind="stable")][:10]
        np.testing.assert_array_equal(hits.ids[q], want)


def test_unnormalised_inner_product_stores_warn_cosine_ones_do_not(data):
    _, xb, _ = data
    scaled = xb * np.linspace(0.5, 2, len(xb), dtype=np.float32)[:, None]
    with pytest.warns(UnnormalisedVectorsWarning, match="not unit-norm.*inner product"):
        RerankedSearch(ArrayBackend(scaled, np.arange(len(xb))), mode="inductive").build_graph()
    cosine = ArrayBackend(scaled, np.arange(len(xb)), metric="cosine")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnnormalisedVectorsWarning)
        RerankedSearch(cosine, mode="inductive").build_graph()


def test_errors_name_the_store(data):
    xq, xb, _ = data
    zero = xb.copy()
    zero[[4, 9]] = 0
    cases = [
        (lambda: RerankedSearch(ArrayBackend(xb, np.arange(len(xb))), mode="fast"), "mode must"),
        (
            lambda: RerankedSearch(ArrayBackend(xb, np.arange(len(xb))), on_change="ignore"),
            "on_change must",
        ),
        (
            lambda: RerankedSearch(ArrayBackend(xb, np.arange(len(xb)), metric="hamming")),
            "reports metric 'hamming'",
        ),
        (
            lambda: RerankedSearch(ArrayBackend(xb, np.arange(len(xb)))).check_queries(xq[:, :8]),
            "queries has dimension 8 but the array store has dimension 16",
        ),
        (
            lambda: RerankedSearch(ArrayBackend(xb, np.arange(len(xb)))).search(xq, 351),
            r"k=351 is larger than 350 \(the array store holds 350 vectors\)",
        ),
        (
            lambda: RerankedSearch(ArrayBackend(xb[:0], np.arange(0))).search(xq, 1),
            "the array store is empty",
        ),
        (
            lambda: RerankedSearch(ArrayBackend(zero, np.arange(len(xb)) + 10)).search(xq, 3),
            r"holds 2 all-zero vector\(s\) \(ids \[14, 19\]",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_id_codes_and_positions():
    np.testing.assert_array_equal(id_codes(np.array([5, -3])), [5, -3])
    text = id_codes(np.array(["a", "b", "a"]))
    assert text.dtype == np.int64 and text[0] == text[2] != text[1]
    with pytest.raises(ValueError, match="integers or strings"):
        id_codes(np.array([1.5]))
    positions, unknown = IdPositions(np.array(["x", "z", "y"]))(
        np.array([["y", "w"], ["x", ""]]), np.array([[True, True], [True, False]])
    )
    np.testing.assert_array_equal(positions, [[2, -1], [0, -1]])
    np.testing.assert_array_equal(unknown, [[False, True], [False, False]])


def test_padded_hits():
    hits = padded_hits([[0.5, 0.25], [0.75]], [["a", "b"], ["c"]], [2, 1], 3, fill_distance=9)
    assert isinstance(hits, SearchHits)
    np.testing.assert_array_equal(hits.ids, [["a", "b", ""], ["c", "", ""]])
    np.testing.assert_array_equal(hits.distances, [[0.5, 0.25, 9], [0.75, 9, 9]])
    np.testing.assert_array_equal(hits.found, [[True, True, False], [True, False, False]])
