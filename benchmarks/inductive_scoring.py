"""Inductive scoring kernels: this checkout against an earlier one, on the same graphs.

The online part of inductive re-ranked search (``InductiveGraph.rerank`` of given
shortlists and ``InductiveGraph.rerank_grown`` of shortlists grown from seeds), timed
on the code of this checkout and of ``--before-src`` (a checkout of the code before a
change, e.g. ``git worktree add /tmp/before <commit>``), in alternating child
processes on the same graph file, shortlists and queries, so that the ratio is
measured in one run on the same machine state:

* ``large``: 1,000,000 x 128 clustered vectors (the FAISS benchmark's data), graph
  built with an IVF4096 index at nprobe 8, 3,000 queries, shortlists from the index
  at nprobe 16 (top 1,000 given; top 100 as seeds grown to 1,000);
* ``subset``: the first 100,000 vectors, IVF1024 at nprobe 16, 1,000 queries.

Each child loads the graph file, runs each call once to compile and warm up, then
times it ``REPEATS`` times (the fastest counts) and checks its results against the
parent's reference (the same ids and scores from both checkouts: the kernels' values
are defined bit for bit). The parent alternates ``ROUNDS`` pairs of children and
reports the median ratio after / before with its range.

    .venv/bin/python benchmarks/inductive_scoring.py --before-src /tmp/before
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import benchmark_parser, peak_rss_mb, publish, run_child  # noqa: E402
from faiss_rerank import clustered_split, ivf_index  # noqa: E402

PARTS = ("large", "subset")
SHAPES = {  # part -> (database, queries, IVF lists, build nprobe) full / quick
    "large": ((1_000_000, 3_000, 4096, 8), (40_000, 300, 256, 8)),
    "subset": ((100_000, 1_000, 1024, 16), (20_000, 200, 256, 16)),
}
SEARCH_NPROBE = 16
SHORTLIST = 1000
SEEDS = 100
K = 100
LAMB = 0.3
REPEATS = 3
ROUNDS = 3
CALLS = ("given", "grown")


def prepare(part: str, quick: bool, folder: Path) -> Path:
    """Build the part's graph with this checkout and save it with the queries and
    shortlists into ``folder``; returns the ``.npz`` of the inputs."""
    from triton_rerank.integrations.faiss import RerankedIndex

    n_database, n_queries, n_lists, build_nprobe = SHAPES[part][quick]
    xb, xq, _, _ = clustered_split(SHAPES["large"][quick][0], n_queries)
    xb = xb[:n_database]
    index = ivf_index(xb, n_lists)
    reranked = RerankedIndex(index, mode="inductive", shortlist=SHORTLIST)
    index.nprobe = build_nprobe
    reranked.build_graph()
    reranked.save_graph(folder / f"{part}.graph")
    index.nprobe = SEARCH_NPROBE
    queries = (xq / np.linalg.norm(xq, axis=1, keepdims=True)).astype(np.float32)
    _, given = index.search(queries, SHORTLIST)
    _, seeds = index.search(queries, SEEDS)
    inputs = folder / f"{part}.npz"
    np.savez(inputs, queries=queries, given=given, seeds=seeds)
    return inputs


def time_calls(graph_path: str, inputs_path: str) -> dict:
    """Child: time the two calls on the saved graph and inputs (fastest of REPEATS)."""
    from triton_rerank.database.inductive import InductiveGraph

    graph = InductiveGraph.load(graph_path)
    data = np.load(inputs_path)
    queries, given, seeds = data["queries"], data["given"], data["seeds"]
    calls = {
        "given": lambda: graph.rerank(queries, given, K, LAMB),
        "grown": lambda: graph.rerank_grown(queries, seeds, K, LAMB, SHORTLIST),
    }
    report = {}
    for name, call in calls.items():
        scores, ids = call()  # compile and warm up
        runs = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            call()
            runs.append(time.perf_counter() - start)
        out = Path(inputs_path).with_name(f"{Path(inputs_path).stem}-{name}-{os.getpid()}.npz")
        np.savez(out, scores=scores, ids=ids)
        report[name] = {"seconds": min(runs), "results": str(out)}
    import triton_rerank

    report["peak_rss_mb"] = peak_rss_mb()
    report["package"] = os.path.dirname(os.path.abspath(triton_rerank.__file__))
    return report


def compare(part: str, quick: bool, before_src: str, folder: Path) -> dict:
    """Alternate children of this checkout and of ``before_src`` on one part."""
    inputs = prepare(part, quick, folder)
    graph = folder / f"{part}.graph"
    here = str(Path(__file__).resolve().parent.parent)
    script = os.path.abspath(__file__)
    args = ["--child", part, "--data", str(graph), "--out", str(inputs)]
    runs = {"before": [], "after": []}
    for _ in range(ROUNDS):
        for label, source in (("before", before_src), ("after", here)):
            report = run_child(script, args, source=source)
            if not Path(report["package"]).is_relative_to(Path(source).resolve()):
                raise RuntimeError(f"the {label} child imported {report['package']}")
            runs[label].append(report)
    n_queries = SHAPES[part][quick][1]
    result = {"n_database": SHAPES[part][quick][0], "n_queries": n_queries}
    for name in CALLS:
        reference = np.load(runs["after"][0][name]["results"])
        for report in runs["before"] + runs["after"]:
            other = np.load(report[name]["results"])
            if not (
                np.array_equal(other["ids"], reference["ids"])
                and np.array_equal(other["scores"], reference["scores"])
            ):
                raise AssertionError(f"{part} {name}: the two checkouts give different results")
        before = [r[name]["seconds"] for r in runs["before"]]
        after = [r[name]["seconds"] for r in runs["after"]]
        ratios = [a / b for a, b in zip(after, before, strict=True)]
        result[name] = {
            "before_us_per_query": min(before) / n_queries * 1e6,
            "after_us_per_query": min(after) / n_queries * 1e6,
            "ratios": ratios,
            "median_ratio": float(np.median(ratios)),
        }
    result["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs["before"] + runs["after"])
    return result


def table(results: dict, command: str) -> str:
    lines = [
        "# Inductive scoring: this checkout against the code before",
        "",
        f"Command: `{command}`",
        "",
        f"`InductiveGraph.rerank` of given shortlists (an IVF index's top {SHORTLIST:,} at "
        f"nprobe {SEARCH_NPROBE}) and `rerank_grown` of shortlists grown from its top "
        f"{SEEDS} to {SHORTLIST:,}, top-{K}; the same graph file, queries and shortlists "
        f"for both checkouts, in alternating child processes ({ROUNDS} each, the fastest "
        f"of {REPEATS} calls per child), identical results checked. Ratio: after / before "
        "(median of the pairs, range in brackets).",
        "",
        "| database | queries | call | before us/query | after us/query | after / before |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for part in PARTS:
        r = results[part]
        for name in CALLS:
            c = r[name]
            lines.append(
                f"| {r['n_database']:,} | {r['n_queries']:,} | {name} | "
                f"{c['before_us_per_query']:.0f} | {c['after_us_per_query']:.0f} | "
                f"{c['median_ratio']:.2f}x ({min(c['ratios']):.2f}-{max(c['ratios']):.2f}) |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], PARTS)
    parser.add_argument("--before-src", help="a checkout of the code before the change")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(time_calls(args.data, args.out)))
        return
    if not args.before_src:
        parser.error("--before-src is required (a checkout of the code to compare with)")
    with tempfile.TemporaryDirectory(prefix="inductive-scoring-") as folder:
        results = {part: compare(part, args.quick, args.before_src, Path(folder)) for part in PARTS}
    command = ".venv/bin/python benchmarks/inductive_scoring.py --before-src <checkout before>"
    command += " --quick" if args.quick else ""
    publish(
        "inductive_scoring",
        table(results, command),
        {"command": command, **results},
        save=not args.quick,
    )


if __name__ == "__main__":
    main()
