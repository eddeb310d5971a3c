"""LanceDB adapter: GNN re-ranked vector search over a LanceDB table.

Wrap a table with a vector column and an id column, and search::

    table = lancedb.connect("photos.lance").open_table("photos")
    reranked = RerankedTable(table, id_column="id", mode="inductive")
    results = reranked.search(query, k=10, where="year > 2020")  # a pyarrow.Table
    D, I = reranked.search_arrays(queries, 10)                   # FAISS's (D, I) form

or re-rank a LanceDB query's own results through LanceDB's re-ranker hook::

    results = (table.search(query).limit(200)
               .rerank(reranked.reranker(query, k=10), query_string="gnn").to_arrow())

Results:

* :meth:`RerankedTable.search`: a ``pyarrow.Table`` shaped like LanceDB's own vector
  search results: ``query_index`` (for a batch of queries), the selected columns (all
  by default), ``_distance`` (LanceDB's convention, lower is better: ``1 - score`` for
  ``cosine`` and ``dot``, ``2 - 2 * score`` for ``l2``) and ``_relevance_score`` (the
  re-ranked score, higher is better), best first per query.
* :meth:`RerankedTable.search_arrays`: ``(D [n, k] float32, I [n, k])``, ``D`` the
  ``_distance`` above (``+inf`` where no result), ``I`` int64 (-1 where no result) or
  ``str`` (``""``) ids.

Vectors are compared by cosine (stored vectors and queries are L2-normalised). The
distance type of the table's searches is its vector index's, or ``metric`` (default
``"cosine"``, which ranks by cosine whatever the norms) when the column has no index.

Modes (:mod:`triton_rerank.database.reranked_search`, shared with FAISS and Milvus):

* ``mode="exact"``: results equal ``gnn_rerank(queries, stored vectors, topk=k)``; the
  vectors are read once per table version and their canonical kNN lists cached.
* ``mode="inductive"``: the table's graph is built once (:meth:`RerankedTable.build_graph`:
  neighbour lists from the table's own search, or the canonical kNN computed locally
  when the column has no vector index, so that searches are exhaustive), saved beside
  the table (:meth:`RerankedTable.save_graph`, checked by :meth:`RerankedTable.load_graph`),
  and each query is re-ranked against a ``shortlist`` from the table's search, or (with
  ``shortlist_seeds=s``) grown from its top ``s`` through the graph's neighbour lists
  (:mod:`triton_rerank.database.reranked_search`).

``where`` is LanceDB's SQL filter, applied before the vector search (prefilter):
candidates only come from the rows it keeps, the neighbourhood structure is that of the
whole table. The re-ranker hook re-ranks exactly the rows the LanceDB query returned
(its filter, limit and index settings are the query's), with the same rule.

Changes: the table's version is read before every search. After a new version (rows
added, deleted, updated, compacted, an index built) the table is read again: when its
ids and vectors are those the graph was built from, the graph stays; otherwise exact
mode recomputes its lists and inductive mode raises
:class:`~triton_rerank.database.reranked_search.DatabaseChangedError` (rebuild with
:meth:`RerankedTable.build_graph`) unless ``on_change="rebuild"``. A table handle sees
other processes' writes only if its connection checks for them
(``lancedb.connect(..., read_consistency_interval=...)``, or ``table.checkout_latest()``).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from triton_rerank.database.inductive import DEFAULT_ROW_BUDGET, InductiveGraph
from triton_rerank.database.reranked_search import (
    DatabaseChangedError,
    IdPositions,
    RerankedHits,
    RerankedSearch,
    padded_hits,
)
from triton_rerank.database.search_backend import SearchHits

if TYPE_CHECKING:
    import pyarrow as pa

METRICS = {"cosine": "cosine", "dot": "ip", "l2": "l2"}
# Queries sent per LanceDB search, and ids per IN (...) filter.
SEARCH_BATCH = 16384
ID_BATCH = 10000


def _lancedb():
    """``(lancedb, pyarrow)``, imported on first use (the adapter imports without them)."""
    try:
        import lancedb
        import lancedb.rerankers
        import pyarrow
    except ImportError as error:
        raise ImportError(
            "triton_rerank.integrations.lancedb needs LanceDB: pip install 'triton-rerank[lancedb]'"
        ) from error
    return lancedb, pyarrow


def _sql_name(name: str) -> str:
    """A column name as LanceDB's SQL filters read it."""
    return name if name.isidentifier() else "`" + name.replace("`", "``") + "`"


