"""Distributed build and sharded serving (``triton_rerank.distributed``) on a local Ray
cluster, against the single-host inductive mode.

Each run is a fresh process (its own peak RSS; the distributed ones start their own
local cluster, ``ray.init(num_cpus=2)``, not timed):

* ``build``: 1,000,000 x 128 clustered unit vectors (10,000 clusters,
  ``triton_rerank.app.synthetic.clustered_vectors``). Single host: an ``IVF4096,Flat``
  inner-product index (nprobe 8) and ``RerankedIndex.build_graph`` (mode
  "inductive"). Distributed with 1, 2 and 4 shards: one ``IVF(4096/T),Flat`` index file
  per shard (nprobe 8), each shard's candidates rescored canonically and merged,
  ``build_sharded_graph``. Time of the build and peak RSS of the driver and of each
  shard worker. With 2 and 4 shards also at nprobe ``8 / T`` per shard: the same lists
  probed per query as the single host (at nprobe 8 per shard a T-shard join scans T
  times the vectors), so that the comparison is of the engine, not of the search work.
* ``serve``: 10,000 queries, top-10 from a 100-candidate shortlist (the indexes above,
  nprobe 16): queries per second of ``RerankedIndex.search`` vs ``ShardedSearch.search``
  (2 and 4 shards, batches of 1,000, both shard counts in one process), and the mean
  overlap of their top-10 (the shard indexes are other IVF indexes than the single-host
  one, so lists and shortlists differ).
* ``equal``: the first 100,000 vectors and 1,000 queries, exact indexes (flat, exact
  canonical shard search): the fraction of queries whose top-10 ids are identical
  between single host and 2 / 4 shards, and the largest score difference.

GNN parameters: k1=26, k2=7, lamb=0.3, 2 iterations, row budget 128.

Run from the repository root (writes benchmarks/results/distributed_build.{md,json}):

    .venv/bin/python benchmarks/distributed_build.py

``--quick`` runs every part at a small size (a smoke test of the script itself; its
sharded builds share one process).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import benchmark_parser, peak_rss_mb, publish, run_child

os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")

SIZES = {  # (database, queries, subset, subset queries) full / quick
    False: (1_000_000, 10_000, 100_000, 1_000),
    True: (10_000, 300, 3_000, 100),
}
SHARDS = (1, 2, 4)
PARAMS = {"k1": 26, "k2": 7, "iterations": 2}
ROW_BUDGET = 128
K, SHORTLIST, BATCH = 10, 100, 1_000
BUILD_NPROBE, SERVE_NPROBE = 8, 16
METHODS = ("single-build", "sharded-build", "single-serve", "sharded-serve", "equal")


def lists_for(n: int) -> int:
    """IVF lists of the whole database (4096 at 1M)."""
    return max(16, round(4096 * n / 1_000_000))


def ivf(x: np.ndarray, n_lists: int, nprobe: int):
    import faiss

    index = faiss.index_factory(x.shape[1], f"IVF{n_lists},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(x[:: max(1, len(x) // (50 * n_lists))] if len(x) > 50 * n_lists else x)
    index.add(x)
    index.nprobe = nprobe
    return index


def shard_bounds(n: int, n_shards: int) -> np.ndarray:
    return np.linspace(0, n, n_shards + 1).astype(np.int64)


def start_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return ray


def child_single_build(data: Path, out: Path) -> dict:
    from triton_rerank.integrations.faiss import RerankedIndex

    xb = np.load(data / "xb.npy")
    index = ivf(xb, lists_for(len(xb)), BUILD_NPROBE)
    reranked = RerankedIndex(index, **PARAMS, mode="inductive")
    start = time.perf_counter()
    reranked.build_graph(row_budget=ROW_BUDGET)
    seconds = time.perf_counter() - start
    reranked.save_graph(out / "single.graph")
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def build_nprobe(n_shards: int, split_probes: bool) -> int:
    """The shard indexes' nprobe: the single host's, or split over the shards."""
    return max(1, BUILD_NPROBE // n_shards) if split_probes else BUILD_NPROBE


def child_sharded_build(
    data: Path, out: Path, shard_counts: list[int], split_probes: bool = False
) -> dict:
    """One build per shard count, on one local cluster (fresh actors for each build)."""
    import faiss

    from triton_rerank.distributed.build import build_sharded_graph

    xb = np.load(data / "xb.npy", mmap_mode="r")
    n = len(xb)
    shard_paths = {}
    for n_shards in shard_counts:  # the shard indexes exist before the build, as in use
        bounds = shard_bounds(n, n_shards)
        shard_paths[n_shards] = []
        for t in range(n_shards):
            path = out / f"ivf-{n_shards}-{t}{'-split' if split_probes else ''}.faiss"
            part = np.ascontiguousarray(xb[bounds[t] : bounds[t + 1]])
            nprobe = build_nprobe(n_shards, split_probes)
            faiss.write_index(ivf(part, max(4, lists_for(n) // n_shards), nprobe), str(path))
            shard_paths[n_shards].append(str(path))
    del xb
    ray = start_ray()
    results = {}
    for n_shards, paths in shard_paths.items():
        folder = out / f"sharded-{n_shards}{'-split' if split_probes else ''}"
        start = time.perf_counter()
        work = folder.with_name(f"work-{folder.name}")
        build_sharded_graph(paths, folder, **PARAMS, row_budget=ROW_BUDGET, work_dir=work)
        seconds = time.perf_counter() - start
        report = json.loads((folder / "build_report.json").read_text())
        results[n_shards] = {
            "seconds": seconds,
            "peak_rss_mb": peak_rss_mb(),
            "worker_peak_rss_mb": report["worker_peak_rss_mb"],
            "step_seconds": report["seconds"],
            "worker_peak_rss_mb_after": report["worker_peak_rss_mb_after"],
            "shard_file_bytes": [os.path.getsize(f) for f in sorted(folder.glob("*.npz"))],
            "nprobe": build_nprobe(n_shards, split_probes),
        }
    ray.shutdown()
    return results


def child_single_serve(data: Path, out: Path) -> dict:
    from triton_rerank.integrations.faiss import RerankedIndex

    xb, xq = np.load(data / "xb.npy"), np.load(data / "xq.npy")
    index = ivf(xb, lists_for(len(xb)), SERVE_NPROBE)
    reranked = RerankedIndex(index, **PARAMS, mode="inductive", shortlist=SHORTLIST)
    reranked.load_graph(out / "single.graph")
    reranked.search(xq[:BATCH], K)  # warm-up (compilation)
    start = time.perf_counter()
    _, ids = reranked.search(xq, K)
    seconds = time.perf_counter() - start
    np.save(out / "single-ids.npy", ids)
    return {"seconds": seconds, "qps": len(xq) / seconds, "peak_rss_mb": peak_rss_mb()}


def child_sharded_serve(data: Path, out: Path) -> dict:
    """Both shard counts in one process (one local cluster)."""
    import faiss

    from triton_rerank.distributed.serving import ShardedSearch

    xq = np.load(data / "xq.npy")
    single = np.load(out / "single-ids.npy")
    ray = start_ray()
    results = {}
    for n_shards in (2, 4):
        index_files = []
        for t in range(n_shards):
            index = faiss.read_index(str(out / f"ivf-{n_shards}-{t}.faiss"))
            faiss.extract_index_ivf(index).nprobe = SERVE_NPROBE
            index_files.append(str(out / f"serve-{n_shards}-{t}.faiss"))
            faiss.write_index(index, index_files[-1])
        search = ShardedSearch(
            out / f"sharded-{n_shards}", lamb=0.3, shortlist=SHORTLIST, index_files=index_files
        )
        search.search(xq[:BATCH], K)  # warm-up (actors start, kernels compile)
        start = time.perf_counter()
        batches = range(0, len(xq), BATCH)
        ids = np.concatenate([search.search(xq[s : s + BATCH], K)[1] for s in batches])
        seconds = time.perf_counter() - start
        workers = ray.get([a.rss_mb.remote() for a in search.actors])
        search.close()
        overlap = [len(np.intersect1d(a, b)) / K for a, b in zip(ids, single, strict=True)]
        results[n_shards] = {
            "seconds": seconds,
            "qps": len(xq) / seconds,
            "worker_peak_rss_mb": workers,
            "top10_overlap": float(np.mean(overlap)),
        }
    ray.shutdown()
    return results


def child_equal(data: Path, out: Path) -> dict:
    import faiss

    from triton_rerank.distributed.build import build_sharded_graph
    from triton_rerank.distributed.serving import ShardedSearch
    from triton_rerank.integrations.faiss import RerankedIndex

    xb, xq = np.load(data / "subset.npy"), np.load(data / "subset_q.npy")
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    reranked = RerankedIndex(index, **PARAMS, mode="inductive")
    reranked.build_graph(row_budget=ROW_BUDGET)
    d_single, i_single = reranked.search(xq, K)
    ray = start_ray()
    result = {}
    for n_shards in (2, 4):
        bounds = shard_bounds(len(xb), n_shards)
        folder = out / f"equal-{n_shards}"
        build_sharded_graph(
            [xb[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
            folder,
            **PARAMS,
            row_budget=ROW_BUDGET,
        )
        search = ShardedSearch(folder, lamb=0.3)
        d, i = search.search(xq, K)
        search.close()
        result[n_shards] = {
            "same_top10": float((i == i_single).all(axis=1).mean()),
            "max_score_difference": float(np.abs(d - d_single).max()),
        }
    ray.shutdown()
    return {"shards": result, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], METHODS)
    parser.add_argument("--shards", default="1", help=argparse_suppress())
    parser.add_argument("--split-probes", action="store_true", help=argparse_suppress())
    args = parser.parse_args()
    if args.child:
        data, out = Path(args.data), Path(args.out)
        call = {
            "single-build": lambda: child_single_build(data, out),
            "sharded-build": lambda: child_sharded_build(
                data, out, [int(t) for t in args.shards.split(",")], args.split_probes
            ),
            "single-serve": lambda: child_single_serve(data, out),
            "sharded-serve": lambda: child_sharded_serve(data, out),
            "equal": lambda: child_equal(data, out),
        }[args.child]
        print(json.dumps(call()))
        return

    from triton_rerank.app.synthetic import clustered_vectors

    n, n_query, n_subset, n_subset_query = SIZES[args.quick]
    script = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory(prefix="distributed-bench-") as tmp:
        data = Path(tmp)
        x, _ = clustered_vectors(n + n_query, 128, max(10, n // 100), spread=1.2, seed=0)
        np.save(data / "xb.npy", x[:n])
        np.save(data / "xq.npy", x[n:])
        np.save(data / "subset.npy", x[:n_subset])
        np.save(data / "subset_q.npy", x[n : n + n_subset_query])
        del x

        def child(method, shards=1, split_probes=False):
            options = [f"--child={method}", f"--data={data}", f"--out={data}"]
            options += [f"--shards={shards}"] + (["--split-probes"] if split_probes else [])
            result = run_child(script, options)
            # each part's figures as it ends: a run stopped later still has them in its log
            print(f"{method} {shards}: {json.dumps(result)}", file=sys.stderr, flush=True)
            return result

        builds = {"single": child("single-build")}
        if args.quick:  # one process (one local cluster) for every shard count
            builds.update({int(t): b for t, b in child("sharded-build", "1,2,4").items()})
        else:  # a fresh process per build: the driver's peak RSS is its own
            for t in SHARDS:
                builds[t] = child("sharded-build", t)[str(t)]
            for t in SHARDS[1:]:
                builds[f"{t} split"] = child("sharded-build", t, split_probes=True)[str(t)]
        serving = {"single": child("single-serve")}
        serving.update({int(t): s for t, s in child("sharded-serve").items()})
        equal = child("equal")

    single = builds["single"]
    lines = [
        f"# Distributed build and sharded serving ({n:,} x 128 clustered vectors)",
        "",
        "| build | seconds | vs single host | peak RSS MB (driver) "
        "| peak RSS MB per shard worker (max) | worker / single-host peak |",
        "|---|---|---|---|---|---|",
        f"| single host | {single['seconds']:.1f} | 1.00x | {single['peak_rss_mb']:.0f} | - | - |",
    ]
    rows = [(t, f"{t} shard{'s' if t > 1 else ''}") for t in SHARDS]
    rows += [
        (f"{t} split", f"{t} shards, nprobe {build_nprobe(t, True)} each (same probes)")
        for t in SHARDS[1:]
        if f"{t} split" in builds
    ]
    for key, label in rows:
        b = builds[key]
        worker = max(b["worker_peak_rss_mb"])
        lines.append(
            f"| {label} | {b['seconds']:.1f} "
            f"| {b['seconds'] / single['seconds']:.2f}x | {b['peak_rss_mb']:.0f} "
            f"| {worker:.0f} | {worker / single['peak_rss_mb']:.0%} |"
        )
    lines += [
        "",
        f"| serving ({n_query:,} queries, top-{K}, shortlist {SHORTLIST}) | queries/s "
        f"| top-{K} overlap with single host |",
        "|---|---|---|",
        f"| single host | {serving['single']['qps']:.0f} | - |",
    ]
    for t in (2, 4):
        s = serving[t]
        lines.append(f"| {t} shards | {s['qps']:.0f} | {s['top10_overlap']:.1%} |")
    lines += [
        "",
        f"Exact indexes, first {n_subset:,} vectors, {n_subset_query:,} queries:",
        "",
        "| shards | identical top-10 | largest score difference |",
        "|---|---|---|",
    ]
    for t, e in equal["shards"].items():
        lines.append(f"| {t} | {e['same_top10']:.1%} | {e['max_score_difference']:.1e} |")
    lines += [
        "",
        "Command: `.venv/bin/python benchmarks/distributed_build.py`"
        + (" --quick" if args.quick else ""),
        "",
    ]
    publish(
        "distributed_build",
        "\n".join(lines),
        {"builds": builds, "serving": serving, "equal": equal, "quick": args.quick},
        save=not args.quick,
    )


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
