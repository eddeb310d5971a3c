"""Sharded serving: re-ranked search over a sharded graph, scored as single-host
inductive mode.

One :class:`ShardServer` actor per shard holds its graph file (validated on load) and
answers two requests: the canonical top-L of a query batch among its rows (or the
candidates of a FAISS index file of the shard, rescored canonically), and the frozen
records (vector, kNN list, rows of every round, inverse norms, reverse list) of the
nodes it owns. :class:`ShardedSearch` scatters a batch to every shard, merges the
shortlists under the tie rule, gathers the records the batch's scoring reads, renumbers
them into a small local graph and runs the single-host kernel
(``cpu/kernels/inductive_scores.py``) on it: the same arithmetic on the same rows, so
the results are those of ``RerankedIndex(mode="inductive")``.

Which records the kernel reads (R rounds; see the kernel's doc): the candidates C (the
shortlist plus the kNN lists of the query's ``k1 - 1`` nearest shortlisted items); the
rows of every round of the query's top-k2 among C; the reverse lists of the columns of
``M_r[q]`` for ``r <= R - 2``; the rows of ``M_{R-1}`` of the columns of the query's
last row. The gather takes a superset: the nearest items are those within
:data:`NEAR_MARGIN` of the boundary similarity (the kernel's float32 products may order
near-ties differently), and every record is taken whole. Nodes that only appear as
column ids get empty records: the kernel never reads them.

Faults: the actors run with ``max_restarts`` and their calls with ``max_task_retries``;
a killed actor is restarted (it reads its graph file again) and the call is retried.
The requests are read-only, so a retried call returns the same answer.
"""

from __future__ import annotations

import numpy as np

from ..cpu.kernels.inductive_scores import rerank_shortlists
from ..cpu.kernels.jit import njit
from ..database.graph_file import read_graph_shard_file
from ..limits import NORM_EPS
from .build import actor_options_with_defaults, ray_module
from .build_worker import peak_rss_mb, use_node_cores
from .graph_shards import open_sharded_graph
from .row_exchange import take_rows
from .shard_search import merge_top_k, rescored_top_k, shard_top_k

# Similarity slack when choosing the query's nearest candidates (far above the float32
# error of a 128-d product, about 1e-5).
NEAR_MARGIN = 1e-3
APPROXIMATE_MARGIN = 8


class ShardServer:
    """One shard of a served graph (see the module doc).

    Args:
        graph_file: the shard's graph file.
        index_file: a FAISS index file of the shard's rows for the shortlist (labels =
            rows), or None for the exact canonical search.
    """

    def __init__(self, graph_file: str, index_file: str | None = None):
        use_node_cores()
        m = read_graph_shard_file(graph_file)
        self.offset = int(m["shard_offset"])
        self.g = m["vectors"].shape[0]
        self.m = m
        self.n_rounds = m["m_indptr"].shape[0]
        self.index = None
        if index_file is not None:
            import faiss

            self.index = faiss.read_index(index_file)

    def rss_mb(self) -> float:
        """This worker's peak resident memory so far, MB."""
        return peak_rss_mb()

    def search(self, queries: np.ndarray, k: int):
        """``(values [q, k], global positions [q, k])``: the canonical top-k here."""
        if self.index is not None:
            _, local = self.index.search(queries, min(self.g, k + APPROXIMATE_MARGIN))
            return rescored_top_k(queries, self.m["vectors"], self.offset, local, k)
        return shard_top_k(queries, self.m["vectors"], self.offset, k)

    def records(self, nodes: np.ndarray) -> dict:
        """The frozen records of owned global ``nodes [n]`` (rows as counts, column ids
        and values; column ids are global positions)."""
        m, local = self.m, np.asarray(nodes, dtype=np.int64) - self.offset
        out = {
            "ids": m["ids"][local],
            "vectors": m["vectors"][local],
            "knn_values": m["knn_values"][local],
            "knn_indices": m["knn_indices"][local],
            "inv_norm": m["inv_norm"][:, local],
            "rev": take_rows(m["rev_indptr"], m["rev_rows"], m["rev_w"], local),
        }
        for r in range(self.n_rounds):
            indptr = m["m_indptr"][r]
            for half, name in ((0, "a"), (self.g, "t")):
                rows = np.arange(self.g + 1, dtype=np.int64) + half
                out[f"{name}{r}"] = take_rows(indptr[rows], m["m_indices"], m["m_values"], local)
        return out


@njit(nogil=True)
def _place_mapped(rows, counts, src_indices, src_values, local_of, indptr, indices, values):
    """Row i of a gathered part (``counts [m]`` entries each, global column ids) becomes
    local row ``rows[i]``, its column ids renumbered by ``local_of [G]``."""
    p = 0
    for i in range(rows.shape[0]):
        o = indptr[rows[i]]
        for e in range(counts[i]):
            indices[o + e] = local_of[src_indices[p]]
            values[o + e] = src_values[p]
            p += 1