def _sql_values(values: list) -> str:
    if values and isinstance(values[0], str):
        return ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return ", ".join(str(int(v)) for v in values)


class LanceTableBackend:
    """A LanceDB table's vector column, seen as a
    :class:`~triton_rerank.database.search_backend.SearchBackend`.

    Args:
        table: a LanceDB table (``lancedb.table.Table``).
        vector_column: the fixed-size float list column; default: the only one.
        id_column: the column of unique int or string ids.
        metric: ``"cosine"``, ``"dot"`` or ``"l2"``: the distance type of the searches;
            default: the vector index's, or ``"cosine"`` without one.
        nprobes, refine_factor, ef: passed to LanceDB's query builder when given.

    Raises:
        TypeError: not a LanceDB table.
        ValueError: missing or unusable columns, a metric other than the three, or one
            that differs from the vector index's.
    """

    def __init__(
        self,
        table,
        *,
        vector_column: str | None = None,
        id_column: str = "id",
        metric: str | None = None,
        nprobes: int | None = None,
        refine_factor: int | None = None,
        ef: int | None = None,
    ):
        lancedb, pa = _lancedb()
        if not isinstance(table, lancedb.table.Table):
            raise TypeError(f"table must be a LanceDB table, got {type(table).__name__}")
        self.table = table
        self.description = f"table {table.name!r}"
        schema = table.schema
        vectors = [
            f.name
            for f in schema
            if pa.types.is_fixed_size_list(f.type) and pa.types.is_floating(f.type.value_type)
        ]
        if vector_column is None:
            if len(vectors) != 1:
                found = ", ".join(repr(name) for name in vectors) or "none"
                raise ValueError(
                    f"table {table.name!r} has {len(vectors)} fixed-size float vector "
                    f"columns ({found}): name the one to re-rank with vector_column="
                )
            vector_column = vectors[0]
        for name, role in ((vector_column, "vector_column"), (id_column, "id_column")):
            if name not in schema.names:
                raise ValueError(
                    f"table {table.name!r} has no column {name!r} ({role}; columns: "
                    f"{', '.join(repr(n) for n in schema.names)})"
                )
        if vector_column not in vectors:
            raise ValueError(
                f"column {vector_column!r} of table {table.name!r} holds "
                f"{schema.field(vector_column).type}; re-ranking needs fixed-size lists "
                f"of floats"
            )
        id_type = schema.field(id_column).type
        if pa.types.is_integer(id_type):
            self.id_kind = "int"
        elif pa.types.is_string(id_type) or pa.types.is_large_string(id_type):
            self.id_kind = "str"
        else:
            raise ValueError(
                f"column {id_column!r} of table {table.name!r} holds {id_type}; ids must be "
                f"integers or strings"
            )
        self.vector_column, self.id_column = vector_column, id_column
        self.dimension = schema.field(vector_column).type.list_size
        index_metric = self._index_metric()
        if metric is not None and metric not in METRICS:
            raise ValueError(
                f"metric {metric!r} cannot be used: re-ranking compares vectors by cosine "
                f"and searches with 'cosine', 'dot' or 'l2'"
            )
        if index_metric is not None and metric is not None and metric != index_metric:
            raise ValueError(
                f"column {vector_column!r} of table {table.name!r} is indexed for "
                f"{index_metric!r} distances, so its searches cannot use {metric!r}"
            )
        self.lance_metric = metric or index_metric or "cosine"
        if self.lance_metric not in METRICS:
            raise ValueError(
                f"column {vector_column!r} of table {table.name!r} is indexed for "
                f"{self.lance_metric!r} distances; re-ranking compares vectors by cosine and "
                f"needs a 'cosine', 'dot' or 'l2' index"
            )
        self.metric = METRICS[self.lance_metric]
        self.exact = index_metric is None
        self.query_options = {
            name: value
            for name, value in (("nprobes", nprobes), ("refine_factor", refine_factor), ("ef", ef))
            if value is not None
        }

    def _index_metric(self) -> str | None:
        """The distance type of the vector index on the column, or None without one."""
        for index in self.table.list_indices():
            if list(index.columns) == [self.vector_column]:
                # (LanceDB before 0.22 names no index: "<column>_idx" is its default name)
                name = getattr(index, "name", None) or f"{self.vector_column}_idx"
                stats = self.table.index_stats(name)
                if stats is not None and stats.distance_type:
                    return str(stats.distance_type).lower()
        return None

    # -- the protocol --------------------------------------------------------------------

    def count(self) -> int:
        return self.table.count_rows()

    def version(self) -> int:
        """The table version: every commit (add, delete, update, compaction, an index)
        makes a new one."""
        return self.table.version

    def _scan(self, columns: list[str], where: str | None = None) -> pa.Table:
        query = self.table.search().select(columns).limit(None)
        if where:
            query = query.where(where)
        return query.to_arrow()

    def _as_ids(self, column) -> np.ndarray:
        if column.null_count:
            raise ValueError(
                f"column {self.id_column!r} of {self.description} holds null ids; "
                f"re-ranking needs an id for every row"
            )
        if self.id_kind == "int":
            return np.asarray(column.to_numpy(), dtype=np.int64)
        values = column.to_pylist()
        return np.array(values, dtype=str) if values else np.zeros(0, dtype=str)

    def ids(self, filter=None) -> np.ndarray:
        """Every id (of the rows ``filter`` keeps), sorted."""
        ids = np.sort(self._as_ids(self._scan([self.id_column], filter)[self.id_column]))
        repeated = ids[1:][ids[1:] == ids[:-1]]
        if repeated.size:
            raise ValueError(
                f"column {self.id_column!r} of {self.description} holds id {repeated[0]!r} "
                f"more than once; re-ranking needs unique ids"
            )
        return ids

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (the whole column is scanned)."""
        rows = self._scan([self.id_column, self.vector_column])
        column = rows[self.vector_column]
        stored_ids = self._as_ids(rows[self.id_column])
        positions, unknown = IdPositions(stored_ids)(np.asarray(ids))
        if unknown.any():
            raise ValueError(
                f"{self.description} holds no row with id {np.asarray(ids)[unknown][0]!r}"
            )
        if column.null_count:
            missing = stored_ids[np.asarray(column.is_null())]
            raise ValueError(
                f"the vectors of {self.description} cannot be read back: rows with ids "
                f"{missing[:5].tolist()} have a null {self.vector_column!r}; re-ranking "
                f"needs every row's vector"
            )
        flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = np.asarray(flat, dtype=np.float32).reshape(-1, self.dimension)
        return vectors[positions]

    def _query(self, vectors, k: int, filter):
        query = (
            self.table.search(vectors, vector_column_name=self.vector_column)
            .distance_type(self.lance_metric)
            .limit(k)
            .select([self.id_column, "_distance"])
        )
        if filter:
            query = query.where(filter, prefilter=True)
        for name, value in self.query_options.items():
            query = getattr(query, name)(value)
        return query

    def search(self, queries: np.ndarray, k: int, *, filter=None) -> SearchHits:
        parts = []
        for start in range(0, queries.shape[0], SEARCH_BATCH):
            batch = queries[start : start + SEARCH_BATCH]
            result = self._query(batch, k, filter).to_arrow()
            parts.append(self._grouped(result, batch.shape[0], k))
        return SearchHits(
            np.concatenate([p.distances for p in parts]),
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.found for p in parts]),
        )

    def _grouped(self, result: pa.Table, n: int, k: int) -> SearchHits:
        """LanceDB's flat result rows (``query_index`` for batches) as padded hits."""
        pa = _lancedb()[1]
        if "query_index" in result.column_names:
            query = result["query_index"].to_numpy().astype(np.int64)
        else:
            query = np.zeros(result.num_rows, dtype=np.int64)
        distance = result["_distance"].to_numpy(zero_copy_only=False)
        order = np.lexsort((distance, query))
        query, distance = query[order], distance[order].astype(np.float32)
        ids = self._as_ids(result[self.id_column].take(pa.array(order)))
        lengths = np.bincount(query, minlength=n)
        rank = np.arange(order.shape[0]) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        found = np.zeros((n, k), dtype=bool)
        found[query, rank] = True
        out_ids = np.full((n, k), "" if self.id_kind == "str" else -1, dtype=ids.dtype)
        out_ids[query, rank] = ids
        out_distances = np.full((n, k), np.inf, dtype=np.float32)
        out_distances[query, rank] = distance
        return SearchHits(out_distances, out_ids, found)


