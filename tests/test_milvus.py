# ruff: noqa: E741  (FAISS's own names for search results: D, I)
"""The Milvus adapter against a real Milvus Lite database file (pymilvus ``MilvusClient``).

Every re-ranked result is compared with a reference: exact mode with
``gnn_rerank(queries, stored vectors, topk=k)`` (ids mapped), inductive mode with the
FAISS adapter's inductive mode on the same vectors.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

import faiss  # noqa: E402
from pymilvus import DataType, MilvusClient  # noqa: E402
from pymilvus.client.search_result import Hit  # noqa: E402

from tests.compare import four_halves_vectors  # noqa: E402
from triton_rerank import gnn_rerank  # noqa: E402
from triton_rerank.app.synthetic import clustered_vectors  # noqa: E402
from triton_rerank.database.reranked_search import UnnormalisedVectorsWarning  # noqa: E402
from triton_rerank.evaluation.metrics import list_recall  # noqa: E402
from triton_rerank.integrations.faiss import RerankedIndex  # noqa: E402
from triton_rerank.integrations.milvus import (  # noqa: E402
    DatabaseChangedError,
    MilvusBackend,
    RerankedCollection,
)

PARAMS = {"k1": 12, "k2": 4, "iterations": 2, "lamb": 0.3}
DIM = 16
_names = (f"c{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    client = MilvusClient(str(tmp_path_factory.mktemp("milvus") / "test.db"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def data():
    """``(queries [20, 16], database [400, 16], ids [400])``: clustered unit rows, ids
    neither sorted nor positive."""
    x, _ = clustered_vectors(420, DIM, 12, spread=1.0, seed=3)
    ids = 1000 - 3 * np.arange(400)
    return x[:20], np.ascontiguousarray(x[20:]), ids


def make_collection(
    client,
    vectors,
    ids,
    *,
    metric="COSINE",
    index="FLAT",
    index_params=None,
    nullable=False,
):
    """A new collection: primary key ``pk`` (INT64, or VARCHAR for string ids), vector
    field ``vec``, scalar fields ``cat`` (row number % 3) and ``path``."""
    name = next(_names)
    schema = client.create_schema(auto_id=False)
    if np.asarray(ids).dtype.kind == "U":
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=32)
    else:
        schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=DIM, nullable=nullable)
    schema.add_field("cat", DataType.INT64)
    schema.add_field("path", DataType.VARCHAR, max_length=64)
    params = client.prepare_index_params()
    params.add_index(
        field_name="vec", index_type=index, metric_type=metric, params=index_params or {}
    )
    client.create_collection(name, schema=schema, index_params=params)
    insert(client, name, vectors, ids)
    return name


def insert(client, name, vectors, ids, start=0):
    client.insert(
        name,
        [
            {
                "pk": key.item(),
                "vec": None if vector is None else vector,
                "cat": (start + i) % 3,
                "path": f"img/{key}.jpg",
            }
            for i, (key, vector) in enumerate(zip(ids, vectors, strict=True))
        ],
    )


def by_id(vectors, ids):
    """The database in the adapter's order (sorted ids): ``(vectors, ids)``."""
    order = np.argsort(ids, kind="stable")
    return np.ascontiguousarray(vectors[order]), np.asarray(ids)[order]


def faiss_inductive(xq, xb, k, **kwargs):
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    return RerankedIndex(index, mode="inductive", **PARAMS, **kwargs).search(xq, k)


# -- exact mode ---------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["COSINE", "IP", "L2"])
def test_exact_mode_equals_gnn_rerank(client, data, metric):
    xq, xb, ids = data
    name = make_collection(client, xb, ids, metric=metric)
    D, I = RerankedCollection(client, name, **PARAMS).search_arrays(xq, 10)
    stored, stored_ids = by_id(xb, ids)
    want_d, want_i = gnn_rerank(xq, stored, topk=10, **PARAMS)
    np.testing.assert_array_equal(I, stored_ids[want_i])
    want_d = 2 - 2 * want_d if metric == "L2" else want_d
    np.testing.assert_allclose(D, want_d, rtol=0, atol=1e-6)
    assert D.dtype == np.float32 and I.dtype == np.int64


