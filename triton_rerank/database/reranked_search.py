"""Re-ranked search over any search backend: the exact and inductive modes, one code path.

:class:`RerankedSearch` wraps a :class:`~triton_rerank.database.search_backend.SearchBackend`
(a FAISS index, a Milvus collection, a LanceDB table) and answers searches with GNN
re-ranked results; the adapters in ``triton_rerank.integrations`` only convert their
store's inputs and outputs.

* ``mode="exact"``: each search batch joins the database graph transductively, so the
  results equal ``gnn_rerank(queries, stored vectors, topk=k)``. The database's own kNN
  lists (canonical, ``cpu/knn.py`` ``knn_graph``) are computed once per version of the
  data and cached (:mod:`triton_rerank.database.transductive`).
* ``mode="inductive"``: the database graph is built once
  (:meth:`RerankedSearch.build_graph`: neighbour lists from the backend's own search, or
  the canonical kNN when that search is exhaustive) and can be saved and loaded with
  its integrity checks (:mod:`triton_rerank.database.graph_file`); each query is
  re-ranked against its shortlist from the backend's search
  (:mod:`triton_rerank.database.inductive`).

Inductive shortlists: by default each query's ``shortlist`` candidates are the top
``shortlist`` of the backend's search. With ``shortlist_seeds=s`` the backend is asked
for its top ``s`` only (the *seeds*, e.g. ``s = k``: the plain search itself), and the
shortlist is grown from them through the frozen graph: the ``shortlist`` rows most
similar to the query in a pool of the seeds and their ``k1``-nearest-neighbour lists,
grown further while it holds fewer than ``shortlist`` rows by the lists of the last
level's rows, most similar first (so the shortlist holds ``shortlist`` rows unless
the graph around the seeds is smaller), their similarities computed from the
graph's own copy of the unit vectors (no extra memory, no vectors read from the
store). Results then differ from those of the default (another shortlist: it misses
the rows of the search's top ``shortlist`` that no seed lists, and may hold rows the
search missed), but the re-ranking of the grown shortlist is the same as of any given
one (:meth:`InductiveGraph.rerank_grown
<triton_rerank.database.inductive.InductiveGraph.rerank_grown>`). Stores whose search
cost grows with the result count (Milvus, an IVF index's heap at k = 1,000) search
``s`` results instead of ``shortlist``. With a filter the graph cannot tell which rows
the filter keeps, so filtered searches take their shortlist from the search as by
default (``shortlist_seeds`` is not used).

Similarity is cosine: stored vectors and queries are L2-normalised. Positions (rows of
the database) follow the backend's :meth:`~triton_rerank.database.search_backend.SearchBackend.ids`
order; graph files record the ids as int64 codes (:func:`id_codes`).

Filters (the store's own expression): candidates only come from the rows the filter
keeps, while the graph is that of the whole store. Exact mode scores every row and keeps
the best ``k`` of the filtered rows; inductive mode re-ranks the filtered shortlist (its
neighbourhood still reaches the whole graph) and keeps the best ``k`` of it.

Changes: the backend's :meth:`~triton_rerank.database.search_backend.SearchBackend.version`
is read before every search, and search results holding ids unknown to the cached
state also count as a change. Exact mode then re-reads the data; inductive mode
rebuilds the graph (``on_change="rebuild"``) or raises :class:`DatabaseChangedError`
(``on_change="error"``). A stale graph is never used.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Hashable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..checks import check_int, check_rerank_params, check_unit_interval, check_unit_rows
from ..cpu.knn import knn_graph
from ..topk import topk_rows
from .graph_file import database_fingerprint
from .inductive import DEFAULT_ROW_BUDGET, InductiveGraph
from .search_backend import METRICS, SearchBackend, SearchHits
from .transductive import rerank_against_database

MODES = ("exact", "inductive")
ON_CHANGE = ("rebuild", "error")
METRIC_NAMES = {"ip": "inner product", "cosine": "cosine", "l2": "L2"}

# Database rows searched at a time while building the inductive graph (Milvus accepts
# at most 16384 queries per search).
GRAPH_SEARCH_BATCH = 16384

# How far a stored vector's norm may be from 1 before the inductive graph warns that an
# inner-product or L2 search does not rank by cosine.
_UNIT_NORM_TOLERANCE = 1e-3


class UnnormalisedVectorsWarning(UserWarning):
    """The store holds vectors that are not unit-norm and searches them by inner product
    or L2, so its own search (the inductive mode's shortlist) does not rank by cosine
    similarity."""


class DatabaseChangedError(ValueError):
    """The store's data changed (rows inserted or deleted) since the inductive graph was
    built or loaded; rebuild it (``build_graph``) or pass ``on_change="rebuild"``."""


def id_codes(ids: np.ndarray) -> np.ndarray:
    """``[g]`` int64 codes of ids, as graph files record them: integer ids themselves,
    string ids the first 8 bytes of the blake2b digest of their UTF-8 text.

    Raises:
        ValueError: two different string ids share a code (never seen in practice:
            about 1 chance in 10^19 for a million ids), or ids of another kind.
    """
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64)
    if ids.dtype.kind != "U":
        raise ValueError(f"ids must be integers or strings, got dtype {ids.dtype}")
    digests = b"".join(hashlib.blake2b(str(text).encode(), digest_size=8).digest() for text in ids)
    codes = np.frombuffer(digests, dtype="<i8").astype(np.int64)
    if np.unique(codes).size != np.unique(ids).size:
        raise ValueError("two string ids share a 64-bit code; graph files cannot tell them apart")
    return codes


def _padding(ids: np.ndarray):
    """The id written where a result is missing: -1 for integer ids, "" for strings."""
    return "" if ids.dtype.kind == "U" else -1


def _possessive(description: str, noun: str = "") -> str:
    """``"the index's stored vectors"``, ``"the stored vectors of collection 'photos'"``;
    without a noun ``"the index's"``, ``"that of collection 'photos'"``."""
    if description.endswith("'"):  # a quoted name takes no "'s"
        return f"the {noun} of {description}" if noun else f"that of {description}"
    return f"{description}'s {noun}" if noun else f"{description}'s"


class IdPositions:
    """Maps ids to database positions (the rows of the vectors read back).

    Args:
        ids: ``[g]`` the id of each position (int64 or ``str``).
    """

    def __init__(self, ids: np.ndarray):
        self.ids = ids
        self.identity = ids.dtype.kind in "iu" and bool(
            np.array_equal(ids, np.arange(ids.shape[0]))
        )
        if not self.identity:
            self.order = np.argsort(ids, kind="stable")
            self.sorted_ids = ids[self.order]

    def __call__(self, ids: np.ndarray, found: np.ndarray | None = None):
        """``[n, k]`` ids (``found`` marks the real ones; default: all) -> ``(positions
        [n, k] int64 with -1 where not found, unknown [n, k] bool: found ids that no
        position holds)``."""
        if found is None:
            found = np.ones(ids.shape, dtype=bool)
        if self.identity:
            ids = ids.astype(np.int64)
            known = (ids >= 0) & (ids < self.ids.shape[0])
        else:
            slot = np.clip(np.searchsorted(self.sorted_ids, ids), 0, self.ids.shape[0] - 1)
            known = self.sorted_ids[slot] == ids
            ids = self.order[slot]
        return np.where(found & known, ids, -1), found & ~known


@dataclass(frozen=True)
class _Snapshot:
    """The stored data as read at one version."""

    version: Hashable
    ids: np.ndarray  # [g] int64 or str
    positions: IdPositions
    stored: np.ndarray  # [g, d] float32, as stored
    unit: np.ndarray  # [g, d] float32 canonical unit rows


class ExactDatabase(NamedTuple):
    """Exact mode's cache: ``vectors [g, d]`` float32 CPU tensor of unit rows, ``ids
    [g]``, and the database's canonical top-``min(k1, g)`` lists, ``knn_values [g, k]``
    float32 and ``knn_indices [g, k]`` int64 positions."""

    vectors: torch.Tensor
    ids: np.ndarray
    knn_values: np.ndarray
    knn_indices: np.ndarray


@dataclass(frozen=True)
class RerankedHits:
    """Re-ranked results, padded to ``k`` per query.

    Attributes:
        scores: ``[n, k]`` float32 re-ranked scores (higher is better), ``-inf`` where
            ``found`` is False.
        ids: ``[n, k]`` the backend's ids (-1, or ``""`` for string ids, where not found).
        found: ``[n, k]`` bool; each row's results come first, best first.
        positions: ``[n, k]`` int64 database positions (-1 where not found).
    """

    scores: np.ndarray
    ids: np.ndarray
    found: np.ndarray
    positions: np.ndarray


class _Changed(Exception):
    """Raised inside a search when results show that the data changed."""


class RerankedSearch:
    """GNN re-ranked search over a :class:`SearchBackend` (see the module doc).

    Args:
        backend: the store.
        k1, k2, iterations, lamb: as :func:`triton_rerank.gnn_rerank`.
        mode: ``"exact"`` or ``"inductive"``.
        shortlist: inductive mode's candidates per query from the backend's search
            (default ``max(10 * k, k1)``, at most the number of rows).
        shortlist_seeds: inductive mode without a filter: take only this many results
            from the backend's search and grow the shortlist from them through the
            graph (see the module doc); None (default): the whole shortlist from the
            search.
        on_change: what inductive mode does when the data changed since its graph was
            built or loaded: ``"rebuild"`` the graph, or raise ``"error"``
            (:class:`DatabaseChangedError`). Exact mode always re-reads the data.
        unit_vectors_advice: the end of :class:`UnnormalisedVectorsWarning`'s message,
            how to store unit vectors in this store.
    """

    def __init__(
        self,
        backend: SearchBackend,
        *,
        k1: int = 26,
        k2: int = 7,
        iterations: int = 2,
        lamb: float = 0.3,
        mode: str = "exact",
        shortlist: int | None = None,
        shortlist_seeds: int | None = None,
        on_change: str = "rebuild",
        unit_vectors_advice: str = "store L2-normalised vectors instead",
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if on_change not in ON_CHANGE:
            raise ValueError(f"on_change must be one of {ON_CHANGE}, got {on_change!r}")
        if backend.metric not in METRICS:
            raise ValueError(
                f"{backend.description} reports metric {backend.metric!r}; re-ranking "
                f"needs one of {METRICS}"
            )
        self.k1 = check_int(k1, "k1", minimum=1)
        self.k2 = check_int(
            k2, "k2", minimum=1, maximum=self.k1, maximum_reason="k2 must not exceed k1"
        )
        self.iterations = check_int(iterations, "iterations", minimum=0)
        self.lamb = check_unit_interval(lamb, "lamb")
        self.shortlist = None if shortlist is None else check_int(shortlist, "shortlist", minimum=1)
        self.shortlist_seeds = (
            None
            if shortlist_seeds is None
            else check_int(shortlist_seeds, "shortlist_seeds", minimum=1)
        )
        self.backend = backend
        self.mode = mode
        self.on_change = on_change
        self.unit_vectors_advice = unit_vectors_advice
        self._exact = None  # (version, positions, ExactDatabase)
        self._graph = None  # (version, positions, InductiveGraph)
        self._counted = (None, 0)  # (version, count): the count of the last version seen

    # -- state ---------------------------------------------------------------------------

    @property
    def graph(self) -> InductiveGraph | None:
        """The inductive graph in use (None until built or loaded)."""
        return None if self._graph is None else self._graph[2]

    def invalidate(self) -> None:
        """Forget the cached database state (exact mode's lists, the inductive graph);
        the next search reads the data again and rebuilds what it needs."""
        self._exact = None
        self._graph = None
        self._counted = (None, 0)

    def _current(self, *, graph_in_use: bool = True):
        """``(version, count)`` of the data now; drops the cached state of older versions.

        Raises:
            ValueError: the store is empty.
            DatabaseChangedError: the graph belongs to another version, ``graph_in_use``
                and ``on_change="error"``.
        """
        version = self.backend.version()
        if self._counted[0] is None or self._counted[0] != version:
            self._counted = (version, self.backend.count())
        count = self._counted[1]
        if count == 0:
            raise ValueError(f"{self.backend.description} is empty: add vectors before searching")
        if self._exact is not None and self._exact[0] != version:
            self._exact = None
        if self._graph is not None and self._graph[0] != version:
            if self._same_data(self._graph[2], count):  # e.g. a compaction, an index built
                self._graph = (version, *self._graph[1:])
                return version, count
            if graph_in_use and self.on_change == "error":
                raise DatabaseChangedError(
                    f"{self.backend.description} changed since the inductive graph was "
                    f"built or loaded (rows inserted, deleted or replaced: version "
                    f"{self._graph[0]!r}, now {version!r}); rebuild the graph with "
                    f"build_graph(), or pass on_change='rebuild'"
                )
            self._graph = None
        return version, count

    def _changed_during_search(self, what: str) -> None:
        """Search results named ids the cached state does not hold."""
        if self.mode == "inductive" and self.on_change == "error":
            raise DatabaseChangedError(
                f"{self.backend.description} changed since the inductive graph was built "
                f"or loaded: {what} ids that the graph does not hold (rows were "
                f"inserted); rebuild the graph with build_graph(), or pass "
                f"on_change='rebuild'"
            )
        raise _Changed

    def _read(self, version: Hashable, *, warn_unnormalised: bool = False) -> _Snapshot:
        """Every stored row's id and vector, and the vectors' canonical unit rows."""
        backend = self.backend
        ids = np.asarray(backend.ids())
        stored = np.ascontiguousarray(backend.fetch(ids), dtype=np.float32)
        if stored.shape != (ids.shape[0], backend.dimension):
            raise ValueError(
                f"{backend.description} returned vectors of shape {stored.shape} for "
                f"{ids.shape[0]} ids of dimension {backend.dimension}"
            )
        empty = ~(stored != 0).any(axis=1)
        if empty.any():
            raise ValueError(
                f"{backend.description} holds {int(empty.sum())} all-zero vector(s) (ids "
                f"{ids[empty][:5].tolist()}; null vectors read back as zeros?): re-ranking "
                f"compares vectors by cosine and needs a direction for each"
            )
        name = _possessive(backend.description, "stored vectors")
        unit = check_unit_rows(stored, name, backend.dimension)[0]
        if warn_unnormalised and backend.metric in ("ip", "l2"):
            norms = np.linalg.norm(stored, axis=1)
            if np.abs(norms - 1).max() > _UNIT_NORM_TOLERANCE:
                warnings.warn(
                    f"{backend.description} stores vectors that are not unit-norm (norms "
                    f"{norms.min():.3g} to {norms.max():.3g}): its "
                    f"{METRIC_NAMES[backend.metric]} search does not rank by cosine "
                    f"similarity, so the inductive shortlists miss cosine neighbours; "
                    f"{self.unit_vectors_advice}",
                    UnnormalisedVectorsWarning,
                    stacklevel=4,
                )
        return _Snapshot(version, ids, IdPositions(ids), stored, unit)

    # -- exact mode ----------------------------------------------------------------------

    def exact_database(self) -> ExactDatabase:
        """Exact mode's cached database (read and computed on first use, and again after
        the data changed)."""
        return self._exact_for(self._current(graph_in_use=False)[0])

    def _exact_for(self, version: Hashable) -> ExactDatabase:
        if self._exact is None:
            snapshot = self._read(version)
            values, indices, _ = knn_graph(
                torch.from_numpy(snapshot.unit), min(self.k1, snapshot.unit.shape[0])
            )
            database = ExactDatabase(torch.from_numpy(snapshot.unit), snapshot.ids, values, indices)
            self._exact = (version, snapshot.positions, database)
        return self._exact[2]

    def _search_exact(self, queries: np.ndarray, k: int, filter, version) -> RerankedHits:
        database = self._exact_for(version)
        if filter is None:
            scores, positions = rerank_against_database(
                torch.from_numpy(queries),
                database.vectors,
                database.knn_values,
                database.knn_indices,
                **self._exact_params(queries.shape[0], database, k),
                topk=k,
            )
            positions = positions.numpy()
            found = np.ones(positions.shape, dtype=bool)
            return self._hits(scores.numpy(), positions, found, database.ids)
        allowed, unknown = self._exact[1](np.asarray(self.backend.ids(filter))[None])
        if unknown.any():
            self._changed_during_search("the filter kept")
        return self._exact_within(database, queries, allowed, k)

    def _exact_params(self, n_query: int, database: ExactDatabase, k: int) -> dict:
        n_db = database.vectors.shape[0]
        k1, k2, iterations, lamb, _ = check_rerank_params(
            k1=self.k1,
            k2=self.k2,
            iterations=self.iterations,
            lamb=self.lamb,
            topk=k,
            n_nodes=n_query + n_db,
            n_gallery=n_db,
        )
        return dict(k1=k1, k2=k2, iterations=iterations, lamb=lamb)

    def _exact_within(
        self, database: ExactDatabase, queries: np.ndarray, allowed: np.ndarray, k: int
    ) -> RerankedHits:
        """Exact scores of every row (``gnn_rerank`` over the whole database), then the
        best ``k`` of each query's ``allowed`` positions (``[n or 1, m]``, -1 = none)."""
        n_query, n_db = queries.shape[0], database.vectors.shape[0]
        every = rerank_against_database(
            torch.from_numpy(queries),
            database.vectors,
            database.knn_values,
            database.knn_indices,
            **self._exact_params(n_query, database, min(k, n_db)),
            topk=None,
        )
        allowed = np.broadcast_to(allowed, (n_query, allowed.shape[1]))
        keep = np.zeros((n_query, n_db + 1), dtype=bool)  # column n_db catches the -1s
        keep[np.arange(n_query)[:, None], np.where(allowed >= 0, allowed, n_db)] = True
        every[torch.from_numpy(~keep[:, :n_db])] = -torch.inf
        scores, positions = (t.numpy() for t in topk_rows(every, min(k, n_db)))
        found = np.isfinite(scores)
        return self._hits(*_pad(scores, positions, found, k), database.ids)

    # -- inductive mode ------------------------------------------------------------------

    def build_graph(
        self,
        neighbour_backend: SearchBackend | None = None,
        *,
        row_budget: int = DEFAULT_ROW_BUDGET,
    ) -> InductiveGraph:
        """Build (and keep) the inductive mode's database graph.

        Args:
            neighbour_backend: the store whose search finds each row's ``k1`` neighbours
                (approximate allowed); it must hold the same rows under the same ids.
                Default: the backend. An exhaustive one (``exact``) is not searched: the
                lists are then the canonical kNN (``cpu/knn.py`` ``knn_graph``), the same
                as exact mode's.
            row_budget: entries kept per propagated row (see ``InductiveGraph.build``).

        Returns:
            The graph (also used by searches).
        """
        version, count = self._current(graph_in_use=False)
        check_int(
            self.k1,
            "k1",
            minimum=1,
            maximum=count,
            maximum_reason=f"{self.backend.description} holds {count} vectors",
        )
        row_budget = check_int(row_budget, "row_budget", minimum=1)
        snapshot = self._read(version, warn_unnormalised=True)
        codes = id_codes(snapshot.ids)
        searcher = self.backend if neighbour_backend is None else neighbour_backend
        if searcher.exact:
            neighbours = knn_graph(torch.from_numpy(snapshot.unit), self.k1)[1]
        else:
            neighbours = np.empty((count, self.k1), dtype=np.int64)
            for start in range(0, count, GRAPH_SEARCH_BATCH):
                stop = min(count, start + GRAPH_SEARCH_BATCH)
                hits = searcher.search(snapshot.unit[start:stop], self.k1)
                positions, unknown = snapshot.positions(hits.ids, hits.found)
                if unknown.any():
                    raise ValueError(
                        f"the neighbour search of {searcher.description} returned ids that "
                        f"{self.backend.description} does not hold (e.g. "
                        f"{hits.ids[unknown][0]!r}): it must hold the same rows under the "
                        f"same ids"
                    )
                neighbours[start:stop] = positions
        # the fingerprint of the data as stored: load_graph refuses a file built for another
        graph = InductiveGraph.build(
            snapshot.unit,
            neighbours,
            k2=self.k2,
            iterations=self.iterations,
            row_budget=row_budget,
            ids=codes,
            fingerprint=database_fingerprint(snapshot.stored, codes),
        )
        self._graph = (version, snapshot.positions, graph)
        return graph

    def save_graph(self, path) -> None:
        """Save the inductive graph (built first if needed) to ``path``."""
        self._current()
        if self._graph is None:
            self.build_graph()
        self.graph.save(path)

    def load_graph(self, path) -> InductiveGraph:
        """Load a graph saved by :meth:`save_graph` for this data.

        The file is validated in full (:meth:`InductiveGraph.load
        <triton_rerank.database.inductive.InductiveGraph.load>`), then checked against the
        store: the parameters, the dimension, the size and ids, and the fingerprint of
        the stored vectors recorded when the graph was built.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a graph file, damaged or edited, built with other
                ``k1``/``k2``/``iterations``, or for other data (dimension, size, ids or
                stored vectors differ): the message names the file.
        """
        graph = InductiveGraph.load(path)
        built = (graph.k1, graph.k2, graph.iterations)
        if built != (self.k1, self.k2, self.iterations):
            raise ValueError(
                f"{path} was built with (k1, k2, iterations) = {built}, but this "
                f"re-ranking uses {(self.k1, self.k2, self.iterations)}"
            )
        description, dimension = self.backend.description, self.backend.dimension
        if graph.vectors.shape[1] != dimension:
            raise ValueError(
                f"{path} was built for another database: its vectors have dimension "
                f"{graph.vectors.shape[1]}, {_possessive(description)} {dimension}; "
                f"rebuild the graph"
            )
        version, count = self._current(graph_in_use=False)
        ids = self._matching_ids(graph, path, count)
        self._graph = (version, IdPositions(ids), graph)
        return graph

    def _same_data(self, graph: InductiveGraph, count: int) -> bool:
        """Whether the store, under a new version with as many rows, still holds the data
        the graph was built from (read in full and fingerprinted)."""
        if graph.size != count or graph.fingerprint is None:
            return False
        try:
            self._matching_ids(graph, "the inductive graph", count)
        except ValueError:
            return False
        return True

    def _matching_ids(self, graph: InductiveGraph, path, count: int) -> np.ndarray:
        """The store's ids, after checking that ``graph`` was built for its data now.

        Raises:
            ValueError: the size, the ids or the stored vectors differ, or the graph
                records no fingerprint (the message names ``path``).
        """
        description = self.backend.description
        ids = np.asarray(self.backend.ids())
        codes = id_codes(ids)
        if graph.size != count or not np.array_equal(graph.ids, codes):
            raise ValueError(
                f"{path} was built for another database ({graph.size} vectors; "
                f"{description} holds {count} or different ids)"
            )
        if graph.fingerprint is None:
            raise ValueError(
                f"{path} records no fingerprint of the database it was built for, so it "
                f"cannot be checked against {description}; rebuild the graph with "
                f"build_graph"
            )
        if graph.fingerprint != database_fingerprint(self.backend.fetch(ids), codes):
            raise ValueError(
                f"{path} was built for another database: {description} holds as many "
                f"vectors under the same ids, but they differ from those the graph was "
                f"built from (re-extracted features?); rebuild the graph"
            )
        return ids

    def verify_graph(self) -> None:
        """Compare the store, read in full, with the fingerprint of the graph in use:
        catches what :meth:`SearchBackend.version
        <triton_rerank.database.search_backend.SearchBackend.version>` cannot (vectors
        replaced under the same ids, as many rows deleted as inserted).

        Raises:
            ValueError: no graph is in use.
            DatabaseChangedError: the data differs from what the graph was built from
                (the graph is dropped; rebuild it with :meth:`build_graph`).
        """
        if self._graph is None:
            raise ValueError("no inductive graph to verify: build or load one first")
        graph = self._graph[2]
        try:
            self._matching_ids(graph, "the inductive graph", self.backend.count())
        except ValueError as error:
            self._graph = None
            raise DatabaseChangedError(
                f"{self.backend.description} changed since the inductive graph was built "
                f"or loaded ({error}); rebuild it with build_graph()"
            ) from None

    def _search_inductive(self, queries: np.ndarray, k: int, count: int, filter) -> RerankedHits:
        if self._graph is None:
            self.build_graph()
        _, positions_of, graph = self._graph
        shortlist = self.shortlist if self.shortlist is not None else max(10 * k, self.k1)
        shortlist = min(shortlist, count)
        if shortlist < k:
            raise ValueError(
                f"shortlist={shortlist} is smaller than k={k}: the re-ranked results come "
                f"from the shortlist"
            )
        grown = filter is None and self.shortlist_seeds is not None
        searched = min(self.shortlist_seeds, count) if grown else shortlist
        hits = self.backend.search(queries, searched, filter=filter)
        candidates, unknown = positions_of(hits.ids, hits.found)
        if unknown.any():
            self._changed_during_search("its search returned")
        if grown:
            scores, positions = graph.rerank_grown(queries, candidates, k, self.lamb, shortlist)
            return self._hits(scores, positions, positions >= 0, positions_of.ids)
        if filter is None:
            scores, positions = graph.rerank(queries, candidates, k, self.lamb)
            return self._hits(scores, positions, positions >= 0, positions_of.ids)
        return self._hits(*self._rerank_within(graph, queries, candidates, k), positions_of.ids)

    def _rerank_within(self, graph: InductiveGraph, queries, candidates, k: int):
        """Re-rank each query's candidates (its neighbourhood reaching the whole graph)
        and keep the best ``k`` of the candidates themselves."""
        n, width = candidates.shape
        # every node a query can score: its shortlist and the kNN lists of its k1 - 1
        # nearest shortlisted items (database/inductive.py)
        reach = min(graph.size, width + (self.k1 - 1) * self.k1)
        scores, positions = graph.rerank(queries, candidates, reach, self.lamb)
        row = np.arange(n, dtype=np.int64)[:, None] * (graph.size + 1)
        keep = (positions >= 0) & np.isin(
            row + positions, np.where(candidates >= 0, row + candidates, -1)
        )
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        found = np.take_along_axis(keep, order, 1)
        scores = np.take_along_axis(scores, order, 1)
        return _pad(scores, np.take_along_axis(positions, order, 1), found, k)

    # -- search --------------------------------------------------------------------------

    def check_queries(self, x):
        """``(unit rows [n, d] float32, array type, device)`` of queries ``x`` (as
        :func:`triton_rerank.checks.check_unit_rows`), the dimension checked against the
        backend's first, with a message naming it."""
        shape = getattr(x, "shape", None)
        dimension = self.backend.dimension
        if shape is not None and len(shape) == 2 and shape[1] != dimension:
            raise ValueError(
                f"queries has dimension {shape[1]} but {self.backend.description} has "
                f"dimension {dimension}"
            )
        return check_unit_rows(x, "queries", dimension)

    def search(self, queries: np.ndarray, k: int, *, filter=None) -> RerankedHits:
        """The ``k`` best stored rows for each query, after re-ranking.

        Args:
            queries: ``[n, d]`` float32 unit rows (:meth:`check_queries`).
            k: results per query, ``1 <= k <= count``.
            filter: the store's own filter expression: results only from the rows it
                keeps (see the module doc), or None.

        Raises:
            ValueError: an empty store, ``k`` out of range, a shortlist smaller than ``k``,
                vectors that cannot be read back.
            DatabaseChangedError: inductive mode with ``on_change="error"`` after rows
                were inserted or deleted.
        """
        for attempt in range(2):
            version, count = self._current(graph_in_use=self.mode == "inductive")
            k = check_int(
                k,
                "k",
                minimum=1,
                maximum=count,
                maximum_reason=f"{self.backend.description} holds {count} vectors",
            )
            try:
                if self.mode == "exact":
                    return self._search_exact(queries, k, filter, version)
                return self._search_inductive(queries, k, count, filter)
            except _Changed:
                if attempt:
                    raise ValueError(
                        f"{self.backend.description} keeps changing: its searches name ids "
                        f"that its rows, read just before, do not hold"
                    ) from None
                self.invalidate()
        raise AssertionError("unreachable")

    def rerank_candidates(
        self, queries: np.ndarray, ids: np.ndarray, found: np.ndarray, k: int
    ) -> RerankedHits:
        """Re-rank given candidates (e.g. the rows a store's own search returned) and keep
        the best ``k`` of them: exact mode scores them as ``gnn_rerank`` over the whole
        database does; inductive mode re-ranks them as a shortlist (their neighbourhood
        reaching the whole graph).

        Args:
            queries: ``[n, d]`` float32 unit rows.
            ids: ``[n, L]`` the candidates' ids; ``found``: ``[n, L]`` bool, the real ones.
            k: results per query (fewer where a query has fewer candidates).
        """
        for attempt in range(2):
            version, count = self._current(graph_in_use=self.mode == "inductive")
            k = check_int(k, "k", minimum=1)
            try:
                if self.mode == "exact":
                    database = self._exact_for(version)
                    candidates, unknown = self._exact[1](ids, found)
                    if unknown.any():
                        self._changed_during_search("the candidates hold")
                    return self._exact_within(database, queries, candidates, k)
                if self._graph is None:
                    self.build_graph()
                _, positions_of, graph = self._graph
                candidates, unknown = positions_of(ids, found)
                if unknown.any():
                    self._changed_during_search("the candidates hold")
                return self._hits(
                    *self._rerank_within(graph, queries, candidates, k), positions_of.ids
                )
            except _Changed:
                if attempt:
                    raise ValueError(
                        f"{self.backend.description} keeps changing: the candidates name "
                        f"ids that its rows, read just before, do not hold"
                    ) from None
                self.invalidate()
        raise AssertionError("unreachable")

    @staticmethod
    def _hits(scores, positions, found, ids) -> RerankedHits:
        found = found & (positions >= 0)
        labels = np.where(found, ids[np.maximum(positions, 0)], _padding(ids))
        scores = np.where(found, scores, -np.inf).astype(np.float32)
        return RerankedHits(scores, labels, np.ascontiguousarray(found), positions)


def _pad(scores, positions, found, k: int):
    """``(scores, positions, found)`` of ``[n, <= k]`` results, padded to ``[n, k]``."""
    pad = ((0, 0), (0, k - scores.shape[1]))
    return (
        np.pad(np.where(found, scores, -np.inf), pad, constant_values=-np.inf).astype(np.float32),
        np.pad(np.where(found, positions, -1), pad, constant_values=-1),
        np.pad(found, pad, constant_values=False),
    )


def padded_hits(distances, ids, lengths, k: int, *, fill_distance: float) -> SearchHits:
    """:class:`SearchHits` from per-query result lists of varying length.

    Args:
        distances: per query, its result distances (any sequence of floats).
        ids: per query, its result ids (ints or strings), as many as its distances.
        lengths: ``[n]`` the number of results of each query (at most ``k``).
        k: the width to pad to.
        fill_distance: the distance written where a result is missing.
    """
    n = len(lengths)
    found = np.arange(k)[None, :] < np.asarray(lengths)[:, None]
    flat_ids = [i for row in ids for i in row]
    is_text = bool(flat_ids) and isinstance(flat_ids[0], str)
    out_ids = np.full((n, k), "" if is_text else -1, dtype=object if is_text else np.int64)
    out_distances = np.full((n, k), fill_distance, dtype=np.float32)
    if flat_ids:
        out_ids[found] = flat_ids
        out_distances[found] = np.asarray([d for row in distances for d in row], np.float32)
    if is_text:
        out_ids = out_ids.astype(str)
    return SearchHits(out_distances, out_ids, found)