class RerankedTable:
    """A LanceDB table whose vector searches are GNN re-ranked (see the module doc).

    Args:
        table: a LanceDB table.
        vector_column: the vector column (default: the only fixed-size float list one).
        id_column: a column of unique int or string ids (default ``"id"``).
        metric: the distance type of the searches (default: the index's, else "cosine").
        k1, k2, iterations, lamb: as :func:`triton_rerank.gnn_rerank`.
        mode: ``"exact"`` or ``"inductive"``.
        shortlist: inductive mode's candidates per query (default ``max(10 * k, k1)``,
            at most the row count).
        shortlist_seeds: inductive mode without a filter: search only this many
            results (e.g. ``k``) and grow the shortlist from them through the graph's
            neighbour lists (``RerankedSearch``'s module doc); default: the whole
            shortlist from the search.
        on_change: inductive mode after the table's rows changed: ``"error"``
            (:class:`~triton_rerank.database.reranked_search.DatabaseChangedError`) or
            ``"rebuild"`` the graph within the next search.
        nprobes, refine_factor, ef: LanceDB query settings for the shortlists and the
            graph's neighbour lists.
    """

    def __init__(
        self,
        table,
        *,
        vector_column: str | None = None,
        id_column: str = "id",
        metric: str | None = None,
        k1: int = 26,
        k2: int = 7,
        iterations: int = 2,
        lamb: float = 0.3,
        mode: str = "exact",
        shortlist: int | None = None,
        shortlist_seeds: int | None = None,
        on_change: str = "error",
        nprobes: int | None = None,
        refine_factor: int | None = None,
        ef: int | None = None,
    ):
        self.backend = LanceTableBackend(
            table,
            vector_column=vector_column,
            id_column=id_column,
            metric=metric,
            nprobes=nprobes,
            refine_factor=refine_factor,
            ef=ef,
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
            unit_vectors_advice="store L2-normalised vectors, or search with metric='cosine'",
        )
        self.table = table
        self.mode = mode

    @property
    def graph(self) -> InductiveGraph | None:
        """The inductive graph in use (None until built or loaded)."""
        return self.reranking.graph

    def build_graph(self, *, row_budget: int = DEFAULT_ROW_BUDGET) -> InductiveGraph:
        """Build the inductive graph of the whole table: reads every vector, and searches
        each row's ``k1`` neighbours when the column has a vector index (without one the
        canonical kNN is computed locally)."""
        return self.reranking.build_graph(row_budget=row_budget)

    def save_graph(self, path) -> None:
        """Save the inductive graph (built first if needed), e.g. beside the database
        folder: ``photos.lance`` -> ``photos.graph.npz``."""
        self.reranking.save_graph(path)

    def load_graph(self, path) -> InductiveGraph:
        """Load a graph saved for this table, after checking the file in full and against
        the table (parameters, dimension, ids, fingerprint of the vectors)."""
        return self.reranking.load_graph(path)

    def verify_graph(self) -> None:
        """Compare the table, read in full, with the graph's fingerprint (raises
        :class:`~triton_rerank.database.reranked_search.DatabaseChangedError`)."""
        self.reranking.verify_graph()

    def invalidate(self) -> None:
        """Forget the cached state; the next search reads the table again."""
        self.reranking.invalidate()

    def _queries(self, query) -> tuple[np.ndarray, bool]:
        """``(unit rows [n, d], whether a single 1-D query was given)``."""
        if isinstance(query, (list, tuple)):
            query = np.asarray(query, dtype=np.float32)
        single = getattr(query, "ndim", 2) == 1
        return self.reranking.check_queries(query[None] if single else query)[0], single

    def _distances(self, scores: np.ndarray, found: np.ndarray) -> np.ndarray:
        """LanceDB's ``_distance`` of re-ranked scores (``+inf`` where not found)."""
        distance = 2.0 - 2.0 * scores if self.backend.metric == "l2" else 1.0 - scores
        return np.where(found, distance, np.inf).astype(np.float32)

    def search_arrays(self, queries, k: int, *, where: str | None = None):
        """Re-ranked search in FAISS's form: ``(D [n, k] float32, I [n, k])`` (see the
        module doc)."""
        unit, _ = self._queries(queries)
        hits = self.reranking.search(unit, k, filter=where)
        return self._distances(hits.scores, hits.found), hits.ids

    def search(self, query, k: int = 10, *, where: str | None = None, select=None) -> pa.Table:
        """Re-ranked ``table.search(query).where(where).select(select).limit(k)``.

        Args:
            query: one ``[d]`` vector, or ``[n, d]`` queries (numpy, torch, lists).
            k: results per query.
            where: a LanceDB SQL filter; results only from the rows it keeps.
            select: the columns returned (default: every column).

        Returns:
            A ``pyarrow.Table`` (see the module doc).
        """
        pa = _lancedb()[1]
        unit, single = self._queries(query)
        hits = self.reranking.search(unit, k, filter=where)
        columns = list(select) if select is not None else list(self.table.schema.names)
        rows, position = self._rows(hits.ids[hits.found], columns)
        query_index = np.nonzero(hits.found)[0]
        taken = [position[key] for key in hits.ids[hits.found].tolist()]
        table = (
            rows.take(pa.array(taken, type=pa.int64()))
            .append_column(
                "_distance", pa.array(self._distances(hits.scores, hits.found)[hits.found])
            )
            .append_column("_relevance_score", pa.array(hits.scores[hits.found]))
        )
        if not single:
            table = table.add_column(0, "query_index", pa.array(query_index.astype(np.int32)))
        return table

    def _rows(self, ids: np.ndarray, columns: list[str]) -> tuple[pa.Table, dict]:
        """``(the rows of ids, their columns, {id: row})``, read by id."""
        pa = _lancedb()[1]
        backend = self.backend
        wanted = list(dict.fromkeys([backend.id_column, *columns]))
        unique = list(dict.fromkeys(ids.tolist()))
        parts = [
            backend._scan(
                wanted,
                f"{_sql_name(backend.id_column)} IN ({_sql_values(unique[s : s + ID_BATCH])})",
            )
            for s in range(0, len(unique), ID_BATCH)
        ]
        rows = pa.concat_tables(parts) if parts else backend._scan(wanted, "false")
        position = {key: i for i, key in enumerate(rows[backend.id_column].to_pylist())}
        missing = [key for key in unique if key not in position]
        if missing:
            raise DatabaseChangedError(
                f"{backend.description} changed during the search: id {missing[0]!r} is no "
                f"longer there; search again"
            )
        return rows.select(columns), position

    def reranker(self, queries, k: int | None = None) -> ShortlistReranker:
        """A LanceDB re-ranker for ``table.search(queries)...rerank(reranker,
        query_string=...)``: it re-ranks the rows that query returned (which must include
        the id column) and keeps the best ``k`` per query (default: all, re-ordered).

        LanceDB's hook passes the re-ranker the results but not the query vectors, so
        they are given here; ``query_string`` is required by LanceDB for vector queries
        and is ignored.
        """
        return _hooked_reranker_class()(self, queries, k)