def test_exact_mode_on_a_duplicate_heavy_collection(client):
    x = four_halves_vectors(np.random.default_rng(11), 330)
    x[90:190] = x[30:130]  # most database rows twice, and a few three times
    x[300:330] = x[30:60]
    xq, xb = x[:30], np.ascontiguousarray(x[30:])
    ids = np.random.default_rng(2).permutation(10_000)[: len(xb)]
    name = make_collection(client, xb, ids, metric="IP")
    reranked = RerankedCollection(client, name, k1=10, k2=3, lamb=0.0)
    D, I = reranked.search_arrays(xq, 25)
    stored, stored_ids = by_id(xb, ids)
    want_d, want_i = gnn_rerank(xq, stored, k1=10, k2=3, lamb=0.0, topk=25)
    np.testing.assert_array_equal(I, stored_ids[want_i])
    np.testing.assert_array_equal(D, want_d)


# -- inductive mode -----------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["COSINE", "IP"])
@pytest.mark.parametrize("shortlist", [None, 400])
def test_inductive_mode_equals_the_faiss_inductive_mode(client, data, metric, shortlist):
    xq, xb, ids = data
    name = make_collection(client, xb, ids, metric=metric)
    reranked = RerankedCollection(client, name, mode="inductive", shortlist=shortlist, **PARAMS)
    D, I = reranked.search_arrays(xq, 10)
    stored, stored_ids = by_id(xb, ids)
    want_d, want_i = faiss_inductive(xq, stored, 10, shortlist=shortlist)
    np.testing.assert_array_equal(I, stored_ids[want_i])
    np.testing.assert_array_equal(D, want_d)


def test_shortlist_seeds_equal_the_faiss_inductive_mode(client, data):
    xq, xb, ids = data
    name = make_collection(client, xb, ids, metric="IP")
    reranked = RerankedCollection(
        client, name, mode="inductive", shortlist=300, shortlist_seeds=10, **PARAMS
    )
    D, I = reranked.search_arrays(xq, 10)
    stored, stored_ids = by_id(xb, ids)
    want_d, want_i = faiss_inductive(xq, stored, 10, shortlist=300, shortlist_seeds=10)
    np.testing.assert_array_equal(I, stored_ids[want_i])
    np.testing.assert_array_equal(D, want_d)
    # filtered searches take their shortlist from the search (the graph cannot filter)
    default = RerankedCollection(client, name, mode="inductive", shortlist=60, **PARAMS)
    reranked = RerankedCollection(
        client, name, mode="inductive", shortlist=60, shortlist_seeds=10, **PARAMS
    )
    want = default.search_arrays(xq, 8, filter="cat == 1")
    got = reranked.search_arrays(xq, 8, filter="cat == 1")
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def test_inductive_mode_over_an_hnsw_index_searches_the_neighbour_lists(client, data):
    xq, xb, ids = data
    name = make_collection(
        client, xb, ids, index="HNSW", index_params={"M": 16, "efConstruction": 200}
    )
    reranked = RerankedCollection(
        client, name, mode="inductive", search_params={"params": {"ef": 400}}, **PARAMS
    )
    assert not reranked.backend.exact  # the graph's lists come from Milvus's search
    _, I = reranked.search_arrays(xq, 10)
    stored, stored_ids = by_id(xb, ids)
    _, want_i = faiss_inductive(xq, stored, 10)
    assert list_recall(I, stored_ids[want_i]) >= 0.95


def test_l2_collection_distances(client, data):
    xq, xb, ids = data
    name = make_collection(client, xb, ids, metric="L2")
    D, I = RerankedCollection(client, name, mode="inductive", **PARAMS).search_arrays(xq, 10)
    stored, stored_ids = by_id(xb, ids)
    want_d, want_i = faiss_inductive(xq, stored, 10)
    np.testing.assert_array_equal(I, stored_ids[want_i])
    np.testing.assert_allclose(D, 2 - 2 * want_d, rtol=0, atol=1e-6)
    assert np.all(np.diff(D, axis=1) >= 0)


def test_string_primary_keys(client, data):
    xq, xb, ids = data
    text_ids = np.array([f"img-{i:05d}" for i in ids])
    name = make_collection(client, xb, text_ids)
    stored, stored_ids = by_id(xb, text_ids)
    D, I = RerankedCollection(client, name, **PARAMS).search_arrays(xq, 10)
    np.testing.assert_array_equal(I, stored_ids[gnn_rerank(xq, stored, topk=10, **PARAMS)[1]])
    inductive = RerankedCollection(client, name, mode="inductive", **PARAMS)
    hits = inductive.search(xq[:3], limit=5)
    want = stored_ids[faiss_inductive(xq[:3], stored, 5)[1]]
    assert [[hit["pk"] for hit in row] for row in hits] == want.tolist()
    assert all(isinstance(hit.id, str) for row in hits for hit in row)


