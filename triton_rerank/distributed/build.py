"""The distributed build of the inductive database graph on a Ray cluster.

The database is given as shards; shard t holds global positions ``offsets[t] ..
offsets[t + 1] - 1`` (shards in order). One
:class:`~triton_rerank.distributed.build_worker.ShardBuilder` actor per shard holds its
vectors. The driver runs the steps of
``InductiveGraph.build`` shard by shard, moving data between actors through Ray's object
store (it never gathers the graph itself):

1. ``knn``: each shard's vectors are searched on every shard (canonical top-k1 per
   shard, global positions) and the owner merges the lists under the tie rule: the
   lists of a single-host canonical kNN when the shard searches are exact. With
   approximate inner-product indexes, two passes: float32 candidates from every shard,
   then canonical values only for those that can be in the top-k1 (see ``_knn``).
2. ``reverse``: the rows of ``W.T`` (the reverse top-k2 lists), exchanged between shards
   owner by owner (the object store holds one owner's parts at a time).
3. per propagation round r: ``round{r}-t``, the rows of ``A_r.T`` exchanged; then
   ``aggregate{r}``, each shard pulling the rows ``M_r[n] = A_r[n] + A_r.T[n]`` of its
   nodes' top-k2 neighbours from their owners and computing its rows of ``A_{r+1}`` (cut
   to the row budget) and their norms (the last round: the norms only).
4. ``write``: each shard writes its graph file (:mod:`triton_rerank.distributed.graph_shards`).

The kNN join and the aggregation run in batches of each shard's rows (``knn_rows``,
``aggregate_rows``), two waves of kNN batches in flight and one of aggregation batches
(the transposes move owner by owner), so that what a worker holds beyond its own rows,
in its memory and in the object store pages it maps, is bounded by the batch sizes, not
by the database.

Faults: actors are started with ``max_restarts`` and their tasks with
``max_task_retries``; a restarted actor reads its shard again and its saved steps back
(see ``build_worker``), and the retried task gives the same result. The driver records
each finished step in ``progress.json`` in the work folder: if the driver dies, its
actors die with it, and calling :func:`build_sharded_graph` again with the same
``work_dir`` resumes after the last finished step.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..cpu.propagation import locality_order
from .build_worker import AGGREGATE_ROWS, KNN_ROWS, ShardBuilder, batch_bounds
from .graph_shards import ShardedGraph, shard_file_name
from .shards import as_source, read_source

PROGRESS = "progress.json"


def ray_module():
    """``ray``, imported on first use (the ``ray`` extra), with a clear error without it."""
    try:
        import ray
    except ImportError as error:  # pragma: no cover - exercised only without ray
        raise ImportError(
            "triton_rerank.distributed needs Ray: pip install 'triton-rerank[ray]'"
        ) from error
    return ray


def _shard_sizes(sources) -> list[int]:
    """Rows per shard, reading each source once on the driver only when needed."""
    sizes = []
    for source in sources:
        if source.kind == "array":
            sizes.append(int(np.asarray(source.data[0]).shape[0]))
        elif source.kind == "npy":
            sizes.append(int(np.load(source.data, mmap_mode="r").shape[0]))
        elif source.kind == "blocks":
            ray = ray_module()
            sizes.append(sum(len(b["id"]) for b in ray.get(list(source.data))))
        else:
            sizes.append(int(read_source(source)[1].shape[0]))
    return sizes


# glibc's allocator in the shard actors: a fixed mmap threshold hands freed arrays back
# to the system at once (by default the threshold grows as large arrays are freed, and
# later ones stay in the heap after use), and two arenas instead of one per thread.
# Measured at 1M x 128 with 4 shards: 530 MB less resident per worker after the kNN join.
ACTOR_ENV_VARS = {"MALLOC_MMAP_THRESHOLD_": "262144", "MALLOC_ARENA_MAX": "2"}


def actor_options_with_defaults(actor_options: dict | None) -> dict:
    """The ``ray.remote`` options of the shard actors: the caller's, over the defaults
    (no CPUs reserved, spread over the nodes, :data:`ACTOR_ENV_VARS` in the
    ``runtime_env``, where the caller's variables win)."""
    options = {"num_cpus": 0, "scheduling_strategy": "SPREAD", **(actor_options or {})}
    runtime_env = dict(options.get("runtime_env") or {})
    runtime_env["env_vars"] = {**ACTOR_ENV_VARS, **(runtime_env.get("env_vars") or {})}
    options["runtime_env"] = runtime_env
    return options


def _one_or_many(refs, count: int) -> list:
    return [refs] if count == 1 else list(refs)


def build_sharded_graph(
    shards,
    out_dir,
    *,
    k1: int = 26,
    k2: int = 7,
    iterations: int = 2,
    row_budget: int = 128,
    work_dir=None,
    max_restarts: int = -1,
    actor_options: dict | None = None,
    single_host_order: bool = True,
    on_step: Callable | None = None,
    knn_rows: int = KNN_ROWS,
    aggregate_rows: int = AGGREGATE_ROWS,
) -> ShardedGraph:
    """Build the inductive graph of a sharded database on the Ray cluster ``ray.init``
    connected to (see the module doc).

    Args:
        shards: the shards in order: ``[n_t, d]`` arrays, ``(vectors, ids)`` pairs,
            ``.npy`` or FAISS index file paths, or
            :class:`~triton_rerank.distributed.shards.ShardSource` (``sources_from_dataset``
            for a Ray Dataset).
        out_dir: folder for the shard files and the manifest (every node must see it).
        k1, k2, iterations, row_budget: as ``InductiveGraph.build``.
        work_dir: checkpoint folder (every node must see it); a rerun with the same one
            resumes. Default: a new temporary folder.
        max_restarts: how often Ray restarts a dead shard actor (-1: always).
        actor_options: extra ``ray.remote`` options of the actors (e.g. ``num_cpus``,
            ``memory``); default ``{"num_cpus": 0, "scheduling_strategy": "SPREAD"}``
            (shards spread over the nodes; their kernels use the node's cores) and the
            allocator settings :data:`ACTOR_ENV_VARS` in the ``runtime_env``.
        single_host_order: order the entries of transposed rows as the single-host
            build numbers its nodes (its locality order, computed on the driver from
            every kNN list: ``G * k1`` int64), so that the rows equal the single-host
            rows. False: by global position, nothing gathered on the driver; the rows
            then differ from the single-host ones only in which of several equal
            entries at a row's budget are kept.
        on_step: called as ``on_step(step, actors)`` once a step's tasks are submitted,
            before the driver waits for them (progress reports; the fault tests kill an
            actor there).
        knn_rows, aggregate_rows: a shard's rows per batch of the kNN join and of the
            aggregation: what a worker holds beyond its own rows (queries and lists of one
            batch; the pulled rows of one batch) scales with these, not with the database.

    Returns:
        The :class:`~triton_rerank.distributed.graph_shards.ShardedGraph`; ``report``
        attributes are in its manifest folder's ``build_report.json`` (seconds per step,
        peak RSS per worker, at the end and after each step, each worker's resident memory
        by kind after each step (``build_worker.memory_mb``), the steps resumed).
    """
    ray = ray_module()
    sources = [as_source(s) for s in shards]
    n_shards = len(sources)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = (
        Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="rerank-build-"))
    )
    work_dir.mkdir(parents=True, exist_ok=True)
    sizes = _shard_sizes(sources)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    if not 1 <= k2 <= k1 <= offsets[-1]:
        raise ValueError(
            f"need 1 <= k2 <= k1 <= database size, got k1={k1}, k2={k2}, size {offsets[-1]}"
        )
    params = {"k1": k1, "k2": k2, "iterations": iterations, "row_budget": row_budget}
    done = _resumable_steps(work_dir / PROGRESS, params, sizes)
    resumed = list(done)

    options = actor_options_with_defaults(actor_options)
    remote = ray.remote(ShardBuilder).options(
        max_restarts=max_restarts, max_task_retries=-1 if max_restarts else 0, **options
    )
    # array shards go to the object store once; the driver's reference keeps them alive
    # for actor restarts
    placed = [s if s.kind != "array" else type(s)(s.kind, ray.put(s.data)) for s in sources]
    actors = [
        remote.remote(
            t,
            placed[t],
            offsets.tolist(),
            work_dir=str(work_dir),
            knn_rows=knn_rows,
            aggregate_rows=aggregate_rows,
            **params,
        )
        for t in range(n_shards)
    ]
    seconds = {}
    # each worker's peak RSS once the actors have started, and after each step (VmHWM:
    # the step where a worker's peak grows is the one to look at)
    memory_after = {}  # each worker's memory_mb after each step, and its VmHWM
    rss_after = {}

    def record_memory(name: str) -> None:
        memory_after[name] = ray.get([a.memory_mb.remote() for a in actors])
        rss_after[name] = [m.get("VmHWM", 0.0) for m in memory_after[name]]

    record_memory("start")

    def step(name: str, launch: Callable[[], Iterator[list]], in_flight: int = 2) -> None:
        """Run a step: ``launch()`` yields waves of task references (submitted as it is
        advanced); at most ``in_flight`` waves are submitted and not yet done (bounded
        memory in the object store and in the actors)."""
        if name in done:
            return
        start = time.perf_counter()
        pending: list[list] = []
        for n_wave, wave in enumerate(launch()):
            if n_wave == 0 and on_step is not None:
                on_step(name, actors)
            pending.append(wave)
            if len(pending) >= in_flight:
                ray.get(pending.pop(0))
        for wave in pending:
            ray.get(wave)
        seconds[name] = time.perf_counter() - start
        record_memory(name)
        done.append(name)
        (work_dir / PROGRESS).write_text(
            json.dumps({"params": params, "sizes": sizes, "done": done})
        )

    try:
        step("knn", lambda: _knn(actors, sizes, k1, knn_rows))
        step("order", lambda: _order(actors, work_dir, offsets, single_host_order))
        # one wave at a time for the exchanges and the aggregation: their waves carry the
        # build's largest objects, and the object store pages a worker maps count in its
        # resident memory
        step("reverse", lambda: _exchange(actors, "weight_part", "assemble_reverse"), 1)
        n_rounds = 0 if k2 == 1 else iterations
        for r in range(n_rounds):
            step(
                f"round{r}-t",
                lambda r=r: _exchange(actors, "round_part", "assemble_round_transpose", r),
                1,
            )
            step(f"aggregate{r}", lambda r=r: _aggregate(actors, sizes, r, aggregate_rows), 1)
        files = tuple(out_dir / shard_file_name(t, n_shards) for t in range(n_shards))
        step(
            "write",
            lambda: iter(
                [[a.write_shard.remote(str(f)) for a, f in zip(actors, files, strict=True)]]
            ),
        )
        rss = ray.get([a.rss_mb.remote() for a in actors])
    finally:
        for actor in actors:
            ray.kill(actor)
    graph = ShardedGraph(out_dir, files, tuple(int(o) for o in offsets), **params)
    graph.write_manifest()
    report = {
        "seconds": seconds,
        "worker_peak_rss_mb": rss,
        "worker_peak_rss_mb_after": rss_after,
        "worker_memory_mb_after": memory_after,
        "resumed": resumed,
        "sizes": sizes,
    }
    (out_dir / "build_report.json").write_text(json.dumps(report, indent=1))
    return graph


