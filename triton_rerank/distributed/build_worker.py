"""The shard actor of the distributed build: one shard's vectors, kNN lists and rows.

:class:`ShardBuilder` is a plain class; the driver (:mod:`triton_rerank.distributed.build`)
runs one per shard as a Ray actor. Every step it runs is a pure function of its
arguments and of the shard's saved state, and saves its own result (one ``.npz`` per
step, or per batch of a step, in the shard's checkpoint folder) before returning. So
when Ray restarts a killed actor (``__init__`` runs again: the shard is read from its
source, saved steps and batches are read back when first needed) and retries its task,
the task computes the same result and overwrites the same file: nothing is lost and
nothing is counted twice.

Memory scales with the shard (g rows), not with the database (G rows): the kNN join and
the aggregation run in batches of the shard's rows (:data:`KNN_ROWS`,
:data:`AGGREGATE_ROWS`), so a worker holds its own rows plus one or two batches of
queries, candidate lists or pulled rows at a time; the FAISS index and the vectors as
stored are dropped once they are no longer needed. What is G-sized: the ``[G]`` int64
node keys (``order.npy``) and the aggregation kernel's per-thread scratch rows.

Global positions: shard t owns positions ``offsets[t] .. offsets[t + 1] - 1``; every
column id in the saved rows is a global position. Inside the aggregation the columns are
renumbered by their key (the single-host node number): the accumulators are then touched
in the single-host build's locality order (the sums and the order of the entries do not
depend on the numbering).
"""

from __future__ import annotations

import os
import sys
import uuid
from functools import cached_property
from pathlib import Path

import numpy as np

from ..cpu.kernels.aggregate import count_row_nnz, fill_rows, row_norms
from ..cpu.kernels.canonical import canonical_list_values
from ..cpu.kernels.jit import njit
from ..cpu.neighbour_lists import sorted_neighbour_lists
from ..database.graph_file import (
    SHARD_MEMBERS,
    ArrayParts,
    database_fingerprint,
    write_graph_file,
)
from ..limits import NORM_EPS
from .row_exchange import assemble_transpose, take_rows, transpose_part
from .shard_search import (
    merge_top_k,
    product_error,
    rescored_top_k,
    select_candidates,
    shard_top_k,
)
from .shards import ShardSource, read_source

# Extra candidates asked of an approximate FAISS shard index, rescored canonically: none,
# as the single-host build asks its index for k1 (one shard then gives its lists).
APPROXIMATE_MARGIN = 0
# Query rows per batch of the kNN join (16 MB of 128-d float32 queries).
KNN_ROWS = 32768
# Own rows per batch of the aggregation: the rows of M_r of their top-k2 neighbours are
# pulled per batch (in round 1 about 2 x 100 entries x 8 B per neighbour, a few
# neighbours per row: tens of MB a batch).
AGGREGATE_ROWS = 16384


def save_arrays(path: Path, **arrays) -> None:
    """``np.savez`` to ``path`` through a temporary file and a rename (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    with open(temporary, "xb") as f:
        np.savez(f, **arrays)
    os.replace(temporary, path)


# /proc/self/status fields of memory_mb: the peak, the resident set now, and its parts
MEMORY_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem")


def memory_mb() -> dict[str, float]:
    """This process's memory, MB, by :data:`MEMORY_FIELDS` (Linux; empty elsewhere):
    ``RssFile`` is mapped libraries and files, ``RssShmem`` shared memory such as the
    pages of Ray's object store this process wrote or read."""
    found = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                name, _, rest = line.partition(":")
                if name in MEMORY_FIELDS:
                    found[name] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return found


def peak_rss_mb() -> float:
    """This process's peak resident set size, MB (Linux ``VmHWM``; 0 elsewhere)."""
    return memory_mb().get("VmHWM", 0.0)


def use_node_cores() -> int:
    """Let FAISS, numpy's BLAS and torch (where loaded) use the cores this worker may use.

    Ray sets ``OMP_NUM_THREADS`` to an actor's ``num_cpus`` (1 when it is 0, the default
    here), which would leave FAISS's searches and the float32 products on one core. The
    actor's assigned CPUs are used when it has some, else every core of the node (as the
    numba kernels do). Returns the thread count.
    """
    threads = 0
    try:
        import ray

        if ray.is_initialized():
            threads = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 0))
    except Exception:  # pragma: no cover - outside a Ray worker
        threads = 0
    if threads < 1:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    if "torch" in sys.modules:  # the actors themselves never import it (480 MB resident)
        sys.modules["torch"].set_num_threads(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads, user_api="blas")
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:  # pragma: no cover - faiss is optional
        pass
    return threads


