"""The shard actor of the distributed build: one shard's vectors, kNN lists and rows.

:class:`ShardBuilder` is a plain class; the driver (:mod:`triton_rerank.distributed.build`)
runs one per shard as a Ray actor. Every step it runs is a pure function of its
arguments and of the shard's saved state, and saves its own result (one ``.npz`` per
step in the shard's checkpoint folder) before returning. So when Ray restarts a killed
actor (``__init__`` runs again: the shard is read from its source, saved steps are read
back when first needed) and retries its task, the task computes the same result and
overwrites the same file: nothing is lost and nothing is counted twice.

Global positions: shard t owns positions ``offsets[t] .. offsets[t + 1] - 1``; every
column id in the saved rows is a global position.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

from ..cpu.kernels.aggregate import count_row_nnz, fill_rows, row_norms
from ..cpu.kernels.canonical import canonical_list_values
from ..cpu.knn import sorted_neighbour_lists
from ..database.graph_file import SHARD_MEMBERS, database_fingerprint, write_graph_file
from ..limits import NORM_EPS
from .row_exchange import assemble_transpose, take_rows, transpose_parts
from .shard_search import merge_top_k, rescored_top_k, shard_top_k
from .shards import ShardSource, read_source

# Extra candidates asked of an approximate FAISS shard index, rescored canonically.
APPROXIMATE_MARGIN = 8


def save_arrays(path: Path, **arrays) -> None:
    """``np.savez`` to ``path`` through a temporary file and a rename (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    with open(temporary, "xb") as f:
        np.savez(f, **arrays)
    os.replace(temporary, path)


def peak_rss_mb() -> float:
    """This process's peak resident set size, MB (Linux ``VmHWM``; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class ShardBuilder:
    """One shard of the distributed build (see the module doc).

    Args:
        shard: the shard's index t.
        source: where its vectors come from.
        offsets: ``[T + 1]`` shard boundaries in global positions.
        k1, k2, iterations, row_budget: the graph's parameters.
        work_dir: the build's checkpoint folder (this shard uses ``shard-<t>/``).
    """

    def __init__(
        self,
        shard: int,
        source: ShardSource,
        offsets,
        *,
        k1: int,
        k2: int,
        iterations: int,
        row_budget: int,
        work_dir: str,
    ):
        self.shard = shard
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.offset = int(self.offsets[shard])
        self.k1, self.k2, self.iterations, self.row_budget = k1, k2, iterations, row_budget
        self.stored, self.unit, ids, self.index = read_source(source)
        self.g = self.unit.shape[0]
        if self.g != self.offsets[shard + 1] - self.offset:
            raise ValueError(
                f"shard {shard} holds {self.g} rows, the build expects a different count"
            )
        self.ids = self.offset + np.arange(self.g, dtype=np.int64) if ids is None else ids
        self.folder = Path(work_dir) / f"shard-{shard:04d}"
        self._steps: dict[str, dict] = {}

    # -- saved state ---------------------------------------------------------------------
    def _save(self, step: str, **arrays) -> None:
        save_arrays(self.folder / f"{step}.npz", **arrays)
        self._steps[step] = arrays

    def _step(self, step: str) -> dict:
        if step not in self._steps:
            with np.load(self.folder / f"{step}.npz") as saved:
                self._steps[step] = {name: saved[name] for name in saved.files}
        return self._steps[step]

    @property
    def n_rounds(self) -> int:
        return 0 if self.k2 == 1 else self.iterations

    def rss_mb(self) -> float:
        """This worker's peak resident memory so far, MB."""
        return peak_rss_mb()

    # -- kNN -----------------------------------------------------------------------------
    def vectors(self) -> np.ndarray:
        """``[g, d]`` float32 the shard's canonical unit rows."""
        return self.unit

    def search(self, queries: np.ndarray, k: int):
        """Canonical top-``k`` of ``queries [q, d]`` among this shard's rows: exact, or
        from the FAISS index's candidates when it is approximate (rescored canonically).
        Returns ``(values [q, k], global positions [q, k])``."""
        if self.index is not None and not _is_flat(self.index):
            _, local = self.index.search(queries, min(self.g, k + APPROXIMATE_MARGIN))
            return rescored_top_k(queries, self.unit, self.offset, local, k)
        return shard_top_k(queries, self.unit, self.offset, k)

    def merge_knn(self, *lists) -> None:
        """Save the shard's kNN lists over the whole database from every shard's search
        results: the merge under the tie rule, the node itself ensured (as
        ``scored_neighbour_lists`` does on one host)."""
        values, indices = merge_top_k(lists, self.k1)
        own = self.offset + np.arange(self.g, dtype=np.int64)
        missing = np.flatnonzero(~(indices == own[:, None]).any(axis=1))
        if missing.size:
            rows = self.unit[missing]
            self_values = np.empty((missing.size, 1), dtype=np.float32)
            diagonal = np.arange(missing.size, dtype=np.int64)[:, None]
            canonical_list_values(rows, rows, diagonal, self_values)
            values[missing, -1] = self_values[:, 0]
            indices[missing, -1] = own[missing]
            values, indices = sorted_neighbour_lists(values, indices)
        self._save("knn", values=values, indices=indices)

    def _weights(self):
        """``(w_idx [g, k2], w_val [g, k2])``: the top-k2 neighbours and squared weights."""
        knn = self._step("knn")
        idx = knn["indices"][:, : self.k2]
        own = self.offset + np.arange(self.g, dtype=np.int64)[:, None]
        w_idx = np.ascontiguousarray(np.where(idx >= 0, idx, own))
        w_val = np.where(idx >= 0, knn["values"][:, : self.k2] ** 2, 0).astype(np.float32)
        return w_idx, np.ascontiguousarray(w_val)

    # -- reverse edges -------------------------------------------------------------------
    def weight_parts(self):
        """The transpose of this shard's W rows, one part per owner shard."""
        w_idx, w_val = self._weights()
        indptr = np.arange(0, w_idx.size + 1, self.k2, dtype=np.int64)
        return _returns(
            transpose_parts(indptr, w_idx.ravel(), w_val.ravel(), self.offset, self.offsets)
        )

    def assemble_reverse(self, *parts) -> None:
        indptr, rows, weights = assemble_transpose(parts)
        self._save("reverse", indptr=indptr, rows=rows, weights=weights)

    # -- propagation rounds --------------------------------------------------------------
    def _a_rows(self, r: int):
        """``(indptr [g + 1], indices int32, values)`` of this shard's rows of A_r."""
        if r == 0:
            indices = self._step("knn")["indices"]
            keep = indices >= 0
            indptr = np.zeros(self.g + 1, dtype=np.int64)
            np.cumsum(keep.sum(axis=1), out=indptr[1:])
            flat = indices[keep].astype(np.int32)
            return indptr, flat, np.ones(flat.shape[0], dtype=np.float32)
        step = self._step(f"round{r}-a")
        return step["indptr"], step["indices"], step["values"]

    def knn_indices(self) -> np.ndarray:
        """``[g, k1]`` int64 the shard's kNN lists (global positions)."""
        return self._step("knn")["indices"]

    @property
    def _source_keys(self) -> np.ndarray:
        """``[G]`` int64 the order of the sources in a transposed row (the build's
        ``order.npy``: the single-host node numbers, or the positions)."""
        if "order" not in self._steps:
            self._steps["order"] = {"keys": np.load(self.folder.parent / "order.npy")}
        return self._steps["order"]["keys"]

    def round_parts(self, r: int):
        """The transpose of this shard's rows of A_r, one part per owner shard."""
        return _returns(
            transpose_parts(*self._a_rows(r), self.offset, self.offsets, self._source_keys)
        )

    def assemble_round_transpose(self, r: int, *parts) -> None:
        indptr, indices, values = assemble_transpose(parts, np.int32, self._source_keys)
        self._save(f"round{r}-t", indptr=indptr, indices=indices, values=values)

    def needed_nodes(self):
        """The global nodes whose rows this shard's aggregation reads (its top-k2
        neighbours), one sorted array per owner shard."""
        nodes = np.unique(self._weights()[0])
        bounds = np.searchsorted(nodes, self.offsets)
        return _returns([nodes[bounds[t] : bounds[t + 1]] for t in range(len(self.offsets) - 1)])

    def round_rows(self, r: int, nodes: np.ndarray):
        """Rows ``A_r[n]`` and ``A_r.T[n]`` of owned global ``nodes [m]``:
        ``(a_counts, a_indices, a_values, t_counts, t_indices, t_values)``."""
        local = np.asarray(nodes, dtype=np.int64) - self.offset
        t = self._step(f"round{r}-t")
        return (
            *take_rows(*self._a_rows(r), local),
            *take_rows(t["indptr"], t["indices"], t["values"], local),
        )

    def aggregate(self, r: int, *blocks) -> None:
        """``A_{r+1} = normalise(W @ M_r)`` for this shard's rows (cut to the row budget)
        from the pulled rows of ``M_r``, and the norms; the last round keeps the norms
        only. ``blocks``: :meth:`round_rows` of each owner for :meth:`needed_nodes`."""
        nodes = np.unique(self._weights()[0])
        m = nodes.shape[0]
        # local rows: A_r[nodes[i]] is row i, A_r.T[nodes[i]] is row m + i
        counts = np.concatenate(
            [np.concatenate([b[0] for b in blocks]), np.concatenate([b[3] for b in blocks])]
        )
        s_indptr = np.zeros(2 * m + 1, dtype=np.int64)
        np.cumsum(counts, out=s_indptr[1:])
        s_indices = np.concatenate([b[1] for b in blocks] + [b[4] for b in blocks])
        s_values = np.concatenate([b[2] for b in blocks] + [b[5] for b in blocks])
        s_indices = np.ascontiguousarray(s_indices, dtype=np.int32)
        w_idx, w_val = self._weights()
        local = np.searchsorted(nodes, w_idx)
        w2_idx = np.ascontiguousarray(np.concatenate([local, local + m], axis=1))
        w2_val = np.ascontiguousarray(np.concatenate([w_val, w_val], axis=1))
        rows = np.arange(self.g, dtype=np.int64)
        n_cols = int(self.offsets[-1])
        if r == self.n_rounds - 1:  # the last round's rows are never stored
            norms = row_norms(rows, w2_idx, w2_val, s_indptr, s_indices, s_values, n_cols)
            self._save(f"norms{r}", norms=norms)
            return
        row_counts = count_row_nnz(rows, w2_idx, s_indptr, s_indices, n_cols)
        indptr = np.zeros(self.g + 1, dtype=np.int64)
        np.cumsum(np.minimum(row_counts, self.row_budget), out=indptr[1:])
        out_indices = np.empty(indptr[-1], dtype=np.int32)
        out_values = np.empty(indptr[-1], dtype=np.float32)
        norms = np.empty(self.g, dtype=np.float32)
        fill_rows(
            rows,
            w2_idx,
            w2_val,
            s_indptr,
            s_indices,
            s_values,
            n_cols,
            indptr,
            out_indices,
            out_values,
            norms,
            True,
            np.float32(NORM_EPS),
        )
        self._save(f"round{r + 1}-a", indptr=indptr, indices=out_indices, values=out_values)
        self._save(f"norms{r}", norms=norms)

    # -- output --------------------------------------------------------------------------
    def write_shard(self, path: str) -> None:
        """Write this shard's graph file (``graph_file.SHARD_MEMBERS``)."""
        knn = self._step("knn")
        rev = self._step("reverse")
        m_indptr, m_indices, m_values, start = [], [], [], 0
        for r in range(self.n_rounds):
            a_indptr, a_indices, a_values = self._a_rows(r)
            t = self._step(f"round{r}-t")
            nnz = int(a_indptr[-1])
            m_indptr.append(np.concatenate([a_indptr, t["indptr"][1:] + nnz]) + start)
            m_indices += [a_indices, t["indices"]]
            m_values += [a_values, t["values"]]
            start += nnz + int(t["indptr"][-1])
        inv_norm = [
            1.0 / np.maximum(self._step(f"norms{r}")["norms"], np.float32(NORM_EPS))
            for r in range(self.n_rounds)
        ]
        write_graph_file(
            path,
            {
                "k1": self.k1,
                "k2": self.k2,
                "iterations": self.iterations,
                "row_budget": self.row_budget,
                "fingerprint": database_fingerprint(self.stored, self.ids),
                "ids": self.ids,
                "caller_position": np.arange(self.g, dtype=np.int64),
                "vectors": self.unit,
                "knn_values": knn["values"],
                "knn_indices": knn["indices"],
                "m_indptr": np.array(m_indptr, dtype=np.int64).reshape(-1, 2 * self.g + 1),
                "m_indices": np.concatenate(m_indices) if m_indices else np.zeros(0, np.int32),
                "m_values": np.concatenate(m_values) if m_values else np.zeros(0, np.float32),
                "inv_norm": np.array(inv_norm, dtype=np.float32).reshape(-1, self.g),
                "rev_indptr": rev["indptr"],
                "rev_rows": rev["rows"],
                "rev_w": rev["weights"],
                "shard_index": self.shard,
                "shard_count": len(self.offsets) - 1,
                "shard_offset": self.offset,
                "database_size": int(self.offsets[-1]),
            },
            SHARD_MEMBERS,
        )


def _returns(parts: list):
    """A list of per-shard results as a task with ``num_returns=T`` returns it (a single
    value when T = 1)."""
    return parts[0] if len(parts) == 1 else tuple(parts)


def _is_flat(index) -> bool:
    import faiss

    return isinstance(faiss.downcast_index(index), (faiss.IndexFlat,))
