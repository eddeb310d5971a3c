"""Inductive GNN re-ranking: a database graph propagated once, new queries scored alone.

Exact (transductive) re-ranking makes every query a node of one graph with the
database, so each new batch re-runs propagation over the whole database. For large
databases the graph is instead built once, offline, from the database alone
(``InductiveGraph.build``; its kNN lists may come from an approximate index), and
each query is re-ranked against a shortlist of candidates using only its own
neighbourhood (``InductiveGraph.rerank``, kernel in ``cpu/inductive_scores.py``).

The approximation, compared with exact mode:

* the database rows are frozen: a query does not displace database nodes' k1-th
  neighbours, does not enter their top-k2 weights and does not change their norms;
* a query sees only its shortlist: its own k1 neighbours are the top ``k1 - 1``
  shortlisted items (plus itself), reverse edges are found among the shortlist,
  and only shortlisted items are scored;
* queries do not see each other (results do not depend on the batch);
* the database kNN lists are those of the index used to build the graph (their
  similarities are recomputed exactly; a node missing from its own list is added).

Everything else (squared-similarity weights, symmetrisation, per-round L2
normalisation, the ``lamb`` mixing) follows DESIGN.md §1 exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import torch

from .cpu.inductive_scores import rerank_shortlists
from .cpu.transpose import transpose
from .graph import sorted_neighbour_lists
from .propagate import NORM_EPS, aggregate, symmetrise
from .sparse_rows import SparseRows

GRAPH_FORMAT = 1

# Database rows whose neighbour similarities are recomputed at a time.
_ROWS_PER_CHUNK = 65536


def scored_neighbour_lists(vectors: np.ndarray, neighbours: np.ndarray):
    """Exact similarities of searched neighbour lists, self ensured, re-sorted.

    Args:
        vectors: ``[g, d]`` float32 unit rows.
        neighbours: ``[g, k]`` int64 positions from any (approximate) search, -1 = none.

    Returns:
        ``(values [g, k] float32, indices [g, k] int64)``: each row holds the node itself
        (replacing the last entry when the search missed it), sorted by descending
        similarity, equal similarities by smaller position, missing entries
        (``-inf``, -1) last.
    """
    n, k = neighbours.shape
    indices = np.array(neighbours, dtype=np.int64)
    own = np.arange(n, dtype=np.int64)
    missing_self = ~(indices == own[:, None]).any(axis=1)
    indices[missing_self, -1] = own[missing_self]
    values = np.full((n, k), -np.inf, dtype=np.float32)
    x = torch.from_numpy(vectors)
    for start in range(0, n, _ROWS_PER_CHUNK):
        stop = min(n, start + _ROWS_PER_CHUNK)
        ids = torch.from_numpy(indices[start:stop])
        found = ids >= 0
        gathered = x[ids.clamp(min=0)]                       # [rows, k, d]
        sims = torch.einsum("rkd,rd->rk", gathered, x[start:stop])
        values[start:stop] = torch.where(found, sims, torch.tensor(-np.inf)).numpy()
    return sorted_neighbour_lists(values, indices)


def top_k2_weights(knn_values: np.ndarray, knn_indices: np.ndarray, k2: int):
    """The non-zeros of W: ``(w_idx [g, k2] int64, w_val [g, k2] float32)``, the squared
    similarities of each node's first k2 neighbours; missing neighbours point at the node
    itself with weight 0."""
    idx = knn_indices[:, :k2]
    own = np.arange(idx.shape[0], dtype=np.int64)[:, None]
    w_idx = np.where(idx >= 0, idx, own)
    w_val = np.where(idx >= 0, knn_values[:, :k2] ** 2, 0).astype(np.float32)
    return np.ascontiguousarray(w_idx), np.ascontiguousarray(w_val)


def _valid_rows(indices: np.ndarray, values: np.ndarray, n_cols: int) -> SparseRows:
    """CSR of the entries of ``indices [n, k]`` that are not -1."""
    keep = indices >= 0
    indptr = np.zeros(indices.shape[0] + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    return SparseRows(indptr, indices[keep], values[keep].astype(np.float32), n_cols)


def _stack_rows(matrices: list[SparseRows], n: int):
    """``[n, n]`` CSR matrices as one ``[len, n + 1]`` indptr (absolute offsets) and
    concatenated indices and values."""
    indptr = np.zeros((len(matrices), n + 1), dtype=np.int64)
    start = 0
    for r, m in enumerate(matrices):
        indptr[r] = m.indptr + start
        start += m.nnz
    indices = np.concatenate([np.zeros(0, np.int64)] + [m.indices for m in matrices])
    values = np.concatenate([np.zeros(0, np.float32)] + [m.values for m in matrices])
    return indptr, indices, values


@dataclass(frozen=True)
class InductiveGraph:
    """A database graph propagated once, for re-ranking shortlists of new queries.

    Attributes:
        k1, k2, iterations: the re-ranking parameters the graph was built with.
        ids: ``[g]`` int64 the caller's id of each database position.
        vectors: ``[g, d]`` float32 unit database rows.
        knn_values: ``[g, k1]`` float32 database-only kNN similarities (``-inf`` = none).
        knn_indices: ``[g, k1]`` int64 positions (-1 = none), self included.
        m_indptr: ``[R, g + 1]`` int64 offsets of the rows of ``M_r = A_r + A_r.T``,
            ``r < R``, into ``m_indices`` / ``m_values`` (R = the propagation rounds).
        m_indices: int64 column positions; m_values: float32.
        inv_norm: ``[R, g]`` float32 ``1 / max(|A_{r+1}[j]|, 1e-12)``.
        reverse: ``[g, g]`` rows of ``W.T``: row n lists the nodes j having n among
            their top-k2, with weight ``w_jn``.
    """

    k1: int
    k2: int
    iterations: int
    ids: np.ndarray
    vectors: np.ndarray
    knn_values: np.ndarray
    knn_indices: np.ndarray
    m_indptr: np.ndarray
    m_indices: np.ndarray
    m_values: np.ndarray
    inv_norm: np.ndarray
    reverse: SparseRows

    @property
    def n_rounds(self) -> int:
        """Propagation rounds actually run (0 when ``k2 == 1``)."""
        return 0 if self.k2 == 1 else self.iterations

    @property
    def size(self) -> int:
        return self.vectors.shape[0]

    @classmethod
    def build(cls, vectors: np.ndarray, neighbours: np.ndarray, *, k2: int, iterations: int,
              ids: np.ndarray | None = None) -> InductiveGraph:
        """Build the graph from the database's neighbour lists.

        Args:
            vectors: ``[g, d]`` float32 unit rows.
            neighbours: ``[g, k1]`` int64 positions from any search (-1 = none).
            k2, iterations: as :func:`triton_rerank.gnn_rerank` (``k2 <= k1``).
            ids: ``[g]`` int64 caller ids of the positions (default ``0 .. g-1``).
        """
        n, k1 = neighbours.shape
        ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        values, indices = scored_neighbour_lists(vectors, neighbours)
        w_idx, w_val = top_k2_weights(values, indices, k2)
        w = SparseRows.from_dense_rows(w_idx, w_val, n)
        rev_indices = np.empty(w.nnz, dtype=np.int64)
        rev_values = np.empty(w.nnz, dtype=np.float32)
        rev_indptr = transpose(w.indptr, w.indices, w.values, n, rev_indices, rev_values)

        rounds, inv_norms = [], []
        a = _valid_rows(indices, np.ones(indices.shape, np.float32), n)
        all_rows = np.arange(n, dtype=np.int64)
        for _ in range(0 if k2 == 1 else iterations):
            mixing = symmetrise(a)
            a, norms = aggregate(all_rows, w_idx, w_val, mixing, return_norms=True)
            rounds.append(mixing)
            inv_norms.append(1.0 / np.maximum(norms, np.float32(NORM_EPS)))
        del a
        m_indptr, m_indices, m_values = _stack_rows(rounds, n)
        return cls(k1, k2, iterations, ids, vectors, values, indices, m_indptr, m_indices,
                   m_values, np.array(inv_norms, dtype=np.float32).reshape(-1, n),
                   SparseRows(rev_indptr, rev_indices, rev_values, n))

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
        """
        n_batch = queries.shape[0]
        scores = np.full((n_batch, k), -np.inf, dtype=np.float32)
        positions = np.full((n_batch, k), -1, dtype=np.int64)
        w_idx, w_val = top_k2_weights(self.knn_values, self.knn_indices, self.k2)
        kth_value = np.ascontiguousarray(self.knn_values[:, -1])
        rerank_shortlists(np.ascontiguousarray(queries, dtype=np.float32),
                          np.ascontiguousarray(candidates, dtype=np.int64), self.vectors,
                          self.knn_indices, w_idx, w_val, kth_value, self.m_indptr,
                          self.m_indices, self.m_values, self.inv_norm,
                          self.reverse.indptr, self.reverse.indices, self.reverse.values,
                          self.n_rounds, np.float32(lamb), np.float32(NORM_EPS),
                          numba.get_num_threads(), scores, positions)
        return scores, positions

    def save(self, path) -> None:
        """Write the graph to ``path`` (numpy ``.npz``, uncompressed)."""
        with open(path, "wb") as f:  # np.savez would append ".npz" to a bare path
            np.savez(f, format=GRAPH_FORMAT, k1=self.k1, k2=self.k2,
                     iterations=self.iterations, ids=self.ids, vectors=self.vectors,
                     knn_values=self.knn_values, knn_indices=self.knn_indices,
                     m_indptr=self.m_indptr, m_indices=self.m_indices, m_values=self.m_values,
                     inv_norm=self.inv_norm, rev_indptr=self.reverse.indptr,
                     rev_rows=self.reverse.indices, rev_w=self.reverse.values)

    @classmethod
    def load(cls, path) -> InductiveGraph:
        """Read a graph written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a graph file, or written by an incompatible version.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no graph file at {path}")
        try:
            data = np.load(path, allow_pickle=False)
            version = int(data["format"])
        except (ValueError, KeyError, OSError) as error:
            raise ValueError(f"{path} is not a triton-rerank graph file ({error})") from None
        if version != GRAPH_FORMAT:
            raise ValueError(f"{path} has graph format {version}; this version reads "
                             f"format {GRAPH_FORMAT}: rebuild the graph")
        n = data["vectors"].shape[0]
        return cls(int(data["k1"]), int(data["k2"]), int(data["iterations"]), data["ids"],
                   data["vectors"], data["knn_values"], data["knn_indices"], data["m_indptr"],
                   data["m_indices"], data["m_values"], data["inv_norm"],
                   SparseRows(data["rev_indptr"], data["rev_rows"], data["rev_w"], n))
