"""Milvus adapter: GNN re-ranked search over a Milvus collection (``pymilvus.MilvusClient``).

Wrap a client and a collection with a dense ``FLOAT_VECTOR`` field indexed with the
COSINE, IP or L2 metric, and search as with ``client.search``::

    client = MilvusClient("photos.db")  # Milvus Lite file; a server URI works the same
    reranked = RerankedCollection(client, "photos", k1=26, k2=7)
    hits = reranked.search(queries, limit=10, filter="year > 2020", output_fields=["path"])
    D, I = reranked.search_arrays(queries, 10)  # FAISS's (D, I) form

The client calls are those of any Milvus deployment (Milvus Lite, standalone,
distributed, Zilliz Cloud); nothing here is specific to Milvus Lite.

Results:

* :meth:`RerankedCollection.search`: per query a list of pymilvus ``Hit`` dicts, as
  ``MilvusClient.search`` returns them: ``{<primary field>: id, "distance": ...,
  "entity": {<output fields>}}`` (``hit.id``, ``hit.distance``, ``hit["entity"]``), best
  first, fewer than ``limit`` when fewer rows pass the filter.
* :meth:`RerankedCollection.search_arrays`: ``(D [n, k] float32, I [n, k])`` with ``I``
  int64 for ``INT64`` primary keys (-1 where no result) or ``str`` for ``VARCHAR`` ones
  (``""``); ``D`` is ``-inf`` (COSINE, IP) or ``+inf`` (L2) where no result.

``distance`` follows the metric's direction: the re-ranked score (higher is better) for
COSINE and IP, ``2 - 2 * score`` (lower is better; the squared L2 distance of unit
vectors when ``lamb=1``) for L2. Vectors are compared by cosine: the stored vectors and
the queries are L2-normalised.

Modes (:mod:`triton_rerank.database.reranked_search`, shared with FAISS and LanceDB):

* ``mode="exact"``: results equal ``gnn_rerank(queries, stored vectors, topk=k)``. Every
  vector is read back once (and again after rows are inserted or deleted) and its
  canonical kNN lists cached; each batch then propagates over the whole collection.
  For collections up to about 100,000 rows.
* ``mode="inductive"``: the collection's graph is built once (:meth:`build_graph`:
  each row's ``k1`` neighbours from the collection's own search, or the canonical kNN
  computed locally for a ``FLAT`` index), saved beside the collection
  (:meth:`save_graph`, validated by :meth:`load_graph`), and each query is re-ranked
  against a ``shortlist`` of candidates from the collection's search. The cost per
  query does not grow with the collection. Milvus's search cost grows with ``limit``:
  ``shortlist_seeds=s`` searches ``s`` results only (e.g. ``s = limit``) and grows the
  shortlist from them through the graph's neighbour lists (another shortlist, so other
  results; :mod:`triton_rerank.database.reranked_search`).

Filters: ``filter`` is passed to Milvus; candidates only come from the rows it keeps,
while the neighbourhood structure is that of the whole collection (exact mode scores
every row and keeps the filtered ones; inductive mode re-ranks the filtered shortlist).

Changes: the row count (``count(*)``, strong consistency) is read before every search,
and a search that returns an id the cached state does not hold also counts as a
change. Exact mode then reads the collection again; inductive mode raises
:class:`~triton_rerank.database.reranked_search.DatabaseChangedError` (rebuild with
:meth:`build_graph`) unless ``on_change="rebuild"``. Deleting and inserting as many
rows between two searches, or upserting vectors under the same ids, keeps the count:
:meth:`verify_graph` then compares the whole collection with the graph's fingerprint.
"""

from __future__ import annotations

import numpy as np

from triton_rerank.database.inductive import DEFAULT_ROW_BUDGET, InductiveGraph
from triton_rerank.database.reranked_search import (
    DatabaseChangedError,  # noqa: F401 (re-exported: inductive mode raises it)
    RerankedSearch,
    padded_hits,
)
from triton_rerank.database.search_backend import SearchHits

METRICS = {"COSINE": "cosine", "IP": "ip", "L2": "l2"}
# Milvus returns at most 16384 results per query and takes at most 16384 queries per
# search.
MAX_LIMIT = 16384
# Queries sent per search request, and rows read per query request.
SEARCH_BATCH = 1024
READ_BATCH = 16384
_EXACT_INDEXES = ("FLAT", "BRUTE_FORCE")


def _pymilvus():
    """pymilvus, imported on first use (the adapter imports without it)."""
    try:
        import pymilvus
        from pymilvus.client import search_result  # noqa: F401 (pymilvus.client.search_result.Hit)
    except ImportError as error:
        raise ImportError(
            "triton_rerank.integrations.milvus needs pymilvus: pip install 'triton-rerank[milvus]'"
        ) from error
    return pymilvus