def _resumable_steps(progress: Path, params: dict, sizes: list[int]) -> list[str]:
    """The steps a previous run of the same build finished (none for another build)."""
    if not progress.is_file():
        return []
    saved = json.loads(progress.read_text())
    if saved.get("params") != params or saved.get("sizes") != sizes:
        return []
    return list(saved["done"])


def _interleave(per_shard: list[list]) -> Iterator[tuple[int, object]]:
    """``(shard, item)`` taking one item of each shard's list in turn."""
    for n in range(max(len(items) for items in per_shard)):
        for t, items in enumerate(per_shard):
            if n < len(items):
                yield t, items[n]


def _knn(actors, sizes: list[int], k1: int, rows: int) -> Iterator[list]:
    """Waves of the kNN join: a batch of each shard's rows (``rows``) is searched on
    every shard and merged by its owner; then each owner joins its batches.

    When every shard has an approximate inner-product index, a batch's search is two
    passes: every shard's candidates with their float32 products, the owner's choice of
    those that can be in the canonical top-k1 (``ShardBuilder.select``), and their
    canonical values from their shards: about k1 canonical values per query instead of
    k1 per query and shard, the same lists."""
    ray = ray_module()
    n = len(actors)
    products = all(kind == "products" for kind in ray.get([a.search_kind.remote() for a in actors]))
    batches = [batch_bounds(g, rows) for g in sizes]

    def batch_tasks():
        for s, (lo, hi) in _interleave(batches):
            owner = actors[s]
            queries = owner.vectors.remote(lo, hi)
            if products:
                found = [searcher.candidates.remote(queries, k1) for searcher in actors]
                kept = _one_or_many(owner.select.options(num_returns=n).remote(k1, *found), n)
                lists = [a.rescore.remote(queries, kept[t], k1) for t, a in enumerate(actors)]
            else:
                lists = [searcher.search.remote(queries, k1) for searcher in actors]
            yield owner.merge_knn.remote(lo, hi, *lists)

    return _in_waves(batch_tasks(), n, lambda: [a.finish_knn.remote() for a in actors])


