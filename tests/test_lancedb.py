# ruff: noqa: E741  (FAISS's own names for search results: D, I)
"""The LanceDB adapter against real embedded LanceDB tables (in ``tmp_path``).

Every re-ranked result is compared with a reference: exact mode with
``gnn_rerank(queries, stored vectors, topk=k)`` (ids mapped), inductive mode with the
FAISS adapter's inductive mode on the same vectors.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

lancedb = pytest.importorskip("lancedb")
pa = pytest.importorskip("pyarrow")

import faiss  # noqa: E402
from lancedb.index import IvfFlat  # noqa: E402

from tests.compare import four_halves_vectors  # noqa: E402
from triton_rerank import gnn_rerank  # noqa: E402
from triton_rerank.app.synthetic import clustered_vectors  # noqa: E402
from triton_rerank.evaluation.metrics import list_recall  # noqa: E402
from triton_rerank.integrations.faiss import RerankedIndex  # noqa: E402
from triton_rerank.integrations.lancedb import (  # noqa: E402
    DatabaseChangedError,
    RerankedTable,
    ShortlistReranker,
)

PARAMS = {"k1": 12, "k2": 4, "iterations": 2, "lamb": 0.3}
DIM = 16
_names = (f"t{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return lancedb.connect(str(tmp_path_factory.mktemp("lancedb")))


@pytest.fixture(scope="module")
def data():
    """``(queries [20, 16], database [400, 16], ids [400])``: clustered unit rows, ids
    neither sorted nor positive."""
    x, _ = clustered_vectors(420, DIM, 12, spread=1.0, seed=3)
    return x[:20], np.ascontiguousarray(x[20:]), 1000 - 3 * np.arange(400)


def rows(vectors, ids, start=0):
    """Table rows: ``id``, ``vector``, ``cat`` (row number % 3), ``path``."""
    n = len(ids)
    vector = (
        pa.array(list(vectors), type=pa.list_(pa.float32(), DIM))
        if any(v is None for v in vectors)
        else pa.FixedSizeListArray.from_arrays(pa.array(np.ravel(vectors)), DIM)
    )
    return pa.table(
        {
            "id": pa.array(np.asarray(ids).tolist()),
            "vector": vector,
            "cat": pa.array((start + np.arange(n)) % 3),
            "path": pa.array([f"img/{key}.jpg" for key in np.asarray(ids).tolist()]),
        }
    )


def make_table(db, vectors, ids, **options):
    return db.create_table(next(_names), rows(vectors, ids), **options)


def by_id(vectors, ids):
    """The database in the adapter's order (sorted ids): ``(vectors, ids)``."""
    order = np.argsort(ids, kind="stable")
    return np.ascontiguousarray(vectors[order]), np.asarray(ids)[order]


def faiss_inductive(xq, xb, k, **kwargs):
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    return RerankedIndex(index, mode="inductive", **PARAMS, **kwargs).search(xq, k)


def lance_distance(scores, metric):
    return 2 - 2 * scores if metric == "l2" else 1 - scores


# -- exact mode ---------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_exact_mode_equals_gnn_rerank(db, data, metric):
    xq, xb, ids = data
    table = make_table(db, xb, ids)
    D, I = RerankedTable(table, metric=metric, **PARAMS).search_arrays(xq, 10)
    stored, stored_ids = by_id(xb, ids)
    want_d, want_i = gnn_rerank(xq, stored, topk=10, **PARAMS)
    np.testing.assert_array_equal(I, stored_ids[want_i])
    np.testing.assert_allclose(D, lance_distance(want_d, metric), rtol=0, atol=1e-6)


def test_exact_mode_on_a_duplicate_heavy_table(db):
    x = four_halves_vectors(np.random.default_rng(11), 330)
    x[90:190] = x[30:130]  # most database rows twice, and a few three times
    x[300:330] = x[30:60]
    xq, xb = x[:30], np.ascontiguousarray(x[30:])
    ids = np.random.default_rng(2).permutation(10_000)[: len(xb)]
    table = make_table(db, xb, ids)
    D, I = RerankedTable(table, metric="dot", k1=10, k2=3, lamb=0.0).search_arrays(xq, 25)
    stored, stored_ids = by_id(xb, ids)
    want_d, want_i = gnn_rerank(xq, stored, k1=10, k2=3, lamb=0.0, topk=25)
    np.testing.assert_array_equal(I, stored_ids[want_i])
    np.testing.assert_array_equal(D, 1 - want_d)