def batch_bounds(count: int, size: int) -> list[tuple[int, int]]:
    """``[(lo, hi), ...]`` cutting ``range(count)`` into batches of ``size`` (at least one)."""
    return [(lo, min(count, lo + size)) for lo in range(0, max(count, 1), size)]


@njit(nogil=True)
def _place_rows(rows, src_indptr, src_indices, src_values, indptr, indices, values):
    """Row i of a batch (``src_*``) becomes local row ``rows[i]`` of the output CSR."""
    for i in range(rows.shape[0]):
        a = src_indptr[i]
        o = indptr[rows[i]]
        for p in range(src_indptr[i + 1] - a):
            indices[o + p] = src_indices[a + p]
            values[o + p] = src_values[a + p]


@njit(nogil=True)
def _mark_keys(indices, keys, touched):
    for p in range(indices.shape[0]):
        touched[keys[indices[p]]] = True


@njit(nogil=True)
def _map_keys(indices, keys, compact, out):
    for p in range(indices.shape[0]):
        out[p] = compact[keys[indices[p]]]


class ShardBuilder:
    """One shard of the distributed build (see the module doc).

    Args:
        shard: the shard's index t.
        source: where its vectors come from.
        offsets: ``[T + 1]`` shard boundaries in global positions.
        k1, k2, iterations, row_budget: the graph's parameters.
        work_dir: the build's checkpoint folder (this shard uses ``shard-<t>/``).
        knn_rows, aggregate_rows: rows per batch of the kNN join and of the aggregation
            (the driver cuts the batches with the same sizes).
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
        knn_rows: int = KNN_ROWS,
        aggregate_rows: int = AGGREGATE_ROWS,
    ):
        use_node_cores()
        self.knn_rows, self.aggregate_rows = knn_rows, aggregate_rows
        self.shard = shard
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.offset = int(self.offsets[shard])
        self.k1, self.k2, self.iterations, self.row_budget = k1, k2, iterations, row_budget
        stored, self.unit, ids, self.index = read_source(source)
        self.g = self.unit.shape[0]
        if self.g != self.offsets[shard + 1] - self.offset:
            raise ValueError(
                f"shard {shard} holds {self.g} rows, the build expects a different count"
            )
        self.ids = self.offset + np.arange(self.g, dtype=np.int64) if ids is None else ids
        # the vectors as stored are needed for this digest and the bounds below only
        self.fingerprint = database_fingerprint(stored, self.ids)
        self.products = self.index is not None and _gives_products(self.index)
        if self.products:  # bounds of the index's float32 products (``candidates``)
            self._bounds = _stored_bounds(stored, self.unit)
        del stored
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

    def _drop(self, step: str, *, delete: bool = False) -> None:
        """Forget a step's arrays (and delete its file)."""
        self._steps.pop(step, None)
        if delete:
            (self.folder / f"{step}.npz").unlink(missing_ok=True)

    @property
    def n_rounds(self) -> int:
        return 0 if self.k2 == 1 else self.iterations

    def rss_mb(self) -> float:
        """This worker's peak resident memory so far, MB."""
        return peak_rss_mb()

    def memory_mb(self) -> dict[str, float]:
        """This worker's :func:`memory_mb` now."""
        return memory_mb()

    # -- kNN -----------------------------------------------------------------------------
    def vectors(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """``[hi - lo, d]`` float32 the shard's canonical unit rows ``lo .. hi - 1``."""
        return self.unit[lo:hi]

    def search(self, queries: np.ndarray, k: int):
        """Canonical top-``k`` of ``queries [q, d]`` among this shard's rows: exact, or
        from the FAISS index's candidates when it is approximate (rescored canonically).
        Returns ``(values [q, k], global positions [q, k])``."""
        if self.index is not None and not _is_flat(self.index):
            _, local = self.index.search(queries, min(self.g, k + APPROXIMATE_MARGIN))
            return rescored_top_k(queries, self.unit, self.offset, local, k)
        return shard_top_k(queries, self.unit, self.offset, k)

    def candidates(self, queries: np.ndarray, k: int):
        """The approximate index's top-``k`` of ``queries [q, d]`` by its float32 inner
        products: ``(products [q, k] float32, global positions [q, k], errors [q]
        float64)``, errors bounding ``|product - canonical value|``
        (:func:`~triton_rerank.distributed.shard_search.product_error`)."""
        products, local = self.index.search(queries, min(self.g, k))
        products = np.where(local >= 0, products, -np.inf).astype(np.float32)
        positions = np.where(local >= 0, local + self.offset, -1)
        return products, positions, product_error(queries, *self._bounds)

    def select(self, k: int, *lists):
        """The candidates of :meth:`candidates` (one ``lists`` entry per shard) that can
        be in each query's canonical top-``k``, per shard (-1 elsewhere)."""
        errors = np.max(np.stack([e for _, _, e in lists]), axis=0)
        return _returns(select_candidates([(v, p) for v, p, _ in lists], errors, k))

    def rescore(self, queries: np.ndarray, positions: np.ndarray, k: int):
        """Canonical values of owned global ``positions [q, c]`` (-1 = none) for
        ``queries [q, d]``: ``(values [q, k], positions [q, k])`` by the tie rule."""
        local = np.where(positions >= 0, positions - self.offset, -1)
        values, positions = rescored_top_k(queries, self.unit, self.offset, local, local.shape[1])
        return values[:, :k], positions[:, :k]

    def search_kind(self) -> str:
        """``"products"`` when :meth:`candidates` applies (an approximate inner-product
        index), else ``"canonical"`` (:meth:`search`)."""
        return "products" if self.products else "canonical"

    def merge_knn(self, lo: int, hi: int, *lists) -> None:
        """Save the kNN lists over the whole database of the shard's rows ``lo .. hi - 1``
        from every shard's search results (``lists``: ``(values [b, k1], positions
        [b, k1])`` per shard): the merge under the tie rule, the node itself ensured (as
        ``scored_neighbour_lists`` does on one host)."""
        values, indices = merge_top_k(lists, self.k1)
        own = self.offset + np.arange(lo, hi, dtype=np.int64)
        missing = np.flatnonzero(~(indices == own[:, None]).any(axis=1))
        if missing.size:
            rows = self.unit[lo + missing]
            self_values = np.empty((missing.size, 1), dtype=np.float32)
            diagonal = np.arange(missing.size, dtype=np.int64)[:, None]
            canonical_list_values(rows, rows, diagonal, self_values)
            values[missing, -1] = self_values[:, 0]
            indices[missing, -1] = own[missing]
            values, indices = sorted_neighbour_lists(values, indices)
        self._save(f"knn-{lo}", values=values, indices=indices)

    def finish_knn(self) -> None:
        """Join the batches of :meth:`merge_knn` into the shard's ``[g, k1]`` lists; the
        FAISS index is not needed any more."""
        batches = [self._step(f"knn-{lo}") for lo, _ in batch_bounds(self.g, self.knn_rows)]
        values = np.concatenate([b["values"] for b in batches])
        indices = np.concatenate([b["indices"] for b in batches])
        del batches
        self._save("knn", values=values, indices=indices)
        for lo, _ in batch_bounds(self.g, self.knn_rows):
            self._drop(f"knn-{lo}", delete=True)
        self.index = None

    @cached_property
    def _weights(self):
        """``(w_idx [g, k2], w_val [g, k2])``: the top-k2 neighbours and squared weights."""
        knn = self._step("knn")
        idx = knn["indices"][:, : self.k2]
        own = self.offset + np.arange(self.g, dtype=np.int64)[:, None]
        w_idx = np.ascontiguousarray(np.where(idx >= 0, idx, own))
        w_val = np.where(idx >= 0, knn["values"][:, : self.k2] ** 2, 0).astype(np.float32)
        return w_idx, np.ascontiguousarray(w_val)

    # -- reverse edges -------------------------------------------------------------------
    def weight_part(self, owner: int):
        """Shard ``owner``'s part of the transpose of this shard's W rows."""
        w_idx, w_val = self._weights
        indptr = np.arange(0, w_idx.size + 1, self.k2, dtype=np.int64)
        return transpose_part(
            indptr, w_idx.ravel(), w_val.ravel(), self.offset, self.offsets, owner
        )

    def assemble_reverse(self, *parts) -> None:
        indptr, rows, weights = assemble_transpose(parts)
        self._save("reverse", indptr=indptr, rows=rows, weights=weights)

    # -- propagation rounds --------------------------------------------------------------
    def _a_rows(self, r: int):
        """``(indptr [g + 1], indices int32, values)`` of this shard's rows of A_r."""
        if r == 0 and "round0-a" not in self._steps:  # derived from the kNN lists
            indices = self._step("knn")["indices"]
            keep = indices >= 0
            indptr = np.zeros(self.g + 1, dtype=np.int64)
            np.cumsum(keep.sum(axis=1), out=indptr[1:])
            flat = indices[keep].astype(np.int32)
            values = np.ones(flat.shape[0], dtype=np.float32)
            self._steps["round0-a"] = {"indptr": indptr, "indices": flat, "values": values}
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

    @cached_property
    def _key_positions(self) -> np.ndarray:
        """``[G]`` int64 the inverse of :attr:`_source_keys` (key -> global position)."""
        keys = self._source_keys
        positions = np.empty(keys.shape[0], dtype=np.int64)
        positions[keys] = np.arange(keys.shape[0], dtype=np.int64)
        return positions

    @cached_property
    def _visit(self) -> np.ndarray:
        """``[g]`` int64 the shard's local rows by ascending key: the aggregation's row
        order (neighbouring rows together, as the single-host build numbers them)."""
        return np.argsort(self._source_keys[self.offset : self.offset + self.g], kind="stable")

    def round_part(self, r: int, owner: int):
        """Shard ``owner``'s part of the transpose of this shard's rows of A_r."""
        return transpose_part(*self._a_rows(r), self.offset, self.offsets, owner, self._visit)

    def assemble_round_transpose(self, r: int, *parts) -> None:
        indptr, indices, values = assemble_transpose(parts, np.int32, self._source_keys)
        del parts
        self._save(f"round{r}-t", indptr=indptr, indices=indices, values=values)

    def _batch_rows(self, lo: int, hi: int) -> np.ndarray:
        """Local rows of aggregation batch ``lo .. hi - 1`` (positions in :attr:`_visit`)."""
        return self._visit[lo:hi]

    def needed_nodes(self, lo: int, hi: int):
        """The global nodes whose rows aggregation batch ``lo .. hi - 1`` reads (its rows'
        top-k2 neighbours), one array per owner shard, by ascending key."""
        return _returns(self._needed(lo, hi)[0])

    def _needed(self, lo: int, hi: int):
        """``(parts, local)``: :meth:`needed_nodes` as a list, and ``[b, k2]`` int64 the
        index of each top-k2 neighbour of the batch's rows in the parts concatenated."""
        w_idx = self._weights[0][self._batch_rows(lo, hi)]
        nodes, inverse = np.unique(w_idx, return_inverse=True)
        bounds = np.searchsorted(nodes, self.offsets)
        # each owner's nodes by key: the pulled rows then lie in the single-host row order
        keys = self._source_keys
        perm = np.concatenate(
            [
                bounds[t] + np.argsort(keys[nodes[bounds[t] : bounds[t + 1]]], kind="stable")
                for t in range(len(self.offsets) - 1)
            ]
        )
        rank = np.empty(nodes.shape[0], dtype=np.int64)
        rank[perm] = np.arange(nodes.shape[0], dtype=np.int64)
        nodes = nodes[perm]
        parts = [nodes[bounds[t] : bounds[t + 1]] for t in range(len(self.offsets) - 1)]
        return parts, rank[inverse.reshape(-1)].reshape(w_idx.shape)

    @cached_property
    def _keys32(self) -> np.ndarray:
        """:attr:`_source_keys` as int32 (the aggregation's column ids)."""
        return self._source_keys.astype(np.int32)

    def round_rows(self, r: int, nodes: np.ndarray):
        """Rows ``A_r[n]`` and ``A_r.T[n]`` of owned global ``nodes [m]``:
        ``(a_counts, a_indices, a_values, t_counts, t_indices, t_values)``."""
        local = np.asarray(nodes, dtype=np.int64) - self.offset
        t = self._step(f"round{r}-t")
        return (
            *take_rows(*self._a_rows(r), local),
            *take_rows(t["indptr"], t["indices"], t["values"], local),
        )

    def aggregate(self, r: int, lo: int, hi: int, *blocks) -> None:
        """``A_{r+1} = normalise(W @ M_r)`` for aggregation batch ``lo .. hi - 1`` (cut to
        the row budget) from the pulled rows of ``M_r``, and the norms; the last round
        keeps the norms only. ``blocks``: :meth:`round_rows` of each owner for
        :meth:`needed_nodes`. Saved as ``agg<r>-<lo>`` (rows in batch order)."""
        w_val = self._weights[1][self._batch_rows(lo, hi)]
        parts, local = self._needed(lo, hi)
        m = sum(p.shape[0] for p in parts)
        # pulled rows: A_r[nodes[i]] is row i, A_r.T[nodes[i]] is row m + i (nodes: the
        # parts concatenated); their columns renumbered 0 .. n_cols - 1 by ascending key
        # (the batch's accumulators hold only the columns it touches)
        halves = [(b[0], b[1], b[2]) for b in blocks] + [(b[3], b[4], b[5]) for b in blocks]
        del blocks
        s_indptr = np.zeros(2 * m + 1, dtype=np.int64)
        np.cumsum(np.concatenate([h[0] for h in halves]), out=s_indptr[1:])
        touched = np.zeros(self.offsets[-1], dtype=np.bool_)
        for _, indices, _ in halves:
            _mark_keys(indices, self._keys32, touched)
        columns = np.flatnonzero(touched).astype(np.int32)  # the keys touched, ascending
        del touched
        compact = np.empty(self.offsets[-1], dtype=np.int32)
        compact[columns] = np.arange(columns.shape[0], dtype=np.int32)
        s_indices = np.empty(s_indptr[-1], dtype=np.int32)
        s_values = np.empty(s_indptr[-1], dtype=np.float32)
        start = 0
        for _, indices, values in halves:
            stop = start + indices.shape[0]
            _map_keys(indices, self._keys32, compact, s_indices[start:stop])
            s_values[start:stop] = values
            start = stop
        del halves, compact
        w2_idx = np.ascontiguousarray(np.concatenate([local, local + m], axis=1))
        w2_val = np.ascontiguousarray(np.concatenate([w_val, w_val], axis=1))
        batch = np.arange(hi - lo, dtype=np.int64)
        n_cols = columns.shape[0]
        if r == self.n_rounds - 1:  # the last round's rows are never stored
            norms = row_norms(batch, w2_idx, w2_val, s_indptr, s_indices, s_values, n_cols)
            self._save(f"agg{r}-{lo}", norms=norms)
            return
        row_counts = count_row_nnz(batch, w2_idx, s_indptr, s_indices, n_cols)
        indptr = np.zeros(hi - lo + 1, dtype=np.int64)
        np.cumsum(np.minimum(row_counts, self.row_budget), out=indptr[1:])
        out_indices = np.empty(indptr[-1], dtype=np.int32)
        out_values = np.empty(indptr[-1], dtype=np.float32)
        norms = np.empty(hi - lo, dtype=np.float32)
        fill_rows(
            batch,
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
        out_indices = self._key_positions[columns[out_indices]].astype(np.int32)  # positions
        self._save(
            f"agg{r}-{lo}", indptr=indptr, indices=out_indices, values=out_values, norms=norms
        )

    def finish_aggregate(self, r: int) -> None:
        """Join the batches of round r's :meth:`aggregate` into the shard's rows of
        ``A_{r+1}`` (in local order) and norms."""
        bounds = batch_bounds(self.g, self.aggregate_rows)
        norms = np.empty(self.g, dtype=np.float32)
        last = r == self.n_rounds - 1
        counts = np.zeros(self.g, dtype=np.int64)
        for lo, hi in bounds:
            batch = self._step(f"agg{r}-{lo}")
            norms[self._visit[lo:hi]] = batch["norms"]
            if not last:
                counts[self._visit[lo:hi]] = np.diff(batch["indptr"])
        if not last:
            indptr = np.zeros(self.g + 1, dtype=np.int64)
            np.cumsum(counts, out=indptr[1:])
            indices = np.empty(indptr[-1], dtype=np.int32)
            values = np.empty(indptr[-1], dtype=np.float32)
            for lo, hi in bounds:
                batch = self._step(f"agg{r}-{lo}")
                _place_rows(
                    self._visit[lo:hi],
                    batch["indptr"],
                    batch["indices"],
                    batch["values"],
                    indptr,
                    indices,
                    values,
                )
                self._drop(f"agg{r}-{lo}")
            self._save(f"round{r + 1}-a", indptr=indptr, indices=indices, values=values)
        self._save(f"norms{r}", norms=norms)
        for lo, _ in bounds:
            self._drop(f"agg{r}-{lo}", delete=True)

    # -- output --------------------------------------------------------------------------
    def write_shard(self, path: str) -> None:
        """Write this shard's graph file (``graph_file.SHARD_MEMBERS``). The rows of every
        round go into the file part by part (``graph_file.ArrayParts``), never joined in
        memory; each round's rows are forgotten once written (the peak is the file's
        content, not twice the rows)."""
        knn = self._step("knn")
        rev = self._step("reverse")
        halves = [(r, half) for r in range(self.n_rounds) for half in ("a", "t")]
        m_indptr = np.empty((self.n_rounds, 2 * self.g + 1), dtype=np.int64)
        start = 0
        for r, half in halves:
            indptr = self._half(r, half)[0]
            if half == "a":
                m_indptr[r, : self.g + 1] = indptr + start
            else:
                m_indptr[r, self.g + 1 :] = indptr[1:] + start
            start += int(indptr[-1])

        def column(which: int):
            for r, half in halves:
                yield self._half(r, half)[which]
                if which == 2:  # the values go out last: this half is written
                    self._drop(f"round{r}-{half}")

        inv_norm = np.empty((self.n_rounds, self.g), dtype=np.float32)
        for r in range(self.n_rounds):
            inv_norm[r] = 1.0 / np.maximum(self._step(f"norms{r}")["norms"], np.float32(NORM_EPS))
        write_graph_file(
            path,
            {
                "k1": self.k1,
                "k2": self.k2,
                "iterations": self.iterations,
                "row_budget": self.row_budget,
                "fingerprint": self.fingerprint,
                "ids": self.ids,
                "caller_position": np.arange(self.g, dtype=np.int64),
                "vectors": self.unit,
                "knn_values": knn["values"],
                "knn_indices": knn["indices"],
                "m_indptr": m_indptr,
                "m_indices": ArrayParts(np.int32, start, column(1)),
                "m_values": ArrayParts(np.float32, start, column(2)),
                "inv_norm": inv_norm,
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

    def _half(self, r: int, half: str):
        """``(indptr, indices, values)`` of this shard's rows of ``A_r`` (``half="a"``) or
        of ``A_r.T`` (``"t"``)."""
        if half == "a":
            return self._a_rows(r)
        t = self._step(f"round{r}-t")
        return t["indptr"], t["indices"], t["values"]


def _returns(parts: list):
    """A list of per-shard results as a task with ``num_returns=T`` returns it (a single
    value when T = 1)."""
    return parts[0] if len(parts) == 1 else tuple(parts)


def _is_flat(index) -> bool:
    import faiss

    return isinstance(faiss.downcast_index(index), (faiss.IndexFlat,))


def _gives_products(index) -> bool:
    """An approximate FAISS index whose search returns inner products."""
    import faiss

    return not _is_flat(index) and index.metric_type == faiss.METRIC_INNER_PRODUCT


def _stored_bounds(stored: np.ndarray, unit: np.ndarray) -> tuple[float, float, float]:
    """``(largest |stored_j|, largest |stored_j - unit_j|, largest |unit_j|)``, float64,
    rounded up (the inputs of ``shard_search.product_error``)."""
    norms, shifts, units = [], [], []
    for lo in range(0, stored.shape[0], 65536):
        s = stored[lo : lo + 65536].astype(np.float64)
        u = unit[lo : lo + 65536].astype(np.float64)
        norms.append(np.linalg.norm(s, axis=1).max(initial=0.0))
        shifts.append(np.linalg.norm(s - u, axis=1).max(initial=0.0))
        units.append(np.linalg.norm(u, axis=1).max(initial=0.0))
    slack = 1 + 1e-9
    return max(norms) * slack, max(shifts) * slack + 1e-300, max(units) * slack
