"""Inductive GNN re-ranking: a database graph propagated once, new queries scored alone.

Exact (transductive) re-ranking makes every query a node of one graph with the
database, so each new batch re-runs propagation over the whole database. For large
databases the graph is instead built once, offline, from the database alone
(``InductiveGraph.build``; its kNN lists may come from an approximate index), and
each query is re-ranked against a shortlist of candidates using only its own
neighbourhood (``InductiveGraph.rerank``, kernel in ``cpu/kernels/inductive_scores.py``).

The approximation, compared with exact mode:

* the database rows are frozen: a query does not displace database nodes' k1-th
  neighbours and does not change their norms (it does enter the top-k2 of the
  candidates it is closer to than their k2-th neighbour, in the final round);
* a query sees only its candidates: its shortlist plus the kNN lists of its
  ``k1 - 1`` most similar shortlisted items (these reach relevant items the
  similarity shortlist missed); its own k1 neighbours and reverse edges are found
  among them, and only they are scored;
* queries do not see each other (results do not depend on the batch);
* propagated rows keep their ``row_budget`` largest entries (database rows when the
  graph is built, the query's last row when it is scored), which bounds memory and
  work; rows of clustered data have hundreds of mostly tiny entries;
* the database kNN lists are those of the index used to build the graph (their
  similarities are recomputed exactly; a node missing from its own list is added).

Everything else (squared-similarity weights, symmetrisation, per-round L2
normalisation, the ``lamb`` mixing) follows docs/design.md §1 exactly. Measured recall of
exact mode's top-100 and mAP: ``benchmarks/results/faiss_rerank.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numba
import numpy as np

from ..cpu.kernels.aggregate import count_row_nnz, fill_rows, row_norms
from ..cpu.kernels.canonical import canonical_list_values
from ..cpu.kernels.inductive_scores import (
    grow_shortlists,
    rerank_grown_shortlists,
    rerank_shortlists,
)
from ..cpu.kernels.transpose import transpose
from ..cpu.neighbour_lists import sorted_neighbour_lists
from ..cpu.propagation import locality_order, top_k2_weights
from ..cpu.sparse_rows import SparseRows
from ..limits import NORM_EPS
from .graph_file import (
    GRAPH_FORMAT,  # noqa: F401 (re-exported: the version of the graph file format)
    read_graph_file,
    write_graph_file,
)

# Entries kept per propagated row (database rows, and the query's last row): bounds
# the graph's memory and the work per query. Rows of clustered data have hundreds of
# entries, most of them tiny.
DEFAULT_ROW_BUDGET = 128


def scored_neighbour_lists(vectors: np.ndarray, neighbours: np.ndarray):
    """Canonical similarities of searched neighbour lists, self ensured, re-sorted.

    Args:
        vectors: ``[g, d]`` float32 unit rows.
        neighbours: ``[g, k]`` int64 positions from any (approximate) search, -1 = none.

    Returns:
        ``(values [g, k] float32, indices [g, k] int64)``: each row holds the node itself
        (replacing the last entry when the search missed it), sorted by descending
        canonical similarity (``triton_rerank/canonical.py``), equal similarities by
        smaller position, missing entries (``-inf``, -1) last.
    """
    n, k = neighbours.shape
    indices = np.array(neighbours, dtype=np.int64)
    own = np.arange(n, dtype=np.int64)
    missing_self = ~(indices == own[:, None]).any(axis=1)
    indices[missing_self, -1] = own[missing_self]
    values = np.empty((n, k), dtype=np.float32)
    canonical_list_values(vectors, vectors, indices, values)
    return sorted_neighbour_lists(values, indices)


class _RoundRows:
    """The rows of every round's ``A_r`` and ``A_r.T``, in arrays that grow per round.

    Round r occupies ``2g`` rows: row ``n`` is ``A_r[n]`` and row ``g + n`` is
    ``A_r.T[n]``, so ``M_r[n] = A_r[n] + A_r.T[n]`` is read as those two rows. Column
    ids are int32 (g < 2^31) to halve the largest arrays of the graph. Rows are written
    in place (no ``A + A.T`` merge, no stacked copy): at 1M nodes the last round
    alone holds hundreds of millions of entries.
    """

    def __init__(self, g: int):
        self.g = g
        self.indptr = np.zeros((0, 2 * g + 1), dtype=np.int64)
        self.indices = np.zeros(0, dtype=np.int32)
        self.values = np.zeros(0, dtype=np.float32)

    def _grow(self, row_counts: np.ndarray):
        """Make room for a round whose ``A_r`` rows have ``row_counts`` entries.

        Returns:
            ``(start, nnz, (indptr, indices, values) of the A_r part, (indices, values)
            of the A_r.T part)``, the parts being views to fill.
        """
        start = self.values.shape[0]
        nnz = int(row_counts.sum())
        indices = np.empty(start + 2 * nnz, dtype=np.int32)
        values = np.empty(start + 2 * nnz, dtype=np.float32)
        indices[:start], values[:start] = self.indices, self.values
        self.indices, self.values = indices, values
        a_indptr = np.zeros(self.g + 1, dtype=np.int64)
        np.cumsum(row_counts, out=a_indptr[1:])
        return (
            start,
            nnz,
            (a_indptr, indices[start : start + nnz], values[start : start + nnz]),
            (indices[start + nnz :], values[start + nnz :]),
        )

    def _finish(self, start: int, nnz: int, a_part, t_part) -> None:
        """Write the transpose of a filled A_r part and record the round's rows."""
        t_indptr = transpose(*a_part, self.g, *t_part)
        round_indptr = np.concatenate([a_part[0], t_indptr[1:] + nnz]) + start
        self.indptr = np.concatenate([self.indptr, round_indptr[None]])

    def add_knn_round(self, knn_indices: np.ndarray) -> None:
        """Round 0: the binary kNN adjacency (entries -1 skipped)."""
        keep = knn_indices >= 0
        start, nnz, a_part, t_part = self._grow(keep.sum(axis=1))
        a_part[1][:] = knn_indices[keep]
        a_part[2][:] = 1.0
        self._finish(start, nnz, a_part, t_part)

    def add_aggregated_round(self, rows, w2_idx, w2_val, row_budget: int):
        """Next round: ``A_{r+1} = normalise(W @ M_r)`` from the last round's rows, each
        row cut to its ``row_budget`` largest entries; returns the ``[g]`` norms before
        normalisation (and before the cut)."""
        last = self.indptr[-1]
        counts = count_row_nnz(rows, w2_idx, last, self.indices, self.g)
        start, nnz, a_part, t_part = self._grow(np.minimum(counts, row_budget))
        norms = np.empty(self.g, dtype=np.float32)
        fill_rows(
            rows,
            w2_idx,
            w2_val,
            last,
            self.indices,
            self.values,
            self.g,
            a_part[0],
            a_part[1],
            a_part[2],
            norms,
            True,
            np.float32(NORM_EPS),
        )
        self._finish(start, nnz, a_part, t_part)
        return norms

    def last_round_norms(self, rows, w2_idx, w2_val) -> np.ndarray:
        """Norms of ``W @ M_r`` for the last round, without storing those rows."""
        return row_norms(rows, w2_idx, w2_val, self.indptr[-1], self.indices, self.values, self.g)