# -- pymilvus's shape, filters, output fields ---------------------------------------------


def test_hits_have_pymilvus_shape_and_output_fields(client, data):
    xq, xb, ids = data
    name = make_collection(client, xb, ids)
    reranked = RerankedCollection(client, name, mode="inductive", **PARAMS)
    hits = reranked.search(xq[:4], limit=6, output_fields=["path", "cat"])
    D, I = reranked.search_arrays(xq[:4], 6)
    assert len(hits) == 4 and all(len(row) == 6 for row in hits)
    position = {key: i for i, key in enumerate(ids.tolist())}
    for q, row in enumerate(hits):
        for j, hit in enumerate(row):
            assert isinstance(hit, Hit) and hit.id == hit["pk"] == I[q, j]
            assert hit["distance"] == pytest.approx(float(D[q, j]))
            assert hit["entity"] == {"path": f"img/{hit.id}.jpg", "cat": position[hit.id] % 3}
    assert reranked.search(xq[:1], limit=3)[0][0]["entity"] == {}


@pytest.mark.parametrize("mode", ["exact", "inductive"])
def test_filter_is_passed_through(client, data, mode):
    xq, xb, ids = data
    name = make_collection(client, xb, ids)
    reranked = RerankedCollection(client, name, mode=mode, shortlist=60, **PARAMS)
    hits = reranked.search(xq, limit=8, filter="cat == 1", output_fields=["cat"])
    assert all(hit["entity"]["cat"] == 1 for row in hits for hit in row)
    D, I = reranked.search_arrays(xq, 8, filter="cat == 1")
    assert [[hit.id for hit in row] for row in hits] == I.tolist()
    stored, stored_ids = by_id(xb, ids)
    kept = np.isin(stored_ids, ids[np.arange(len(ids)) % 3 == 1])
    if mode == "exact":  # gnn_rerank over the whole collection, best of the kept rows
        every = gnn_rerank(xq, stored, topk=None, **PARAMS)
        every[:, ~kept] = -np.inf
        want = np.argsort(-every, axis=1, kind="stable")[:, :8]
        np.testing.assert_array_equal(I, stored_ids[want])
        np.testing.assert_allclose(D, np.take_along_axis(every, want, 1), rtol=0, atol=1e-6)
    else:  # candidates from the filtered shortlist only
        shortlist = MilvusBackend(client, name).search(
            reranked.reranking.check_queries(xq)[0], 60, filter="cat == 1"
        )
        for row, candidates in zip(I, shortlist.ids, strict=True):
            assert set(row) <= set(candidates)
    few = reranked.search(xq[:2], limit=5, filter=f"pk in {ids[:3].tolist()}")
    assert [len(row) for row in few] == [3, 3]
    D, I = reranked.search_arrays(xq[:2], 5, filter=f"pk in {ids[:3].tolist()}")
    assert (I[:, 3:] == -1).all() and np.isneginf(D[:, 3:]).all()


# -- the graph beside the collection, and changes -----------------------------------------


