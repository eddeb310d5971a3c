"""FAISS adapter: ``RerankedIndex`` re-ranks a FAISS index's search results.

Wrap a populated index (flat, IVF, HNSW, PQ, GPU, ``IndexShards``, ``IndexIDMap``...)
and call ``search`` as on the index itself::

    index = faiss.IndexFlatIP(d); index.add(xb)
    reranked = RerankedIndex(index, k1=26, k2=7)
    D, I = reranked.search(xq, 10)            # like index.search(xq, 10)

Conventions (FAISS's): ``D`` float32 ``[n, k]`` and ``I`` int64 ``[n, k]``, the ids
of the index (``IndexIDMap`` ids are preserved), -1 where fewer than k results exist
(``D`` is then ``-inf`` for inner-product indexes, ``+inf`` for L2 ones). numpy in,
numpy out; torch in, torch out on the input's device (like
``faiss.contrib.torch_utils``).

Similarity: GNN re-ranking works on cosine similarities. Query and database
vectors are L2-normalised (unnormalised vectors are normalised, zero vectors are an
error). For an inner-product index ``D`` is the re-ranked score (higher is better);
for an L2 index ``D`` is ``2 - 2 * score`` (lower is better), which is the squared
L2 distance between unit vectors when ``lamb=1``.

Modes:

* ``mode="exact"``: each search batch joins the database graph transductively,
  so ``search(xq, k)`` equals ``gnn_rerank(xq, xb, topk=k)`` on the index's
  vectors (read back with ``reconstruct``). The database's own kNN lists are
  computed once (the canonical, certified kNN of ``cpu/knn.py``) and cached; they are rebuilt after
  ``add``/``add_with_ids``/``remove_ids``/``reset`` through this wrapper, or when
  ``ntotal`` changes (call :meth:`RerankedIndex.invalidate` after changing the
  wrapped index in place in a way that keeps ``ntotal``).
* ``mode="inductive"``: for large databases. The database graph is built once
  (:meth:`RerankedIndex.build_graph`, with any FAISS index, approximate allowed),
  can be saved and loaded, and each query is re-ranked against its shortlist
  (``shortlist`` candidates from the index, default ``max(10 * k, k1)``, plus the
  kNN lists of the query's nearest candidates) using only its own neighbourhood: the
  cost per query does not grow with the database. See :mod:`triton_rerank.database.inductive`
  for the approximation. The shortlist (and, by
  default, the graph's neighbour lists) come from the index's own search, so store
  unit vectors (``faiss.normalize_L2``) to make its neighbours the cosine ones;
  building the graph over other vectors warns (``UnnormalisedVectorsWarning``).
  With ``shortlist_seeds=s`` the index is searched for ``s`` results only and the
  shortlist is grown from them through the graph's neighbour lists (another shortlist,
  so other results; see :mod:`triton_rerank.database.reranked_search`): an IVF search
  for 100 results costs far less than one for 1,000.

Both modes run on :class:`~triton_rerank.database.reranked_search.RerankedSearch`, the code
path the Milvus and LanceDB adapters share; :class:`FaissBackend` is the FAISS
implementation of its :class:`~triton_rerank.database.search_backend.SearchBackend`
protocol.
"""

from __future__ import annotations

import numpy as np
import torch

try:
    import faiss
except ImportError as error:  # pragma: no cover - exercised only without faiss
    raise ImportError(
        "triton_rerank.integrations.faiss needs FAISS: pip install "
        "'triton-rerank[faiss]' (or faiss-gpu on CUDA machines)"
    ) from error

from triton_rerank.checks import check_int, check_unit_rows
from triton_rerank.database.inductive import DEFAULT_ROW_BUDGET, InductiveGraph
from triton_rerank.database.reranked_search import (
    MODES,
    ExactDatabase,
    IdPositions,
    RerankedSearch,
    UnnormalisedVectorsWarning,  # noqa: F401 (re-exported: the inductive graph warns)
)
from triton_rerank.database.search_backend import SearchHits
from triton_rerank.rerank import canonical_backend_name

METRICS = {faiss.METRIC_INNER_PRODUCT: "inner product", faiss.METRIC_L2: "L2"}
_BACKEND_METRICS = {faiss.METRIC_INNER_PRODUCT: "ip", faiss.METRIC_L2: "l2"}


def _concrete(index):
    """The index as its most derived FAISS class (``IndexIDMap``, ``IndexShards``...)."""
    return faiss.downcast_index(index)