# -- inductive mode -----------------------------------------------------------------------


@pytest.mark.parametrize("shortlist", [None, 400])
def test_inductive_mode_equals_the_faiss_inductive_mode(db, data, shortlist):
    xq, xb, ids = data
    table = make_table(db, xb, ids)
    reranked = RerankedTable(table, mode="inductive", shortlist=shortlist, **PARAMS)
    D, I = reranked.search_arrays(xq, 10)
    stored, stored_ids = by_id(xb, ids)
    want_d, want_i = faiss_inductive(xq, stored, 10, shortlist=shortlist)
    np.testing.assert_array_equal(I, stored_ids[want_i])
    np.testing.assert_array_equal(D, 1 - want_d)


def test_shortlist_seeds_equal_the_faiss_inductive_mode(db, data):
    xq, xb, ids = data
    table = make_table(db, xb, ids)
    reranked = RerankedTable(table, mode="inductive", shortlist=300, shortlist_seeds=10, **PARAMS)
    D, I = reranked.search_arrays(xq, 10)
    stored, stored_ids = by_id(xb, ids)
    want_d, want_i = faiss_inductive(xq, stored, 10, shortlist=300, shortlist_seeds=10)
    np.testing.assert_array_equal(I, stored_ids[want_i])
    np.testing.assert_array_equal(D, 1 - want_d)
    # filtered searches take their shortlist from the search (the graph cannot filter)
    default = RerankedTable(table, mode="inductive", shortlist=60, **PARAMS)
    reranked = RerankedTable(table, mode="inductive", shortlist=60, shortlist_seeds=10, **PARAMS)
    want = default.search_arrays(xq, 8, where="cat = 1")
    got = reranked.search_arrays(xq, 8, where="cat = 1")
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def test_inductive_mode_over_a_vector_index_searches_the_neighbour_lists(db, data):
    xq, xb, ids = data
    table = make_table(db, xb, ids)
    table.create_index("vector", config=IvfFlat(distance_type="cosine", num_partitions=4))
    reranked = RerankedTable(table, mode="inductive", nprobes=4, **PARAMS)
    assert not reranked.backend.exact and reranked.backend.metric == "cosine"
    _, I = reranked.search_arrays(xq, 10)
    stored, stored_ids = by_id(xb, ids)
    assert list_recall(I, stored_ids[faiss_inductive(xq, stored, 10)[1]]) >= 0.95
    with pytest.raises(ValueError, match="indexed for 'cosine' distances.*cannot use 'l2'"):
        RerankedTable(table, metric="l2")


def test_string_ids(db, data):
    xq, xb, ids = data
    text_ids = np.array([f"img-{i:05d}" for i in ids])
    table = make_table(db, xb, text_ids)
    stored, stored_ids = by_id(xb, text_ids)
    _, I = RerankedTable(table, **PARAMS).search_arrays(xq, 10)
    np.testing.assert_array_equal(I, stored_ids[gnn_rerank(xq, stored, topk=10, **PARAMS)[1]])
    _, I = RerankedTable(table, mode="inductive", **PARAMS).search_arrays(xq, 10)
    np.testing.assert_array_equal(I, stored_ids[faiss_inductive(xq, stored, 10)[1]])


# -- LanceDB's shape, filters, the re-ranker hook -----------------------------------------