def test_graph_saved_beside_the_collection(client, data, tmp_path):
    xq, xb, ids = data
    name = make_collection(client, xb, ids)
    built = RerankedCollection(client, name, mode="inductive", **PARAMS)
    built.save_graph(tmp_path / "test.graph.npz")
    loaded = RerankedCollection(client, name, mode="inductive", **PARAMS)
    loaded.load_graph(tmp_path / "test.graph.npz")
    assert loaded.graph.fingerprint == built.graph.fingerprint
    for a, b in zip(built.search_arrays(xq, 10), loaded.search_arrays(xq, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    loaded.verify_graph()
    client.upsert(name, [{"pk": int(ids[0]), "vec": xb[1], "cat": 0, "path": "moved"}])
    with pytest.raises(DatabaseChangedError, match="differ from those the graph was built"):
        loaded.verify_graph()
    with pytest.raises(ValueError, match="built for another database: collection"):
        RerankedCollection(client, name, mode="inductive", **PARAMS).load_graph(
            tmp_path / "test.graph.npz"
        )
    with pytest.raises(ValueError, match=r"built with \(k1, k2, iterations\)"):
        RerankedCollection(client, name, mode="inductive", k1=20).load_graph(
            tmp_path / "test.graph.npz"
        )


def test_inserted_and_deleted_rows_are_detected(client, data):
    xq, xb, ids = data
    name = make_collection(client, xb[:350], ids[:350])
    strict = RerankedCollection(client, name, mode="inductive", **PARAMS)
    lenient = RerankedCollection(client, name, mode="inductive", on_change="rebuild", **PARAMS)
    exact = RerankedCollection(client, name, **PARAMS)
    for reranked in (strict, lenient, exact):
        reranked.search_arrays(xq, 5)
    insert(client, name, xb[350:], ids[350:], start=350)
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
    client.delete(name, ids=ids[:40].tolist())
    with pytest.raises(DatabaseChangedError, match="changed since the inductive graph"):
        strict.search(xq, limit=5)
    stored, stored_ids = by_id(xb[40:], ids[40:])
    np.testing.assert_array_equal(
        exact.search_arrays(xq, 5)[1], stored_ids[gnn_rerank(xq, stored, topk=5, **PARAMS)[1]]
    )


# -- errors -------------------------------------------------------------------------------


def test_errors_are_clear(client, data):
    xq, xb, ids = data
    name = make_collection(client, xb, ids)
    no_index = next(_names)
    schema = client.create_schema(auto_id=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=DIM)
    client.create_collection(no_index, schema=schema)
    sparse = next(_names)
    schema = client.create_schema(auto_id=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("words", DataType.SPARSE_FLOAT_VECTOR)
    params = client.prepare_index_params()
    params.add_index(field_name="words", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
    client.create_collection(sparse, schema=schema, index_params=params)
    reranked = RerankedCollection(client, name, **PARAMS)
    cases = [
        (lambda: RerankedCollection(client, "nope"), ValueError, "no collection 'nope'"),
        (
            lambda: RerankedCollection(client, name, vector_field="embedding"),
            ValueError,
            f"collection '{name}' has no field 'embedding'",
        ),
        (
            lambda: RerankedCollection(client, sparse, vector_field="words"),
            ValueError,
            "is a SPARSE_FLOAT_VECTOR field; re-ranking needs a dense FLOAT_VECTOR",
        ),
        (lambda: RerankedCollection(client, sparse), ValueError, "0 FLOAT_VECTOR fields"),
        (lambda: RerankedCollection(client, no_index), ValueError, "has no index"),
        (lambda: RerankedCollection(object(), name), TypeError, "pymilvus.MilvusClient"),
        (lambda: RerankedCollection(client, name, mode="fast"), ValueError, "mode must be"),
        (
            lambda: reranked.search(xq[:, :8], limit=5),
            ValueError,
            f"queries has dimension 8 but collection '{name}' has dimension 16",
        ),
        (
            lambda: reranked.search_arrays(xq, 401),
            ValueError,
            f"k=401 is larger than 400 .collection '{name}' holds 400 vectors",
        ),
        (lambda: reranked.search(np.zeros_like(xq), limit=5), ValueError, "zero-norm"),
        (
            lambda: RerankedCollection(client, name, mode="inductive", shortlist=5).search(xq, 10),
            ValueError,
            "shortlist=5 is smaller than k=10",
        ),
        (
            lambda: RerankedCollection(client, name, mode="inductive", k1=20000).build_graph(),
            ValueError,
            "k1=20000 is larger than 400",
        ),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


def test_vectors_that_cannot_be_read_back(client, data):
    xq, xb, ids = data
    vectors = list(xb[:50]) + [None]
    name = make_collection(client, vectors, ids[:51], nullable=True)
    for mode in ("exact", "inductive"):
        # Milvus Lite reads a null vector back as zeros, a Milvus server as None
        key = ids[50]
        with pytest.raises(ValueError, match=rf"all-zero.*ids \[{key}\]|id {key} .*read back"):
            RerankedCollection(client, name, mode=mode, k1=8, k2=3).search(xq, 5)


def test_an_unnormalised_inner_product_collection_warns(client, data):
    xq, xb, ids = data
    scaled = xb * np.linspace(0.5, 2, len(xb), dtype=np.float32)[:, None]
    name = make_collection(client, scaled, ids, metric="IP")
    with pytest.warns(
        UnnormalisedVectorsWarning, match="not unit-norm.*index the field with COSINE"
    ):
        RerankedCollection(client, name, mode="inductive", **PARAMS).search(xq, 5)