def _is_gpu_index(index) -> bool:
    return type(index).__name__.startswith("Gpu")


def _children(index):
    """Sub-indexes of an ``IndexShards`` (all) or ``IndexReplicas`` (one copy)."""
    if isinstance(index, faiss.IndexShards):
        return [_concrete(index.at(i)) for i in range(index.count())]
    return [_concrete(index.at(0))]


def _ivf_list_ids(index) -> np.ndarray:
    """The ids stored in an IVF index's inverted lists, list after list."""
    invlists = index.invlists
    parts = []
    for list_no in range(index.nlist):
        size = invlists.list_size(list_no)
        if size:
            pointer = invlists.get_ids(list_no)
            parts.append(faiss.rev_swig_ptr(pointer, size).astype(np.int64))
            invlists.release_ids(list_no, pointer)
    return np.concatenate([np.zeros(0, np.int64)] + parts)


def database_ids(index) -> np.ndarray:
    """``[ntotal]`` int64: the id ``search`` returns for each stored vector, in the
    order of :func:`database_vectors`."""
    index = _concrete(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    if isinstance(index, faiss.IndexShards):
        parts, offset = [], 0
        for shard in _children(index):
            ids = database_ids(shard)
            parts.append(ids + offset if index.successive_ids else ids)
            offset += shard.ntotal
        return np.concatenate(parts)
    if isinstance(index, faiss.IndexReplicas):
        return database_ids(_children(index)[0])
    if isinstance(index, faiss.IndexIVF):  # ids given to add_with_ids live in the lists
        ids = _ivf_list_ids(index)
        if not np.array_equal(np.sort(ids), np.arange(ids.shape[0])):
            return ids
    return np.arange(index.ntotal, dtype=np.int64)


def is_exact_index(index) -> bool:
    """Whether ``index``'s search is exact: a flat index (CPU or GPU), or an
    ``IndexIDMap``, ``IndexShards`` or ``IndexReplicas`` of flat indexes."""
    index = _concrete(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return is_exact_index(index.index)
    if isinstance(index, (faiss.IndexShards, faiss.IndexReplicas)):
        return all(is_exact_index(child) for child in _children(index))
    return isinstance(index, faiss.IndexFlat) or type(index).__name__.startswith("GpuIndexFlat")


def database_vectors(index) -> np.ndarray:
    """``[ntotal, d]`` float32: every stored vector, read back from the index.

    Raises:
        ValueError: the index cannot return its vectors (e.g. an IVF index holding its
            own ids without a direct map, or an index type without ``reconstruct``).
    """
    index = _concrete(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return database_vectors(index.index)
    if isinstance(index, (faiss.IndexShards, faiss.IndexReplicas)):
        return np.concatenate([database_vectors(child) for child in _children(index)])
    if _is_gpu_index(index):
        return database_vectors(faiss.index_gpu_to_cpu(index))
    try:
        if isinstance(index, faiss.IndexIVF):
            ids = database_ids(index)
            if not np.array_equal(ids, np.arange(index.ntotal)):
                # reconstruct_n would read ids 0 .. ntotal-1, which are not all there
                return index.reconstruct_batch(ids)
        return index.reconstruct_n(0, index.ntotal)
    except RuntimeError as error:
        hint = ""
        if isinstance(index, faiss.IndexIVF):
            hint = (
                "; an IVF index holding its own ids needs a direct map: call "
                "index.set_direct_map_type(faiss.DirectMap.Hashtable) before adding"
            )
        reason = str(error).strip().splitlines()[-1]
        raise ValueError(
            f"{type(index).__name__} cannot return its stored vectors, which "
            f"re-ranking needs ({reason}){hint}"
        ) from None


class FaissBackend:
    """A FAISS index seen as a :class:`~triton_rerank.database.search_backend.SearchBackend`.

    Args:
        index: a FAISS index with inner-product or L2 metric.
    """

    description = "the index"

    def __init__(self, index):
        self.index = index
        self.metric = _BACKEND_METRICS[index.metric_type]

    @property
    def dimension(self) -> int:
        return self.index.d

    @property
    def exact(self) -> bool:
        return is_exact_index(self.index)

    def count(self) -> int:
        return self.index.ntotal

    def version(self) -> int:
        """``ntotal``: FAISS keeps no other record of changes (the wrapper's ``add``,
        ``remove_ids`` and ``reset`` also forget its cached state)."""
        return self.index.ntotal

    def ids(self, filter=None) -> np.ndarray:
        """:func:`database_ids`, which must be non-negative: FAISS marks "no result" with
        -1, and the inductive shortlist maps ids back to vectors."""
        if filter is not None:
            raise ValueError("FAISS indexes take no filter expression")
        ids = database_ids(self.index)
        if ids.size and ids.min() < 0:
            raise ValueError(
                f"the index holds negative ids (e.g. {int(ids.min())}), which "
                f"FAISS search results cannot tell from 'no result' (-1); "
                f"re-ranking needs ids >= 0"
            )
        return ids

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (:func:`database_vectors`, read in full)."""
        vectors = database_vectors(self.index)
        stored_ids = database_ids(self.index)
        if np.array_equal(ids, stored_ids):
            return vectors
        positions, unknown = IdPositions(stored_ids)(np.asarray(ids, dtype=np.int64))
        if unknown.any():
            raise ValueError(f"the index holds no vector with id {int(ids[unknown][0])}")
        return vectors[positions]

    def search(self, queries: np.ndarray, k: int, *, filter=None) -> SearchHits:
        if filter is not None:
            raise ValueError("FAISS indexes take no filter expression")
        distances, labels = self.index.search(queries, k)
        return SearchHits(distances, labels, labels >= 0)


class RerankedIndex:
    """A FAISS index whose ``search`` results are GNN re-ranked (see the module doc).

    Args:
        index: a populated FAISS index with inner-product or L2 metric.
        k1, k2, iterations, lamb: as :func:`triton_rerank.gnn_rerank`.
        mode: ``"exact"`` or ``"inductive"``.
        shortlist: inductive mode's candidates per query (default ``max(10 * k, k1)``,
            at most ``ntotal``).
        shortlist_seeds: inductive mode without a filter: search only this many
            results (e.g. ``k``) and grow the shortlist from them through the graph's
            neighbour lists (``RerankedSearch``'s module doc); default: the whole
            shortlist from the search.
        backend: ``"auto"`` or ``"cpu"``: the adapter runs the CPU path (CUDA tensors
            are computed on the CPU and returned on their device; ``"torch"`` is the
            deprecated old name of ``"cpu"``).
    """

    def __init__(
        self,
        index,
        *,
        k1: int = 26,
        k2: int = 7,
        iterations: int = 2,
        lamb: float = 0.3,
        mode: str = "exact",
        shortlist: int | None = None,
        shortlist_seeds: int | None = None,
        backend: str = "auto",
    ):
        if not isinstance(index, faiss.Index):
            raise TypeError(f"index must be a FAISS index, got {type(index).__name__}")
        if index.metric_type not in METRICS:
            raise ValueError(
                "RerankedIndex needs an inner-product or L2 index, got "
                f"metric_type {index.metric_type}"
            )
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        backend = canonical_backend_name(backend)
        if backend not in ("auto", "cpu"):
            raise ValueError(
                f"RerankedIndex runs on the CPU path: backend must be 'auto' or "
                f"'cpu', got {backend!r}"
            )
        self._search = RerankedSearch(
            FaissBackend(index),
            k1=k1,
            k2=k2,
            iterations=iterations,
            lamb=lamb,
            mode=mode,
            shortlist=shortlist,
            shortlist_seeds=shortlist_seeds,
            on_change="rebuild",
            unit_vectors_advice="add faiss.normalize_L2-ed vectors instead",
        )
        self.k1, self.k2 = self._search.k1, self._search.k2
        self.iterations, self.lamb = self._search.iterations, self._search.lamb
        self.shortlist = self._search.shortlist
        self.shortlist_seeds = self._search.shortlist_seeds
        self.index = index
        self.mode = mode
        self.backend = backend

    # -- the wrapped index ---------------------------------------------------------------

    @property
    def d(self) -> int:
        return self.index.d

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    @property
    def metric_type(self) -> int:
        return self.index.metric_type

    def add(self, x) -> None:
        """``index.add(x)``, then forget the cached database graph."""
        self.index.add(x)
        self.invalidate()

    def add_with_ids(self, x, ids) -> None:
        """``index.add_with_ids(x, ids)``, then forget the cached database graph."""
        self.index.add_with_ids(x, ids)
        self.invalidate()

    def remove_ids(self, selector) -> int:
        """``index.remove_ids(selector)``, then forget the cached database graph."""
        removed = self.index.remove_ids(selector)
        self.invalidate()
        return removed

    def reset(self) -> None:
        """``index.reset()``, then forget the cached database graph."""
        self.index.reset()
        self.invalidate()

    def invalidate(self) -> None:
        """Forget the cached database graph; the next search rebuilds it."""
        self._search.invalidate()

    def _check_populated(self) -> None:
        if self.ntotal == 0:
            raise ValueError("the index is empty (ntotal = 0): add vectors before searching")

    @property
    def _database(self) -> ExactDatabase | None:
        """Exact mode's cached database, or None."""
        return None if self._search._exact is None else self._search._exact[2]

    @property
    def _graph(self) -> InductiveGraph | None:
        """The inductive graph in use, or None."""
        return self._search.graph

    def _exact_database(self) -> ExactDatabase:
        """``(unit vectors, ids, knn values, knn indices)`` of exact mode."""
        self._check_populated()
        return self._search.exact_database()

    # -- inductive mode ------------------------------------------------------------------

    def build_graph(
        self, graph_index=None, *, row_budget: int = DEFAULT_ROW_BUDGET
    ) -> InductiveGraph:
        """Build (and keep) the inductive mode's database graph.

        Args:
            graph_index: the FAISS index that finds each database vector's ``k1``
                neighbours (approximate allowed, e.g. HNSW or IVF); it must hold the same
                vectors under the same ids. Default: the wrapped index. An exact index
                (flat, or ``IndexIDMap``/``IndexShards`` of flat ones) is not searched:
                the lists are then the canonical kNN (:func:`triton_rerank.cpu.knn.knn_graph`),
                the same as exact mode's.
            row_budget: entries kept per propagated row; bounds the graph's rows to
                ``16 * ntotal * (k1 + (iterations - 1) * row_budget)`` bytes (plus a copy
                of the unit vectors) and the work per query.

        Returns:
            The :class:`~triton_rerank.database.inductive.InductiveGraph` (also used by ``search``).
        """
        self._check_populated()
        search_index = self.index if graph_index is None else graph_index
        if search_index.ntotal != self.ntotal:
            raise ValueError(
                f"graph_index holds {search_index.ntotal} vectors but the index "
                f"holds {self.ntotal}: they must hold the same database"
            )
        neighbours = None if graph_index is None else FaissBackend(graph_index)
        return self._search.build_graph(neighbours, row_budget=row_budget)

    def save_graph(self, path) -> None:
        """Save the inductive graph (built first if needed) to ``path``."""
        self._check_populated()
        self._search.save_graph(path)

    def load_graph(self, path) -> None:
        """Load an inductive graph saved by :meth:`save_graph` for this database.

        The file is validated in full (:meth:`InductiveGraph.load`), then checked against
        the wrapped index: the parameters, the dimension, the size and ids, and the
        fingerprint of the stored vectors recorded when the graph was built.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a graph file, damaged or edited, built with other
                ``k1``/``k2``/``iterations``, or for another database (dimension, size,
                ids or stored vectors differ): the message names the file.
        """
        self._search.load_graph(path)

    # -- search --------------------------------------------------------------------------

    def search(self, x, k: int):
        """The ``k`` best database items for each query, after re-ranking.

        Args:
            x: ``[n, d]`` queries (numpy array or torch tensor of floats).
            k: results per query, ``1 <= k <= ntotal``.

        Returns:
            ``(D [n, k] float32, I [n, k] int64)`` with FAISS's conventions (see the
            module doc); torch tensors on ``x``'s device for torch input.

        Raises:
            TypeError, ValueError: bad queries (type, shape, dimension, NaN/inf, zero
                rows), an empty index, ``k`` out of range, an index that cannot return
                its vectors.
        """
        self._check_populated()
        queries, array_type, device = check_unit_rows(x, "queries", self.d)
        k = check_int(
            k,
            "k",
            minimum=1,
            maximum=self.ntotal,
            maximum_reason=f"the index holds {self.ntotal} vectors",
        )
        hits = self._search.search(queries, k)
        if self.metric_type == faiss.METRIC_L2:
            distances = np.where(hits.found, 2.0 - 2.0 * hits.scores, np.inf)
        else:
            distances = np.where(hits.found, hits.scores, -np.inf)
        distances = distances.astype(np.float32)
        labels = hits.ids
        if array_type == "torch":
            return torch.from_numpy(distances).to(device), torch.from_numpy(labels).to(device)
        return distances, labels