class MilvusBackend:
    """One dense vector field of a Milvus collection, seen as a
    :class:`~triton_rerank.database.search_backend.SearchBackend`.

    Args:
        client: a connected ``pymilvus.MilvusClient``.
        collection_name: the collection (loaded, with an index on the vector field).
        vector_field: the ``FLOAT_VECTOR`` field; default: the collection's only one.
        search_params: passed to ``client.search`` (e.g. ``{"params": {"ef": 1200}}``
            for HNSW, whose ``ef`` must reach the shortlist on Milvus servers).

    Raises:
        TypeError: ``client`` is not a ``MilvusClient``.
        ValueError: no such collection or field, a field that is not a dense float
            vector, no index on it, or a metric other than COSINE, IP and L2.
    """

    def __init__(
        self,
        client,
        collection_name: str,
        *,
        vector_field: str | None = None,
        search_params: dict | None = None,
    ):
        pymilvus = _pymilvus()
        DataType = pymilvus.DataType
        if not isinstance(client, pymilvus.MilvusClient):
            raise TypeError(f"client must be a pymilvus.MilvusClient, got {type(client).__name__}")
        if not client.has_collection(collection_name):
            names = ", ".join(repr(n) for n in client.list_collections()) or "none"
            raise ValueError(
                f"no collection {collection_name!r} in this Milvus database (collections: {names})"
            )
        self.client = client
        self.collection_name = collection_name
        self.search_params = dict(search_params or {})
        fields = client.describe_collection(collection_name)["fields"]
        by_name = {field["name"]: field for field in fields}
        primary = next(field for field in fields if field.get("is_primary"))
        id_types = {DataType.INT64: "int", DataType.VARCHAR: "str"}
        if primary["type"] not in id_types:
            raise ValueError(
                f"collection {collection_name!r} has a {primary['type'].name} primary key; "
                f"re-ranking needs INT64 or VARCHAR ones"
            )
        self.id_field = primary["name"]
        self.id_kind = id_types[primary["type"]]
        if vector_field is None:
            dense = [f["name"] for f in fields if f["type"] == DataType.FLOAT_VECTOR]
            if len(dense) != 1:
                found = ", ".join(repr(name) for name in dense) or "none"
                raise ValueError(
                    f"collection {collection_name!r} has {len(dense)} FLOAT_VECTOR fields "
                    f"({found}): name the one to re-rank with vector_field="
                )
            vector_field = dense[0]
        if vector_field not in by_name:
            raise ValueError(
                f"collection {collection_name!r} has no field {vector_field!r} (fields: "
                f"{', '.join(repr(name) for name in by_name)})"
            )
        field = by_name[vector_field]
        if field["type"] != DataType.FLOAT_VECTOR:
            raise ValueError(
                f"field {vector_field!r} of collection {collection_name!r} is a "
                f"{field['type'].name} field; re-ranking needs a dense FLOAT_VECTOR field"
            )
        self.vector_field = vector_field
        self.dimension = int(field["params"]["dim"])
        self.description = f"collection {collection_name!r}"
        indexes = client.list_indexes(collection_name, field_name=vector_field)
        if not indexes:
            raise ValueError(
                f"field {vector_field!r} of collection {collection_name!r} has no index, so "
                f"its search metric is unknown: create one with metric_type COSINE, IP or L2"
            )
        index = client.describe_index(collection_name, indexes[0])
        metric = str(index.get("metric_type", "")).upper()
        if metric not in METRICS:
            raise ValueError(
                f"field {vector_field!r} of collection {collection_name!r} is searched with "
                f"metric {metric or 'unknown'}; re-ranking compares vectors by cosine and "
                f"needs COSINE, IP or L2"
            )
        self.milvus_metric = metric
        self.metric = METRICS[metric]
        self.index_type = str(index.get("index_type", ""))
        self.exact = self.index_type.upper() in _EXACT_INDEXES

    # -- the protocol --------------------------------------------------------------------

    def count(self) -> int:
        result = self.client.query(
            self.collection_name,
            filter="",
            output_fields=["count(*)"],
            consistency_level="Strong",
        )
        return int(result[0]["count(*)"])

    def version(self) -> int:
        """The row count: Milvus exposes no cheaper record of inserts and deletes."""
        return self.count()

    def _as_ids(self, values) -> np.ndarray:
        if self.id_kind == "str":
            return np.array(values, dtype=str) if len(values) else np.zeros(0, dtype=str)
        return np.array(values, dtype=np.int64)

    def ids(self, filter=None) -> np.ndarray:
        """Every primary key (of the rows ``filter`` keeps), sorted."""
        iterator = self.client.query_iterator(
            self.collection_name,
            batch_size=READ_BATCH,
            filter=filter or "",
            output_fields=[self.id_field],
            consistency_level="Strong",
        )
        values = []
        try:
            while batch := iterator.next():
                values.extend(row[self.id_field] for row in batch)
        finally:
            iterator.close()
        ids = np.sort(self._as_ids(values))
        repeated = ids[1:][ids[1:] == ids[:-1]]
        if repeated.size:
            raise ValueError(
                f"collection {self.collection_name!r} holds primary key {repeated[0]!r} "
                f"more than once; re-ranking needs unique ids"
            )
        return ids

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids``, read with ``client.get``."""
        ids = np.asarray(ids)
        out = np.empty((ids.shape[0], self.dimension), dtype=np.float32)
        for start in range(0, ids.shape[0], READ_BATCH):
            chunk = ids[start : start + READ_BATCH]
            rows = self.client.get(
                self.collection_name,
                ids=chunk.tolist(),
                output_fields=[self.vector_field],
                consistency_level="Strong",
            )
            by_id = {row[self.id_field]: row.get(self.vector_field) for row in rows}
            for offset, key in enumerate(chunk.tolist()):
                vector = by_id.get(key)
                if vector is None or len(vector) != self.dimension:
                    state = "is missing" if key not in by_id else "has no stored vector"
                    raise ValueError(
                        f"the vector of id {key!r} in collection {self.collection_name!r} "
                        f"cannot be read back: the row {state} (deleted meanwhile, or a "
                        f"null vector); re-ranking needs every row's vector"
                    )
                out[start + offset] = vector
        return out

    def search(self, queries: np.ndarray, k: int, *, filter=None) -> SearchHits:
        """``client.search`` of the vector field, ``SEARCH_BATCH`` queries at a time."""
        if k > MAX_LIMIT:
            raise ValueError(
                f"Milvus returns at most {MAX_LIMIT} results per query, {k} were asked "
                f"(a shortlist that large: pass a smaller shortlist=)"
            )
        fill = np.inf if self.metric == "l2" else -np.inf
        parts = []
        for start in range(0, queries.shape[0], SEARCH_BATCH):
            result = self.client.search(
                self.collection_name,
                data=queries[start : start + SEARCH_BATCH],
                limit=k,
                filter=filter or "",
                anns_field=self.vector_field,
                output_fields=[self.id_field],
                search_params=self.search_params,
            )
            lengths = [len(hits.ids) for hits in result]
            parts.append(
                padded_hits(
                    [hits.distances for hits in result],
                    [hits.ids for hits in result],
                    lengths,
                    k,
                    fill_distance=fill,
                )
            )
        return SearchHits(
            np.concatenate([p.distances for p in parts]),
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.found for p in parts]),
        )


class RerankedCollection:
    """A Milvus collection whose searches are GNN re-ranked (see the module doc).

    Args:
        client: a connected ``pymilvus.MilvusClient`` (Milvus Lite file or server).
        collection_name: a loaded collection with an index on its vector field.
        vector_field: the ``FLOAT_VECTOR`` field (default: the only one).
        k1, k2, iterations, lamb: as :func:`triton_rerank.gnn_rerank`.
        mode: ``"exact"`` or ``"inductive"``.
        shortlist: inductive mode's candidates per query (default ``max(10 * k, k1)``,
            at most the row count and 16384).
        shortlist_seeds: inductive mode without a filter: search only this many
            results (e.g. ``k``) and grow the shortlist from them through the graph's
            neighbour lists (``RerankedSearch``'s module doc); default: the whole
            shortlist from the search.
        on_change: inductive mode after rows were inserted or deleted: ``"error"``
            (:class:`~triton_rerank.database.reranked_search.DatabaseChangedError`) or
            ``"rebuild"`` the graph within the next search.
        search_params: passed to every ``client.search`` (the shortlists, and the graph's
            neighbour lists).
    """

    def __init__(
        self,
        client,
        collection_name: str,
        *,
        vector_field: str | None = None,
        k1: int = 26,
        k2: int = 7,
        iterations: int = 2,
        lamb: float = 0.3,
        mode: str = "exact",
        shortlist: int | None = None,
        shortlist_seeds: int | None = None,
        on_change: str = "error",
        search_params: dict | None = None,
    ):
        self.backend = MilvusBackend(
            client, collection_name, vector_field=vector_field, search_params=search_params
        )
        self.reranking = RerankedSearch(
            self.backend,
            k1=k1,
            k2=k2,
            iterations=iterations,
            lamb=lamb,
            mode=mode,
            shortlist=shortlist,
            shortlist_seeds=shortlist_seeds,
            on_change=on_change,
            unit_vectors_advice="store L2-normalised vectors, or index the field with COSINE",
        )
        self.mode = mode

    @property
    def graph(self) -> InductiveGraph | None:
        """The inductive graph in use (None until built or loaded)."""
        return self.reranking.graph

    def build_graph(self, *, row_budget: int = DEFAULT_ROW_BUDGET) -> InductiveGraph:
        """Build the inductive graph of the whole collection (``RerankedSearch.build_graph``):
        reads every vector, and searches each row's ``k1`` neighbours unless the index is
        ``FLAT`` (then the canonical kNN is computed locally)."""
        return self.reranking.build_graph(row_budget=row_budget)

    def save_graph(self, path) -> None:
        """Save the inductive graph (built first if needed), e.g. beside a Milvus Lite
        file: ``photos.db`` -> ``photos.graph.npz``."""
        self.reranking.save_graph(path)

    def load_graph(self, path) -> InductiveGraph:
        """Load a graph saved for this collection, after checking the file in full and
        against the collection (parameters, dimension, ids, fingerprint of the vectors)."""
        return self.reranking.load_graph(path)

    def verify_graph(self) -> None:
        """Compare the collection, read in full, with the graph's fingerprint.

        Raises:
            DatabaseChangedError: rows or vectors differ from those the graph was built
                from (upserts, or as many rows deleted as inserted).
        """
        self.reranking.verify_graph()

    def invalidate(self) -> None:
        """Forget the cached state; the next search reads the collection again."""
        self.reranking.invalidate()

    def _rerank(self, data, limit: int, filter: str):
        queries = self.reranking.check_queries(data)[0]
        return self.reranking.search(queries, limit, filter=filter or None)

    def _distances(self, hits) -> np.ndarray:
        if self.backend.metric == "l2":
            return np.where(hits.found, 2.0 - 2.0 * hits.scores, np.inf).astype(np.float32)
        return hits.scores

    def search(self, data, limit: int = 10, *, filter: str = "", output_fields=None):
        """Re-ranked ``client.search(collection_name, data, limit, filter, output_fields)``.

        Args:
            data: ``[n, d]`` queries (numpy array, torch tensor, or a list of lists).
            limit: results per query.
            filter: a Milvus boolean expression; results only from the rows it keeps.
            output_fields: fields returned in each hit's ``entity`` (read with
                ``client.get`` for the final results only).

        Returns:
            Per query a list of pymilvus ``Hit`` dicts (see the module doc).
        """
        Hit = _pymilvus().client.search_result.Hit
        hits = self._rerank(_as_matrix(data), limit, filter)
        distances = self._distances(hits)
        entities = self._entities(hits.ids[hits.found], output_fields)
        id_field = self.backend.id_field
        results = []
        for row in range(hits.ids.shape[0]):
            found = hits.found[row]
            results.append(
                [
                    Hit(
                        {
                            id_field: key,
                            "distance": float(distance),
                            "entity": dict(entities.get(key, {})),
                        },
                        pk_name=id_field,
                    )
                    for key, distance in zip(
                        hits.ids[row][found].tolist(), distances[row][found].tolist(), strict=True
                    )
                ]
            )
        return results

    def search_arrays(self, data, k: int, *, filter: str = ""):
        """Re-ranked search in FAISS's form: ``(D [n, k] float32, I [n, k])`` (see the
        module doc)."""
        hits = self._rerank(_as_matrix(data), k, filter)
        return self._distances(hits), hits.ids

    def _entities(self, ids: np.ndarray, output_fields) -> dict:
        """``{id: {field: value}}`` of the results, read with ``client.get``."""
        fields = [f for f in (output_fields or []) if f != self.backend.id_field]
        if not output_fields:
            return {}
        unique = list(dict.fromkeys(ids.tolist()))
        entities = {}
        for start in range(0, len(unique), READ_BATCH):
            rows = self.backend.client.get(
                self.backend.collection_name,
                ids=unique[start : start + READ_BATCH],
                output_fields=fields or [self.backend.id_field],
            )
            for row in rows:
                key = row[self.backend.id_field]
                entities[key] = {name: row[name] for name in output_fields if name in row}
        missing = [key for key in unique if key not in entities]
        if missing:
            raise DatabaseChangedError(
                f"collection {self.backend.collection_name!r} changed during the search: "
                f"id {missing[0]!r} is no longer there; search again"
            )
        return entities


def _as_matrix(data):
    """Lists of lists (as ``client.search`` takes them) as a float32 array."""
    if isinstance(data, (list, tuple)):
        return np.asarray(data, dtype=np.float32)
    return data
