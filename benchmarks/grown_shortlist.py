"""How many candidates a grown shortlist holds (``shortlist_seeds``), on the data and
FAISS indexes of ``benchmarks/vector_db.py``.

With ``shortlist=1000, shortlist_seeds=100`` the shortlist is the 1,000 items most similar
to the query in a pool grown from its 100 seeds through the frozen k1-NN lists: the
seeds' lists, then, until the pool holds 1,000, the lists of the last level's items,
most similar first (``InductiveGraph.grow_shortlists``). This script reports, per
query, the size of the shortlist and that of the first level alone (the seeds and their
lists, capped at 1,000: the shortlist before later levels were added) for the
100,000-vector clustered set (IVF1024, nprobe 16) and Fashion-MNIST (flat index), with
the graph ``RerankedIndex(mode="inductive")`` builds there.

    .venv/bin/python benchmarks/grown_shortlist.py           # results/grown_shortlist.*
    .venv/bin/python benchmarks/grown_shortlist.py --quick   # small, nothing saved
"""

from __future__ import annotations

import numpy as np
from common import benchmark_parser, publish
from vector_db import DATASETS, PARAMS, SHORTLIST, SIZES, dataset, faiss_store

SEEDS = 100


def first_level_sizes(graph_lists: np.ndarray, seeds: np.ndarray, cap: int) -> np.ndarray:
    """``[q]`` the size of each query's first level (its seeds ``[q, s]`` and their rows
    of ``graph_lists [g, k1]``, -1 = none), capped at ``cap``."""
    sizes = np.empty(seeds.shape[0], dtype=np.int64)
    for i, row in enumerate(seeds):
        row = row[row >= 0]
        pool = np.unique(np.concatenate([row, graph_lists[row].ravel()]))
        sizes[i] = min(cap, int((pool >= 0).sum()))
    return sizes


def summary(sizes: np.ndarray) -> str:
    return (
        f"{sizes.mean():.0f} | {np.median(sizes):.0f} | {sizes.min()} | {sizes.max()} "
        f"| {(sizes == SHORTLIST).mean():.1%}"
    )


def main() -> None:
    args = benchmark_parser(__doc__.splitlines()[0], ()).parse_args()
    lines = [
        "# Grown shortlists: candidates per query",
        "",
        f"`shortlist={SHORTLIST}, shortlist_seeds={SEEDS}`, k1={PARAMS['k1']}; the pool is the "
        "seeds (the index's top 100), their k1-NN lists in the inductive graph and, until it "
        "holds 1,000, the lists of the last level's items, most similar first.",
        "",
        "| data | index | queries | shortlist | mean | median | min | max | share at 1,000 |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    payload = {}
    for name in DATASETS:
        xb, xq, _, _ = dataset(name, args.quick)
        label, plain_search, reranked, _ = faiss_store(xb, SIZES[name][args.quick][2], None)
        reranked.build_graph()
        seeds = plain_search(xq, SEEDS)
        graph = reranked._graph
        shortlists = graph.grow_shortlists(xq, seeds, SHORTLIST)  # (unit rows)
        grown = (shortlists >= 0).sum(axis=1)
        # the first level, in the graph's internal node ids (its kNN lists are in them)
        first = first_level_sizes(graph.knn_indices, graph._nodes(seeds), SHORTLIST)
        payload[name] = {"index": label, "sizes": grown.tolist(), "first_level": first.tolist()}
        for what, sizes in (("grown", grown), ("first level only", first)):
            lines.append(
                f"| {name} ({len(xb):,} rows) | {label} | {len(xq):,} | {what} | {summary(sizes)} |"
            )
    lines += ["", "Command: `.venv/bin/python benchmarks/grown_shortlist.py`", ""]
    publish("grown_shortlist", "\n".join(lines), payload, save=not args.quick)


if __name__ == "__main__":
    main()