class _Records:
    """The records gathered for one batch, by global position.

    ``slot [G]`` int64 is each node's row in the gathered records (parts in order; -1 =
    not gathered): lookups are gathers, not sorts. The G-sized lookup arrays live on the
    driver only (8 bytes a database row).
    """

    def __init__(self, size: int):
        self.size = size
        self.slot = np.full(size, -1, dtype=np.int64)
        self.count = 0
        self.parts: list[tuple[np.ndarray, dict]] = []
        self._concatenated: dict[str, np.ndarray] = {}

    def missing(self, nodes: np.ndarray) -> np.ndarray:
        """The distinct nodes of ``nodes`` (any shape, -1 = none) not gathered yet, sorted."""
        mark = np.zeros(self.size, dtype=bool)
        nodes = np.asarray(nodes).ravel()
        mark[nodes[nodes >= 0]] = True
        mark[self.slot >= 0] = False
        return np.flatnonzero(mark)

    def add(self, nodes: np.ndarray, records: dict) -> None:
        self.parts.append((nodes, records))
        self.slot[nodes] = self.count + np.arange(nodes.shape[0], dtype=np.int64)
        self.count += nodes.shape[0]
        self._concatenated = {}

    def rows_of(self, name: str, nodes: np.ndarray) -> np.ndarray:
        """Column ids of the rows ``name`` (e.g. ``"a0"``, ``"rev"``) of gathered ``nodes``."""
        mark = np.zeros(self.size, dtype=bool)
        mark[nodes] = True
        columns = []
        for part_nodes, records in self.parts:
            counts, indices, _ = records[name]
            columns.append(indices[np.repeat(mark[part_nodes], counts)])
        return np.concatenate(columns).astype(np.int64) if columns else np.zeros(0, np.int64)

    def similarities(self, queries: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """``[b, L]`` float32 products of each query ``[b, d]`` with the vectors of its
        gathered ``nodes [b, L]`` (``-inf`` for -1), without copying the vectors out."""
        if "vectors" not in self._concatenated:
            self._concatenated["vectors"] = np.concatenate([r["vectors"] for _, r in self.parts])
        slots = np.where(nodes >= 0, self.slot[np.maximum(nodes, 0)], -1)
        out = np.empty(nodes.shape, dtype=np.float32)
        _similarities_kernel(queries, self._concatenated["vectors"], slots, out)
        return out

    def field(self, name: str, nodes: np.ndarray) -> np.ndarray:
        """``records[name]`` of gathered ``nodes [b, L]`` (-1 = none gives zeros / -1)."""
        if name not in self._concatenated:
            self._concatenated[name] = np.concatenate([r[name] for _, r in self.parts])
        out = self._concatenated[name][self.slot[np.maximum(nodes, 0)]]
        out[nodes < 0] = -1 if out.dtype.kind == "i" else 0
        return out


class ShardedSearch:
    """Re-ranked search over a sharded graph on a Ray cluster (see the module doc).

    Args:
        graph_folder: the folder of a sharded graph (``build_sharded_graph``).
        lamb: weight of the cosine similarity in the final score.
        shortlist: candidates per query (default ``max(10 * k, k1)``, as single-host).
        index_files: per shard, a FAISS index file for the shortlist, or None (exact).
        max_restarts: how often Ray restarts a dead shard actor (-1: always).
        actor_options: extra ``ray.remote`` options of the actors (defaults as
            ``build_sharded_graph``'s).
    """

    def __init__(
        self,
        graph_folder,
        *,
        lamb: float = 0.3,
        shortlist: int | None = None,
        index_files=None,
        max_restarts: int = -1,
        actor_options: dict | None = None,
    ):
        ray = ray_module()
        self.graph = open_sharded_graph(graph_folder)
        self.lamb = lamb
        self.shortlist = shortlist
        self.offsets = np.asarray(self.graph.offsets, dtype=np.int64)
        self.n_rounds = 0 if self.graph.k2 == 1 else self.graph.iterations
        options = actor_options_with_defaults(actor_options)
        remote = ray.remote(ShardServer).options(
            max_restarts=max_restarts, max_task_retries=-1 if max_restarts else 0, **options
        )
        index_files = index_files or [None] * len(self.graph.files)
        self.actors = [
            remote.remote(str(f), i) for f, i in zip(self.graph.files, index_files, strict=True)
        ]

    @classmethod
    def attach(cls, state: tuple) -> ShardedSearch:
        """A search over running shard actors: ``state`` is :attr:`state` of another
        (for the workers of a batch job; opening the manifest does not re-read the files)."""
        folder, actors, lamb, shortlist = state
        self = cls.__new__(cls)
        self.graph = open_sharded_graph(folder, validate=False)
        self.lamb, self.shortlist, self.actors = lamb, shortlist, actors
        self.offsets = np.asarray(self.graph.offsets, dtype=np.int64)
        self.n_rounds = 0 if self.graph.k2 == 1 else self.graph.iterations
        return self

    @property
    def state(self) -> tuple:
        """What :meth:`attach` needs (the actors' handles travel with it)."""
        return (str(self.graph.folder), self.actors, self.lamb, self.shortlist)

    def close(self) -> None:
        """Stop the shard actors."""
        ray = ray_module()
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def _gather(self, records: _Records, nodes: np.ndarray) -> None:
        ray = ray_module()
        nodes = records.missing(nodes)
        bounds = np.searchsorted(nodes, self.offsets)
        asked = [
            (nodes[bounds[t] : bounds[t + 1]], self.actors[t])
            for t in range(len(self.actors))
            if bounds[t + 1] > bounds[t]
        ]
        answers = ray.get([actor.records.remote(part) for part, actor in asked])
        for (part, _), answer in zip(asked, answers, strict=True):
            records.add(part, answer)

    def search(self, queries, k: int, *, on_scatter=None):
        """The ``k`` best database rows of each query, re-ranked.

        Args:
            queries: ``[b, d]`` float32 (L2-normalised here).
            k: results per query.
            on_scatter: called with the actors once the shortlist searches are submitted
                (the fault tests kill an actor there).

        Returns:
            ``(D [b, k] float32 scores, I [b, k] int64 ids)``, FAISS's form: by
            descending score, -inf / -1 where fewer than k results.
        """
        # here, not at the top: the shard actors (this module) never load torch
        from ..checks import check_unit_rows

        ray = ray_module()
        k1, k2 = self.graph.k1, self.graph.k2
        queries = check_unit_rows(queries, "queries", np.shape(queries)[1])[0]
        size = self.graph.size
        width = min(size, self.shortlist if self.shortlist is not None else max(10 * k, k1))
        if width < k:
            raise ValueError(f"shortlist={width} is smaller than k={k}")
        query_ref = ray.put(queries)
        refs = [a.search.remote(query_ref, width) for a in self.actors]
        if on_scatter is not None:
            on_scatter(self.actors)
        _, shortlist = merge_top_k(ray.get(refs), width)

        records = _Records(size)
        self._gather(records, shortlist.ravel())
        near = _nearest(records.similarities(queries, shortlist), shortlist, k1 - 1)
        knn = records.field("knn_indices", near)
        candidates = np.concatenate([shortlist, knn.reshape(len(queries), -1)], axis=1)
        self._gather(records, candidates.ravel())
        # the query's top-k2 among C (C holds the shortlist: its boundary is no higher)
        top = _nearest(records.similarities(queries, candidates), candidates, k2 - 1, width)
        top = np.unique(top[top >= 0])
        frontier = np.unique(candidates[candidates >= 0])
        for r in range(self.n_rounds - 1):
            frontier = np.unique(
                np.concatenate(
                    [
                        frontier,
                        records.rows_of(f"a{r}", top),
                        records.rows_of(f"t{r}", top),
                        records.rows_of("rev", frontier),
                    ]
                )
            )
            self._gather(records, frontier)
        if self.n_rounds:
            last = self.n_rounds - 1
            frontier = np.concatenate(
                [frontier, records.rows_of(f"a{last}", top), records.rows_of(f"t{last}", top)]
            )
            self._gather(records, frontier)
        return self._score(records, queries, shortlist, k)

    def _score(self, records: _Records, queries, shortlist, k: int):
        """Renumber the gathered records into a local graph and run the kernel."""
        graph, n_rounds = self.graph, self.n_rounds
        fetched = np.concatenate([p for p, _ in records.parts])
        parts = [r for _, r in records.parts]
        # the local nodes: every gathered node and every column id of a gathered record
        mark = np.zeros(graph.size, dtype=bool)
        mark[fetched] = True
        for p in parts:
            knn = p["knn_indices"]
            mark[knn[knn >= 0]] = True
            mark[p["rev"][1]] = True
            for r in range(n_rounds):
                mark[p[f"a{r}"][1]] = True
                mark[p[f"t{r}"][1]] = True
        nodes = np.flatnonzero(mark)
        del mark
        n = nodes.shape[0]
        local_of = np.full(graph.size, -1, dtype=np.int64)
        local_of[nodes] = np.arange(n, dtype=np.int64)
        local = local_of[fetched]

        def local_ids(global_ids):
            g = np.asarray(global_ids, dtype=np.int64)
            return np.where(g >= 0, local_of[np.maximum(g, 0)], -1)

        d = queries.shape[1]
        vectors = np.zeros((n, d), dtype=np.float32)
        vectors[local] = np.concatenate([p["vectors"] for p in parts])
        knn_values = np.full((n, graph.k1), -np.inf, dtype=np.float32)
        knn_values[local] = np.concatenate([p["knn_values"] for p in parts])
        knn_indices = np.full((n, graph.k1), -1, dtype=np.int64)
        knn_indices[local] = local_ids(np.concatenate([p["knn_indices"] for p in parts]))
        ids = np.full(n, -1, dtype=np.int64)
        ids[local] = np.concatenate([p["ids"] for p in parts])
        inv_norm = np.ones((n_rounds, n), dtype=np.float32)
        if n_rounds:
            inv_norm[:, local] = np.concatenate([p["inv_norm"] for p in parts], axis=1)

        def csr(name, dtype):
            """Rows ``name`` of every local node (empty for the ungathered ones)."""
            counts = np.zeros(n, dtype=np.int64)
            counts[local] = np.concatenate([p[name][0] for p in parts])
            indptr = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(counts, out=indptr[1:])
            indices = np.empty(indptr[-1], dtype=dtype)
            values = np.empty(indptr[-1], dtype=np.float32)
            start = 0
            for p in parts:  # each part holds its nodes' rows in order
                c, i, v = p[name]
                stop = start + c.shape[0]
                _place_mapped(local[start:stop], c, i, v, local_of, indptr, indices, values)
                start = stop
            return indptr, indices, values

        m_indptr = np.zeros((n_rounds, 2 * n + 1), dtype=np.int64)
        m_indices, m_values, start = [], [], 0
        for r in range(n_rounds):
            a = csr(f"a{r}", np.int32)
            t = csr(f"t{r}", np.int32)
            m_indptr[r] = np.concatenate([a[0], t[0][1:] + a[0][-1]]) + start
            m_indices += [a[1], t[1]]
            m_values += [a[2], t[2]]
            start += int(a[0][-1] + t[0][-1])
        rev_indptr, rev_rows, rev_w = csr("rev", np.int64)
        w_idx = knn_indices[:, : graph.k2]
        own = np.arange(n, dtype=np.int64)[:, None]
        w_val = np.where(w_idx >= 0, knn_values[:, : graph.k2] ** 2, 0).astype(np.float32)
        w_idx = np.ascontiguousarray(np.where(w_idx >= 0, w_idx, own))
        scores = np.full((queries.shape[0], k), -np.inf, dtype=np.float32)
        out = np.full((queries.shape[0], k), -1, dtype=np.int64)
        rerank_shortlists(
            queries,
            np.ascontiguousarray(local_ids(shortlist)),
            nodes,
            vectors,
            knn_indices,
            w_idx,
            np.ascontiguousarray(w_val),
            np.ascontiguousarray(knn_values[:, -1]),
            np.ascontiguousarray(knn_values[:, graph.k2 - 1]),
            m_indptr,
            np.concatenate(m_indices) if m_indices else np.zeros(0, np.int32),
            np.concatenate(m_values) if m_values else np.zeros(0, np.float32),
            inv_norm,
            rev_indptr,
            rev_rows,
            rev_w,
            n_rounds,
            graph.row_budget,
            np.float32(self.lamb),
            np.float32(NORM_EPS),
            scores,
            out,
        )
        return scores, np.where(out >= 0, ids[np.maximum(out, 0)], -1)


def _nearest(sims: np.ndarray, nodes: np.ndarray, count: int, among: int | None = None):
    """``[b, L]`` nodes (-1 elsewhere) whose float32 similarity ``sims [b, L]`` to their
    query (``-inf`` for none) is within :data:`NEAR_MARGIN` of the query's ``count``-th
    largest among its first ``among`` nodes (default all): a superset of the kernel's
    ``count`` nearest."""
    if count <= 0:
        return np.full_like(nodes, -1)
    first = sims[:, : among or nodes.shape[1]]
    count = min(count, first.shape[1])
    boundary = -np.partition(-first, count - 1, axis=1)[:, count - 1 : count]
    return np.where(sims >= boundary - NEAR_MARGIN, nodes, -1)


@njit(nogil=True)
def _similarities_kernel(queries, vectors, slots, out):
    for b in range(slots.shape[0]):
        for c in range(slots.shape[1]):
            j = slots[b, c]
            if j < 0:
                out[b, c] = -np.inf
                continue
            total = np.float32(0.0)
            for e in range(queries.shape[1]):
                total += queries[b, e] * vectors[j, e]
            out[b, c] = total