@functools.cache
def _hooked_reranker_class() -> type:
    """:class:`ShortlistReranker` as a ``lancedb.rerankers.Reranker`` subclass (made on
    first use: LanceDB is imported only then)."""
    lancedb, _ = _lancedb()
    return type("ShortlistReranker", (ShortlistReranker, lancedb.rerankers.Reranker), {})


class ShortlistReranker:
    """LanceDB's re-ranker hook, GNN re-ranking a vector query's results (made by
    :meth:`RerankedTable.reranker`, as a subclass of ``lancedb.rerankers.Reranker``).

    The results are those of the query the hook is attached to: their rows are re-ranked
    as a shortlist (exact mode: scored as ``gnn_rerank`` over the whole table does;
    inductive mode: against the table's graph) and the best ``k`` are kept, with
    ``_relevance_score`` (the re-ranked score) and ``_distance`` (LanceDB's convention)
    rewritten.
    """

    def __init__(self, reranked: RerankedTable, queries, k: int | None = None):
        super().__init__(return_score="relevance")  # lancedb.rerankers.Reranker's
        self.reranked = reranked
        self.queries, _ = reranked._queries(queries)
        self.k = k

    def rerank_vector(self, query, vector_results: pa.Table) -> pa.Table:
        """Re-rank LanceDB's vector search results (``query`` is LanceDB's query string,
        unused)."""
        pa = _lancedb()[1]
        backend = self.reranked.backend
        if backend.id_column not in vector_results.column_names:
            raise ValueError(
                f"the results to re-rank lack the id column {backend.id_column!r}: "
                f"include it in select()"
            )
        n = self.queries.shape[0]
        if "query_index" in vector_results.column_names:
            query_index = vector_results["query_index"].to_numpy().astype(np.int64)
        else:
            query_index = np.zeros(vector_results.num_rows, dtype=np.int64)
        if query_index.size and query_index.max() >= n:
            raise ValueError(
                f"the results hold {int(query_index.max()) + 1} queries but the re-ranker "
                f"was given {n}"
            )
        order = np.argsort(query_index, kind="stable")
        lengths = np.bincount(query_index, minlength=n)
        width = max(int(lengths.max(initial=0)), 1)
        ids = backend._as_ids(vector_results[backend.id_column].take(pa.array(order)))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        candidates = padded_hits(
            [np.zeros(m) for m in lengths],
            [ids[s : s + m].tolist() for s, m in zip(starts, lengths, strict=True)],
            lengths,
            width,
            fill_distance=np.inf,
        )
        k = width if self.k is None else self.k
        hits: RerankedHits = self.reranked.reranking.rerank_candidates(
            self.queries, candidates.ids, candidates.found, k
        )
        # each result's row in vector_results: candidate slot j of query q is row
        # order[starts[q] + j]
        slot_of = {}
        for q, (s, m) in enumerate(zip(starts, lengths, strict=True)):
            for j in range(m):
                slot_of[(q, ids[s + j].item())] = int(order[s + j])
        query_rows, ranks = np.nonzero(hits.found)
        rows = [slot_of[(q, hits.ids[q, r].item())] for q, r in zip(query_rows, ranks, strict=True)]
        table = vector_results.take(pa.array(rows, type=pa.int64()))
        distances = pa.array(self.reranked._distances(hits.scores, hits.found)[hits.found])
        if "_distance" in table.column_names:
            table = table.set_column(table.column_names.index("_distance"), "_distance", distances)
        return table.append_column("_relevance_score", pa.array(hits.scores[hits.found]))

    def rerank_hybrid(self, query, vector_results, fts_results):
        raise NotImplementedError(
            "ShortlistReranker re-ranks vector search results only (it needs the query "
            "vectors and the table's graph), not hybrid searches"
        )
