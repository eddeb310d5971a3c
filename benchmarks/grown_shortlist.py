"""How many candidates a grown shortlist holds (``shortlist_seeds``), on the data and
FAISS indexes of ``benchmarks/vector_db.py``.

With ``shortlist=1000, shortlist_seeds=100`` the shortlist is the 1,000 items most similar
to the query among the pool of its 100 seeds and their frozen k1-NN lists, or the whole
pool when it holds fewer. This script reports the pool's size per query (capped at the
shortlist) for the 100,000-vector clustered set (IVF1024, nprobe 16) and Fashion-MNIST
(flat index), with the graph ``RerankedIndex(mode="inductive")`` builds there.

    .venv/bin/python benchmarks/grown_shortlist.py           # results/grown_shortlist.*
    .venv/bin/python benchmarks/grown_shortlist.py --quick   # small, nothing saved
"""

from __future__ import annotations

import numpy as np
from common import benchmark_parser, publish
from vector_db import DATASETS, PARAMS, SHORTLIST, SIZES, dataset, faiss_store

SEEDS = 100


def pool_sizes(graph_lists: np.ndarray, seeds: np.ndarray, cap: int) -> np.ndarray:
    """``[q]`` the size of each query's pool (its seeds ``[q, s]`` and their rows of
    ``graph_lists [g, k1]``, -1 = none), capped at ``cap``."""
    sizes = np.empty(seeds.shape[0], dtype=np.int64)
    for i, row in enumerate(seeds):
        row = row[row >= 0]
        pool = np.unique(np.concatenate([row, graph_lists[row].ravel()]))
        sizes[i] = min(cap, int((pool >= 0).sum()))
    return sizes


def main() -> None:
    args = benchmark_parser(__doc__.splitlines()[0], ()).parse_args()
    lines = [
        "# Grown shortlists: candidates per query",
        "",
        f"`shortlist={SHORTLIST}, shortlist_seeds={SEEDS}`, k1={PARAMS['k1']}; the pool is the "
        "seeds (the index's top 100) and their k1-NN lists in the inductive graph.",
        "",
        "| data | index | queries | mean | median | min | max | share at the cap |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    payload = {}
    for name in DATASETS:
        xb, xq, _, _ = dataset(name, args.quick)
        label, plain_search, reranked, _ = faiss_store(xb, SIZES[name][args.quick][2], None)
        reranked.build_graph()
        seeds = plain_search(xq, SEEDS)
        graph = reranked._graph  # rows in its internal order: map the seeds there
        internal = np.empty_like(graph.caller_position)
        internal[graph.caller_position] = np.arange(graph.caller_position.shape[0])
        seeds = np.where(seeds >= 0, internal[np.maximum(seeds, 0)], -1)
        sizes = pool_sizes(graph.knn_indices, seeds, SHORTLIST)
        payload[name] = {"index": label, "sizes": sizes.tolist()}
        lines.append(
            f"| {name} ({len(xb):,} rows) | {label} | {len(xq):,} | {sizes.mean():.0f} "
            f"| {np.median(sizes):.0f} | {sizes.min()} | {sizes.max()} "
            f"| {(sizes == SHORTLIST).mean():.1%} |"
        )
    lines += ["", "Command: `.venv/bin/python benchmarks/grown_shortlist.py`", ""]
    publish("grown_shortlist", "\n".join(lines), payload, save=not args.quick)


if __name__ == "__main__":
    main()