def _order(actors, work_dir: Path, offsets: np.ndarray, single_host_order: bool):
    """Write ``order.npy``: the key of each global position in transposed rows."""
    size = int(offsets[-1])
    if single_host_order:
        ray = ray_module()
        indices = np.concatenate(ray.get([a.knn_indices.remote() for a in actors]))
        own = np.arange(size, dtype=np.int64)[:, None]
        order = locality_order(np.where(indices >= 0, indices, own))
        del indices
        keys = np.empty(size, dtype=np.int64)
        keys[order] = np.arange(size, dtype=np.int64)
    else:
        keys = np.arange(size, dtype=np.int64)
    np.save(work_dir / "order.npy", keys)
    yield []


def _exchange(actors, split: str, assemble: str, *args) -> Iterator[list]:
    """Owner by owner, a wave each: every shard computes its part for the owner
    (``split``), and the owner assembles them. Run one wave at a time, the object store
    holds one owner's share of the transpose at a time, not all of it."""
    for t, owner in enumerate(actors):
        parts = [getattr(a, split).remote(*args, t) for a in actors]
        yield [getattr(owner, assemble).remote(*args, *parts)]


def _aggregate(actors, sizes: list[int], r: int, rows: int) -> Iterator[list]:
    """Waves of round r's aggregation: a batch of each shard's rows (``rows``)
    pulls its neighbours' rows from their owners and is aggregated; then each shard joins
    its batches."""
    n = len(actors)
    batches = [batch_bounds(g, rows) for g in sizes]

    def batch_tasks():
        for s, (lo, hi) in _interleave(batches):
            a = actors[s]
            needs = _one_or_many(a.needed_nodes.options(num_returns=n).remote(lo, hi), n)
            blocks = [owner.round_rows.remote(r, needs[t]) for t, owner in enumerate(actors)]
            yield a.aggregate.remote(r, lo, hi, *blocks)

    return _in_waves(batch_tasks(), n, lambda: [a.finish_aggregate.remote(r) for a in actors])


def _in_waves(tasks: Iterator, size: int, finish) -> Iterator[list]:
    """The step's waves: ``tasks`` (object refs, submitted as the iterator is advanced)
    ``size`` at a time, an empty wave (every batch done before the join), then the
    join's refs from ``finish()``."""
    wave = []
    for task in tasks:
        wave.append(task)
        if len(wave) == size:
            yield wave
            wave = []
    if wave:
        yield wave
    yield []
    yield finish()