@dataclass(frozen=True)
class InductiveGraph:
    """A database graph propagated once, for re-ranking shortlists of new queries.

    Attributes:
        k1, k2, iterations: the re-ranking parameters the graph was built with.
        row_budget: entries kept per propagated row.
        ids: ``[g]`` int64 the caller's id of each database position.
        caller_position: ``[g]`` int64 the caller's position of each node: nodes are
            renumbered internally (reverse Cuthill-McKee order of the kNN graph, for
            memory locality); the arrays below are in internal order.
        vectors: ``[g, d]`` float32 unit database rows.
        knn_values: ``[g, k1]`` float32 database-only kNN similarities (``-inf`` = none).
        knn_indices: ``[g, k1]`` int64 positions (-1 = none), self included.
        m_indptr: ``[R, 2g + 1]`` int64 offsets of the rows of round ``r < R`` (R = the
            propagation rounds) into ``m_indices`` / ``m_values``: row ``n`` is
            ``A_r[n]``, row ``g + n`` is ``A_r.T[n]``; their sum is ``M_r[n]``.
        m_indices: int32 column positions; m_values: float32.
        inv_norm: ``[R, g]`` float32 ``1 / max(|A_{r+1}[j]|, 1e-12)``.
        reverse: ``[g, g]`` rows of ``W.T``: row n lists the nodes j having n among
            their top-k2, with weight ``w_jn``.
        fingerprint: :func:`~triton_rerank.database.graph_file.database_fingerprint` of the
            database the graph was built for (``RerankedIndex.build_graph`` records it,
            ``RerankedIndex.load_graph`` checks it), or None.
    """

    k1: int
    k2: int
    iterations: int
    row_budget: int
    ids: np.ndarray
    caller_position: np.ndarray
    vectors: np.ndarray
    knn_values: np.ndarray
    knn_indices: np.ndarray
    m_indptr: np.ndarray
    m_indices: np.ndarray
    m_values: np.ndarray
    inv_norm: np.ndarray
    reverse: SparseRows
    fingerprint: str | None = None

    @property
    def n_rounds(self) -> int:
        """Propagation rounds actually run (0 when ``k2 == 1``)."""
        return 0 if self.k2 == 1 else self.iterations

    @property
    def size(self) -> int:
        return self.vectors.shape[0]

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        neighbours: np.ndarray,
        *,
        k2: int,
        iterations: int,
        row_budget: int = DEFAULT_ROW_BUDGET,
        ids: np.ndarray | None = None,
        fingerprint: str | None = None,
    ) -> InductiveGraph:
        """Build the graph from the database's neighbour lists.

        Args:
            vectors: ``[g, d]`` float32 unit rows.
            neighbours: ``[g, k1]`` int64 positions from any search (-1 = none).
            k2, iterations: as :func:`triton_rerank.gnn_rerank` (``k2 <= k1``).
            row_budget: entries kept per propagated row (its largest ones).
            ids: ``[g]`` int64 caller ids of the positions (default ``0 .. g-1``).
            fingerprint: recorded as the graph's ``fingerprint`` (see the attributes).
        """
        n, k1 = neighbours.shape
        ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        values, indices = scored_neighbour_lists(vectors, neighbours)
        # renumber the nodes so that neighbourhoods sit close together in memory: a
        # query's work then stays in cache (as on the CPU path, see cpu/propagation.py)
        own = np.arange(n, dtype=np.int64)[:, None]
        order = locality_order(np.where(indices >= 0, indices, own))
        internal = np.empty(n, dtype=np.int64)
        internal[order] = np.arange(n, dtype=np.int64)
        vectors, values, indices = vectors[order], values[order], indices[order]
        indices = np.where(indices >= 0, internal[np.maximum(indices, 0)], -1)
        w_idx, w_val = top_k2_weights(values, indices, k2)
        w = SparseRows.from_dense_rows(w_idx, w_val, n)
        rev_indices = np.empty(w.nnz, dtype=np.int64)
        rev_values = np.empty(w.nnz, dtype=np.float32)
        rev_indptr = transpose(w.indptr, w.indices, w.values, n, rev_indices, rev_values)

        # W applied to the two halves of each round's rows: M_r[n] = A_r[n] + A_r.T[n]
        w2_idx = np.concatenate([w_idx, w_idx + n], axis=1)
        w2_val = np.concatenate([w_val, w_val], axis=1)
        rows = np.arange(n, dtype=np.int64)
        rounds, inv_norms = _RoundRows(n), []
        n_rounds = 0 if k2 == 1 else iterations
        if n_rounds:
            rounds.add_knn_round(indices)
        for r in range(n_rounds):
            if r < n_rounds - 1:
                norms = rounds.add_aggregated_round(rows, w2_idx, w2_val, row_budget)
            else:  # the last round's rows are never stored, only their norms
                norms = rounds.last_round_norms(rows, w2_idx, w2_val)
            inv_norms.append(1.0 / np.maximum(norms, np.float32(NORM_EPS)))
        return cls(
            k1,
            k2,
            iterations,
            row_budget,
            ids,
            order,
            vectors,
            values,
            indices,
            rounds.indptr,
            rounds.indices,
            rounds.values,
            np.array(inv_norms, dtype=np.float32).reshape(-1, n),
            SparseRows(rev_indptr, rev_indices, rev_values, n),
            fingerprint,
        )

    def rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int, lamb: float):
        """Re-rank each query's candidates.

        Args:
            queries: ``[b, d]`` float32 unit rows.
            candidates: ``[b, L]`` int64 database positions (-1 = none), any order.
            k: results per query.
            lamb: weight of the cosine similarity in the final score.

        Returns:
            ``(scores [b, k] float32, positions [b, k] int64)`` by descending score,
            equal scores by smaller position; ``-inf`` / -1 where fewer than k candidates.
            Positions are the caller's (those of ``vectors`` given to :meth:`build`).
        """
        return self._rerank(queries, candidates, k, lamb, None)

    def rerank_grown(
        self, queries: np.ndarray, seeds: np.ndarray, k: int, lamb: float, shortlist: int
    ):
        """Re-rank each query's shortlist grown from ``seeds`` through the graph: the
        ``shortlist`` database nodes most similar to the query (float32 cosine, equal
        similarities by smaller position) in a pool of its seeds, their kNN lists
        (``knn_indices``, ``k1`` each) and, while the pool holds fewer than
        ``shortlist``, the lists of the last level's nodes, most similar first
        (:mod:`triton_rerank.cpu.kernels.inductive_scores`); all of them when the
        graph reaches fewer. The shortlist is then
        re-ranked as :meth:`rerank` re-ranks given candidates: ``rerank_grown(q, s, k,
        lamb, L)`` equals ``rerank(q, grown, k, lamb)`` for that grown shortlist.

        Args:
            queries: ``[b, d]`` float32 unit rows.
            seeds: ``[b, s]`` int64 database positions (-1 = none; repeats count once),
                e.g. the top-``s`` of a search.
            k, lamb: as :meth:`rerank`.
            shortlist: the most candidates kept from the grown pool (``>= 1``).

        Returns:
            As :meth:`rerank`.
        """
        return self._rerank(queries, seeds, k, lamb, int(shortlist))

    def grow_shortlists(self, queries: np.ndarray, seeds: np.ndarray, shortlist: int) -> np.ndarray:
        """The shortlists :meth:`rerank_grown` re-ranks, without re-ranking them.

        Args:
            queries: ``[b, d]`` float32 unit rows.
            seeds: ``[b, s]`` int64 database positions (-1 = none; repeats count once).
            shortlist: the most candidates kept from the grown pool (``>= 1``).

        Returns:
            ``[b, shortlist]`` int64 database positions, in the order the growth met
            them (seeds first), -1 after the last when the graph reaches fewer.
        """
        nodes = grow_shortlists(
            np.ascontiguousarray(queries, dtype=np.float32),
            self._nodes(seeds),
            self.caller_position,
            self.vectors,
            self.knn_indices,
            int(shortlist),
            numba.get_num_threads(),
        )
        return self._positions(nodes)

    def _nodes(self, positions) -> np.ndarray:
        """``[b, L]`` database positions (-1 = none) as internal node ids."""
        positions = np.asarray(positions, dtype=np.int64)
        return np.where(positions >= 0, self._internal_id[np.maximum(positions, 0)], -1)

    def _positions(self, nodes: np.ndarray) -> np.ndarray:
        """``[b, L]`` internal node ids (-1 = none) as database positions."""
        return np.where(nodes >= 0, self.caller_position[np.maximum(nodes, 0)], -1)

    def _rerank(self, queries, candidates, k: int, lamb: float, shortlist: int | None):
        n_batch = queries.shape[0]
        scores = np.full((n_batch, k), -np.inf, dtype=np.float32)
        nodes = np.full((n_batch, k), -1, dtype=np.int64)
        w_idx, w_val = self._top_k2
        kth_value, k2th_value = self._kth_values
        arrays = (
            np.ascontiguousarray(queries, dtype=np.float32),
            self._nodes(candidates),
            self.caller_position,
            self.vectors,
            self.knn_indices,
            w_idx,
            w_val,
            kth_value,
            k2th_value,
            self.m_indptr,
            self.m_indices,
            self.m_values,
            self.inv_norm,
            self.reverse.indptr,
            self.reverse.indices,
            self.reverse.values,
            self.n_rounds,
            self.row_budget,
            np.float32(lamb),
            np.float32(NORM_EPS),
        )
        if shortlist is None:
            rerank_shortlists(*arrays, scores, nodes)
        else:
            rerank_grown_shortlists(*arrays, shortlist, scores, nodes)
        return scores, self._positions(nodes)

    @cached_property
    def _top_k2(self):
        return top_k2_weights(self.knn_values, self.knn_indices, self.k2)

    @cached_property
    def _kth_values(self):
        """The k1-th and k2-th similarity of each list (``[g]`` float32 each)."""
        return (
            np.ascontiguousarray(self.knn_values[:, -1]),
            np.ascontiguousarray(self.knn_values[:, self.k2 - 1]),
        )

    @cached_property
    def _internal_id(self) -> np.ndarray:
        internal = np.empty(self.size, dtype=np.int64)
        internal[self.caller_position] = np.arange(self.size, dtype=np.int64)
        return internal

    def save(self, path) -> None:
        """Write the graph to ``path``: an uncompressed ``.npz`` with a checksum (format in
        :mod:`triton_rerank.database.graph_file`)."""
        write_graph_file(
            path,
            {
                "k1": self.k1,
                "k2": self.k2,
                "iterations": self.iterations,
                "row_budget": self.row_budget,
                "fingerprint": self.fingerprint or "",
                "ids": self.ids,
                "caller_position": self.caller_position,
                "vectors": self.vectors,
                "knn_values": self.knn_values,
                "knn_indices": self.knn_indices,
                "m_indptr": self.m_indptr,
                "m_indices": self.m_indices,
                "m_values": self.m_values,
                "inv_norm": self.inv_norm,
                "rev_indptr": self.reverse.indptr,
                "rev_rows": self.reverse.indices,
                "rev_w": self.reverse.values,
            },
        )

    @classmethod
    def load(cls, path) -> InductiveGraph:
        """Read a graph written by :meth:`save`, after validating every array it holds
        (:func:`~triton_rerank.database.graph_file.read_graph_file`): a file that loads is safe to
        re-rank with, whatever its origin.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a graph file, written by an incompatible version, damaged, or
                holding arrays that break the format's rules (the message names the file
                and the problem).
        """
        m = read_graph_file(path)
        n = m["vectors"].shape[0]
        return cls(
            int(m["k1"]),
            int(m["k2"]),
            int(m["iterations"]),
            int(m["row_budget"]),
            m["ids"],
            m["caller_position"],
            m["vectors"],
            m["knn_values"],
            m["knn_indices"],
            m["m_indptr"],
            m["m_indices"],
            m["m_values"],
            m["inv_norm"],
            SparseRows(m["rev_indptr"], m["rev_rows"], m["rev_w"], n),
            fingerprint=str(m["fingerprint"]) or None,
        )