def test_results_have_lancedb_shape(db, data):
    xq, xb, ids = data
    table = make_table(db, xb, ids)
    reranked = RerankedTable(table, mode="inductive", **PARAMS)
    D, I = reranked.search_arrays(xq[:4], 6)
    batch = reranked.search(xq[:4], 6, select=["id", "path"])
    assert batch.column_names == ["query_index", "id", "path", "_distance", "_relevance_score"]
    np.testing.assert_array_equal(batch["query_index"].to_numpy(), np.repeat(np.arange(4), 6))
    np.testing.assert_array_equal(batch["id"].to_numpy(), I.ravel())
    np.testing.assert_allclose(batch["_distance"].to_numpy(), D.ravel(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(batch["_relevance_score"].to_numpy(), 1 - D.ravel(), atol=1e-6)
    assert batch["path"].to_pylist() == [f"img/{key}.jpg" for key in I.ravel()]
    one = reranked.search(xq[0], 3)
    assert one.column_names == ["id", "vector", "cat", "path", "_distance", "_relevance_score"]
    np.testing.assert_array_equal(one["id"].to_numpy(), I[0, :3])


@pytest.mark.parametrize("mode", ["exact", "inductive"])
def test_where_is_passed_through(db, data, mode):
    xq, xb, ids = data
    table = make_table(db, xb, ids)
    reranked = RerankedTable(table, mode=mode, shortlist=60, **PARAMS)
    D, I = reranked.search_arrays(xq, 8, where="cat = 1")
    kept_ids = ids[np.arange(len(ids)) % 3 == 1]
    assert np.isin(I, kept_ids).all()
    stored, stored_ids = by_id(xb, ids)
    if mode == "exact":  # gnn_rerank over the whole table, best of the kept rows
        every = gnn_rerank(xq, stored, topk=None, **PARAMS)
        every[:, ~np.isin(stored_ids, kept_ids)] = -np.inf
        want = np.argsort(-every, axis=1, kind="stable")[:, :8]
        np.testing.assert_array_equal(I, stored_ids[want])
        np.testing.assert_allclose(D, 1 - np.take_along_axis(every, want, 1), atol=1e-6)
    else:  # candidates from the filtered shortlist only
        shortlist = table.search(xq).distance_type("cosine").where("cat = 1").limit(60)
        found = shortlist.select(["id"]).to_arrow()
        for q, row in enumerate(I):
            candidates = found["id"].to_numpy()[found["query_index"].to_numpy() == q]
            assert set(row) <= set(candidates)
    assert set(reranked.search(xq[:2], 5, where="cat = 2")["cat"].to_pylist()) == {2}
    few = reranked.search_arrays(xq[:2], 5, where=f"id IN ({ids[0]}, {ids[1]})")
    assert (few[1][:, 2:] == -1).all() and np.isposinf(few[0][:, 2:]).all()


@pytest.mark.parametrize("mode", ["exact", "inductive"])
def test_the_reranker_hook_reranks_the_query_results(db, data, mode):
    xq, xb, ids = data
    table = make_table(db, xb, ids)
    reranked = RerankedTable(table, mode=mode, **PARAMS)
    reranker = reranked.reranker(xq[:3], k=5)
    assert isinstance(reranker, lancedb.rerankers.Reranker)
    query = table.search(xq[:3]).distance_type("cosine").limit(40).where("cat != 0")
    plain = query.select(["id"]).to_arrow()
    results = (
        table.search(xq[:3])
        .distance_type("cosine")
        .limit(40)
        .where("cat != 0")
        .rerank(reranker, query_string="gnn")
        .to_arrow()
    )
    assert "_relevance_score" in results.column_names and "path" in results.column_names
    stored, stored_ids = by_id(xb, ids)
    every = gnn_rerank(xq[:3], stored, topk=None, **PARAMS)
    for q in range(3):
        got = results.filter(pa.compute.equal(results["query_index"], q))
        candidates = plain["id"].to_numpy()[plain["query_index"].to_numpy() == q]
        assert got.num_rows == 5 and set(got["id"].to_pylist()) <= set(candidates)
        scores = got["_relevance_score"].to_numpy()
        assert np.all(np.diff(scores) <= 0)
        if mode == "exact":  # exact scores of the query's own results, the best 5
            columns = np.searchsorted(stored_ids, candidates)
            want = candidates[np.argsort(-every[q, columns], kind="stable")[:5]]
            np.testing.assert_array_equal(got["id"].to_numpy(), want)
    single = table.search(xq[0]).distance_type("cosine").limit(30)
    plain = single.select(["id"]).to_arrow()["id"].to_pylist()
    got = single.rerank(reranked.reranker(xq[0], k=4), query_string="gnn").to_arrow()
    assert got.num_rows == 4 and set(got["id"].to_pylist()) <= set(plain)
    assert "query_index" not in got.column_names


# -- the graph beside the table, and changes ----------------------------------------------


def test_graph_saved_beside_the_table(db, data, tmp_path):
    xq, xb, ids = data
    table = make_table(db, xb, ids)
    built = RerankedTable(table, mode="inductive", **PARAMS)
    built.save_graph(tmp_path / "table.graph.npz")
    loaded = RerankedTable(table, mode="inductive", **PARAMS)
    loaded.load_graph(tmp_path / "table.graph.npz")
    for a, b in zip(built.search_arrays(xq, 10), loaded.search_arrays(xq, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    table.update(where=f"id = {ids[0]}", values={"vector": xb[1].tolist()})
    with pytest.raises(ValueError, match="built for another database: table"):
        RerankedTable(table, mode="inductive", **PARAMS).load_graph(tmp_path / "table.graph.npz")
    with pytest.raises(DatabaseChangedError, match="changed since the inductive graph"):
        loaded.search_arrays(xq, 10)


def test_changes_are_detected(db, data):
    xq, xb, ids = data
    table = make_table(db, xb[:350], ids[:350])
    strict = RerankedTable(table, mode="inductive", **PARAMS)
    lenient = RerankedTable(table, mode="inductive", on_change="rebuild", **PARAMS)
    exact = RerankedTable(table, **PARAMS)
    for reranked in (strict, lenient, exact):
        reranked.search_arrays(xq, 5)
    graph = strict.graph
    table.update(where="cat = 1", values={"path": "renamed"})  # a new version, same vectors
    strict.search_arrays(xq, 5)
    assert strict.graph is graph
    table.add(rows(xb[350:], ids[350:], start=350))
    with pytest.raises(DatabaseChangedError, match="rows inserted, deleted or replaced"):
        strict.search_arrays(xq, 5)
    stored, stored_ids = by_id(xb, ids)
    want = stored_ids[faiss_inductive(xq, stored, 5)[1]]
    np.testing.assert_array_equal(lenient.search_arrays(xq, 5)[1], want)
    strict.build_graph()
    np.testing.assert_array_equal(strict.search_arrays(xq, 5)[1], want)
    np.testing.assert_array_equal(
        exact.search_arrays(xq, 5)[1], stored_ids[gnn_rerank(xq, stored, topk=5, **PARAMS)[1]]
    )
    table.delete(f"id IN ({', '.join(str(i) for i in ids[:40])})")
    with pytest.raises(DatabaseChangedError):
        strict.search(xq, 5)
    stored, stored_ids = by_id(xb[40:], ids[40:])
    np.testing.assert_array_equal(
        exact.search_arrays(xq, 5)[1], stored_ids[gnn_rerank(xq, stored, topk=5, **PARAMS)[1]]
    )


# -- errors -------------------------------------------------------------------------------


def test_errors_are_clear(db, data):
    xq, xb, ids = data
    table = make_table(db, xb, ids)
    name = table.name
    repeated = make_table(db, xb[:20], np.repeat(ids[:10], 2))
    reranked = RerankedTable(table, **PARAMS)
    cases = [
        (lambda: RerankedTable(table, id_column="key"), ValueError, "has no column 'key'"),
        (
            lambda: RerankedTable(table, vector_column="path"),
            ValueError,
            "column 'path' of table .* holds string; re-ranking needs fixed-size lists",
        ),
        (lambda: RerankedTable(table, metric="hamming"), ValueError, "'hamming' cannot be used"),
        (lambda: RerankedTable(xb), TypeError, "must be a LanceDB table"),
        (lambda: RerankedTable(table, id_column="vector"), ValueError, "ids must be integers"),
        (
            lambda: reranked.search(xq[:, :8], 5),
            ValueError,
            f"queries has dimension 8 but table '{name}' has dimension 16",
        ),
        (
            lambda: reranked.search_arrays(xq, 401),
            ValueError,
            f"k=401 is larger than 400 .table '{name}' holds 400 vectors",
        ),
        (
            lambda: RerankedTable(repeated).search(xq, 3),
            ValueError,
            "holds id .* more than once",
        ),
        (
            lambda: reranked.reranker(xq, k=3).rerank_vector("q", pa.table({"x": [1]})),
            ValueError,
            "lack the id column 'id'",
        ),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    assert isinstance(reranked.reranker(xq), ShortlistReranker)


def test_vectors_that_cannot_be_read_back(db, data):
    xq, xb, ids = data
    table = make_table(db, list(xb[:50]) + [None], ids[:51], on_bad_vectors="null")
    for mode in ("exact", "inductive"):
        with pytest.raises(ValueError, match=rf"cannot be read back: rows with ids \[{ids[50]}\]"):
            RerankedTable(table, mode=mode, k1=8, k2=3).search(xq, 5)
