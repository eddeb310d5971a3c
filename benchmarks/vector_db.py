"""Vector-database benchmark: plain search vs GNN re-ranked (inductive) search in FAISS,
Milvus (Milvus Lite) and LanceDB, on one search-backend code path.

Two datasets, each database in its own process (so each peak RSS is its own, the
database's memory included: Milvus Lite and LanceDB run inside the process):

* ``synthetic``: 100,000 x 128 clustered unit vectors (1,000 clusters,
  ``triton_rerank.app.synthetic.clustered_vectors``), 1,000 queries, in an IVF index
  with 1,024 lists searched at nprobe 16 (FAISS ``IVF1024,Flat``, Milvus ``IVF_FLAT``,
  LanceDB ``IvfFlat``); the inductive graph's neighbour lists come from that search.
* ``fashion``: Fashion-MNIST (Debian package ``dataset-fashion-mnist``), all 70,000 real
  images as raw pixels: 1,000 queries (100 per class), 69,000 in the database, exhaustive
  search (FAISS ``IndexFlatIP``, Milvus ``FLAT``, LanceDB without an index); the graph
  then takes the canonical kNN, computed locally.

For each: queries per second of the database's plain search (k = 100) and of the
re-ranked inductive search (k = 100 from a 1,000-candidate shortlist, same index
settings) in its two shortlist modes: the shortlist from the database's search (its
top 1,000, the default) and the shortlist grown from the search's top 100 through the
graph's neighbour lists (``shortlist_seeds=100``: the plain search itself, then the
1,000 most similar of a pool grown from those 100 through the kNN lists until it holds
1,000), their ratios, mAP@100 of both (cluster or class labels),
recall of exact mode's top-100 (``gnn_rerank(queries, database, topk=100)``, computed
once per dataset by the FAISS adapter's exact mode), graph build time and the process's
peak RSS after it. GNN parameters: k1=26, k2=7, lamb=0.3, 2 iterations.

Run from the repository root (writes benchmarks/results/vector_db.{md,json}):

    .venv/bin/python benchmarks/vector_db.py

``--quick`` runs every part at a small size (a smoke test of the script, under 2 min).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import benchmark_parser, peak_rss_mb, publish, run_child

DATABASES = ("faiss", "milvus", "lancedb")
DATASETS = ("synthetic", "fashion")
CHILDREN = tuple(f"{db}-{ds}" for db in DATABASES for ds in DATASETS) + tuple(
    f"exact-{ds}" for ds in DATASETS
)
SIZES = {  # dataset -> (database, queries, IVF lists) full / quick
    "synthetic": ((100_000, 1_000, 1024), (4_000, 100, 64)),
    "fashion": ((69_000, 1_000, 0), (3_000, 100, 0)),
}
K = 100
SHORTLIST = 1000
NPROBE = 16
PARAMS = dict(k1=26, k2=7, iterations=2, lamb=0.3)
INSERT_BATCH = 5000


def dataset(name: str, quick: bool):
    """``(xb, xq, database labels, query labels)``, unit rows, the same in every process."""
    n_database, n_queries, _ = SIZES[name][quick]
    if name == "synthetic":
        from triton_rerank.app.synthetic import clustered_vectors

        x, labels = clustered_vectors(
            n_database + n_queries, 128, max(10, n_database // 100), spread=1.2, seed=0
        )
        return (
            np.ascontiguousarray(x[n_queries:]),
            np.ascontiguousarray(x[:n_queries]),
            labels[n_queries:],
            labels[:n_queries],
        )
    from triton_rerank.app.data import load_fashion_mnist, unit_rows

    images, labels = load_fashion_mnist()
    rng = np.random.default_rng(0)
    query_idx = np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(labels == c), n_queries // 10, replace=False)
                for c in range(10)
            ]
        )
    )
    database_idx = np.setdiff1d(np.arange(len(labels)), query_idx)[:n_database]
    return (
        unit_rows(images[database_idx]),
        unit_rows(images[query_idx]),
        labels[database_idx],
        labels[query_idx],
    )


def reranking_of(reranked):
    """The :class:`RerankedSearch` inside an adapter's wrapper."""
    return getattr(reranked, "reranking", None) or reranked._search


def timed(call):
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


# Timed searches run this many times each, the fastest counted (the machine is shared).
REPEATS = 3


def best_of(call):
    """``(result, seconds)`` of the fastest of ``REPEATS`` calls."""
    runs = [timed(call) for _ in range(REPEATS)]
    return min(runs, key=lambda run: run[1])


# -- one database each: (index description, plain search, re-ranked wrapper) -------------


def faiss_store(xb, n_lists, folder):
    import faiss

    from triton_rerank.integrations.faiss import RerankedIndex

    if n_lists:
        quantizer = faiss.IndexFlatIP(xb.shape[1])
        index = faiss.IndexIVFFlat(quantizer, xb.shape[1], n_lists, faiss.METRIC_INNER_PRODUCT)
        index.train(xb)
        index.add(xb)
        index.make_direct_map()
        index.nprobe = NPROBE
        name = f"IVF{n_lists},Flat nprobe {NPROBE}"
    else:
        index = faiss.IndexFlatIP(xb.shape[1])
        index.add(xb)
        name = "IndexFlatIP"
    reranked = RerankedIndex(index, mode="inductive", shortlist=SHORTLIST, **PARAMS)
    return name, lambda xq, k: index.search(xq, k)[1], reranked, reranked.search


def milvus_store(xb, n_lists, folder):
    from pymilvus import DataType, MilvusClient

    from triton_rerank.integrations.milvus import RerankedCollection

    client = MilvusClient(str(Path(folder) / "bench.db"))
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=xb.shape[1])
    params = client.prepare_index_params()
    if n_lists:
        params.add_index("vec", index_type="IVF_FLAT", metric_type="IP", params={"nlist": n_lists})
        search_params = {"params": {"nprobe": NPROBE}}
        name = f"IVF_FLAT nlist {n_lists} nprobe {NPROBE}"
    else:
        params.add_index("vec", index_type="FLAT", metric_type="IP")
        search_params, name = {}, "FLAT"
    client.create_collection("bench", schema=schema, index_params=params)
    for start in range(0, len(xb), INSERT_BATCH):
        rows = xb[start : start + INSERT_BATCH]
        client.insert("bench", [{"id": start + i, "vec": row} for i, row in enumerate(rows)])
    reranked = RerankedCollection(
        client, "bench", mode="inductive", shortlist=SHORTLIST, search_params=search_params,
        **PARAMS,
    )  # fmt: skip

    def plain(xq, k):
        return reranked.backend.search(xq, k).ids

    return name, plain, reranked, reranked.search_arrays


def lancedb_store(xb, n_lists, folder):
    import lancedb
    import pyarrow as pa
    from lancedb.index import IvfFlat

    from triton_rerank.integrations.lancedb import RerankedTable

    db = lancedb.connect(str(Path(folder) / "bench.lance"))
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(xb.ravel()), xb.shape[1])
    table = db.create_table("bench", pa.table({"id": np.arange(len(xb)), "vector": vectors}))
    options = {}
    if n_lists:
        table.create_index("vector", config=IvfFlat(distance_type="dot", num_partitions=n_lists))
        options, name = {"nprobes": NPROBE}, f"IvfFlat {n_lists} partitions nprobes {NPROBE}"
    else:
        name = "no index (exhaustive)"
    reranked = RerankedTable(
        table, metric="dot", mode="inductive", shortlist=SHORTLIST, **options, **PARAMS
    )

    def plain(xq, k):
        return reranked.backend.search(xq, k).ids

    return name, plain, reranked, reranked.search_arrays


STORES = {"faiss": faiss_store, "milvus": milvus_store, "lancedb": lancedb_store}


def run_database(database: str, name: str, quick: bool, data_dir: str) -> dict:
    from triton_rerank.evaluation.metrics import list_recall, map_at_k

    xb, xq, db_labels, q_labels = dataset(name, quick)
    n_lists = SIZES[name][quick][2]
    with tempfile.TemporaryDirectory() as folder:
        (index, plain, reranked, search), load_seconds = timed(
            lambda: STORES[database](xb, n_lists, folder)
        )
        _, build_seconds = timed(reranked.build_graph)
        build_rss = peak_rss_mb()
        plain(xq[:10], K)  # warm-up (connections, caches, numba's compiled kernels)
        search(xq[:10], K)
        plain_ids, plain_seconds = best_of(lambda: plain(xq, K))
        (_, ours), ours_seconds = best_of(lambda: search(xq, K))
        _, shortlist_seconds = best_of(lambda: plain(xq, SHORTLIST))
        # the same graph, the shortlist grown from the search's top K
        reranking_of(reranked).shortlist_seeds = K
        search(xq[:10], K)
        (_, grown), grown_seconds = best_of(lambda: search(xq, K))
        reranking_of(reranked).shortlist_seeds = None
    exact = np.load(Path(data_dir) / f"exact-{name}.npy")
    return {
        "database": database,
        "dataset": name,
        "index": index,
        "n_database": len(xb),
        "n_queries": len(xq),
        "load_seconds": load_seconds,
        "build_seconds": build_seconds,
        "build_peak_rss_mb": build_rss,
        "plain_qps": len(xq) / plain_seconds,
        "reranked_qps": len(xq) / ours_seconds,
        "shortlist_search_seconds": shortlist_seconds,
        "rerank_seconds": ours_seconds - shortlist_seconds,
        "plain_map": map_at_k(plain_ids, q_labels, db_labels),
        "reranked_map": map_at_k(ours, q_labels, db_labels),
        "plain_recall_of_exact": list_recall(plain_ids, exact),
        "reranked_recall_of_exact": list_recall(ours, exact),
        "grown_qps": len(xq) / grown_seconds,
        "grown_rerank_seconds": grown_seconds - plain_seconds,
        "grown_map": map_at_k(grown, q_labels, db_labels),
        "grown_recall_of_exact": list_recall(grown, exact),
        "peak_rss_mb": peak_rss_mb(),
    }


def run_exact(name: str, quick: bool, data_dir: str) -> dict:
    """Exact mode's top-100 (the FAISS adapter on a flat index), saved for the others."""
    import faiss

    from triton_rerank.evaluation.metrics import map_at_k
    from triton_rerank.integrations.faiss import RerankedIndex

    xb, xq, db_labels, q_labels = dataset(name, quick)
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    (_, exact), seconds = timed(lambda: RerankedIndex(index, **PARAMS).search(xq, K))
    np.save(Path(data_dir) / f"exact-{name}.npy", exact)
    return {
        "dataset": name,
        "exact_seconds": seconds,
        "exact_map": map_at_k(exact, q_labels, db_labels),
        "peak_rss_mb": peak_rss_mb(),
    }


def table(reports: dict, command: str, load: str) -> str:
    lines = [
        "# Vector-database benchmark: plain vs GNN re-ranked search",
        "",
        f"Command: `{command}`",
        "",
        f"GNN parameters k1=26, k2=7, lamb=0.3, 2 iterations; inductive mode, top-{K} from a "
        f"{SHORTLIST:,}-candidate shortlist (same index settings as the plain search): "
        f"either the database search's top {SHORTLIST:,} (the default), or grown from its "
        f"top {K} through the graph's neighbour lists (`shortlist_seeds={K}`: the "
        f"{SHORTLIST:,} most similar of a pool of those {K}, their k1-NN lists and, until "
        f"it holds {SHORTLIST:,}, the lists of the last level's items, most similar "
        "first); mAP@100 by cluster or class label; recall of exact "
        f"mode's top-{K} (`gnn_rerank(queries, database, topk={K})`). Each database and "
        "dataset ran in its own process; every timing is the fastest of "
        f"{REPEATS} runs (plain and re-ranked alike); peak RSS includes the database "
        "(Milvus Lite and LanceDB run in the process). Target: re-ranked throughput >= 25% "
        "of plain.",
    ]
    for name in DATASETS:
        exact = reports[f"exact-{name}"]
        first = reports[f"faiss-{name}"]
        title = (
            f"{first['n_database']:,} x 128 clustered vectors"
            if name == "synthetic"
            else f"Fashion-MNIST (real), {first['n_database']:,} database images, raw pixels"
        )
        lines += [
            "",
            f"## {title}, {first['n_queries']:,} queries",
            "",
            f"Exact mode (FAISS adapter, flat index): {exact['exact_seconds']:.1f} s, "
            f"mAP@100 {exact['exact_map']:.1%}.",
            "",
            "| database | index | shortlist | plain q/s | re-ranked q/s | ratio | mAP@100 "
            "plain -> re-ranked | recall of exact top-100: plain -> re-ranked | graph build "
            "| peak RSS |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for database in DATABASES:
            r = reports[f"{database}-{name}"]
            for label, key in (
                (f"search top-{SHORTLIST:,}", "reranked"),
                (f"grown from search top-{K}", "grown"),
            ):
                lines.append(
                    f"| {database} | {r['index']} | {label} | {r['plain_qps']:,.0f} | "
                    f"{r[f'{key}_qps']:,.0f} | {r[f'{key}_qps'] / r['plain_qps']:.0%} | "
                    f"{r['plain_map']:.1%} -> {r[f'{key}_map']:.1%} | "
                    f"{r['plain_recall_of_exact']:.1%} -> {r[f'{key}_recall_of_exact']:.1%} | "
                    f"{r['build_seconds']:.1f} s | {r['build_peak_rss_mb']:,.0f} MB |"
                )
        lines += [
            "",
            "Re-ranked time per batch of queries: the search (top-1,000 timed alone; top-100 "
            "is the plain search) and the rest (re-ranked total minus it; 0 where the two "
            "timings are within noise):",
        ]
        for database in DATABASES:
            r = reports[f"{database}-{name}"]
            lines.append(
                f"{database}: search top-{SHORTLIST:,} {r['shortlist_search_seconds']:.2f} s + "
                f"{max(r['rerank_seconds'], 0):.2f} s; grown from top-{K} "
                f"{r['n_queries'] / r['plain_qps']:.2f} s + "
                f"{max(r['grown_rerank_seconds'], 0):.2f} s;"
            )
    lines += ["", f"Machine load while it ran (`uptime` load averages): {load}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], CHILDREN)
    args = parser.parse_args()
    if args.child:
        database, name = args.child.split("-")
        if database == "exact":
            report = run_exact(name, args.quick, args.data)
        else:
            report = run_database(database, name, args.quick, args.data)
        print(json.dumps(report))
        return
    flags = ["--quick"] if args.quick else []
    loads = [os.getloadavg()]
    reports = {}
    with tempfile.TemporaryDirectory() as data_dir:
        for name in DATASETS:
            for child in (f"exact-{name}", *(f"{db}-{name}" for db in DATABASES)):
                reports[child] = run_child(__file__, ["--child", child, "--data", data_dir, *flags])
                print(f"{child}: done", flush=True)
                loads.append(os.getloadavg())
    command = ".venv/bin/python benchmarks/vector_db.py" + (" --quick" if args.quick else "")
    one_minute = [round(avg[0], 1) for avg in loads]
    load = f"1-minute load average {min(one_minute)}-{max(one_minute)} on {os.cpu_count()} cores"
    publish(
        "vector_db",
        table(reports, command, load),
        {"command": command, "load_averages": loads, **reports},
        save=not args.quick,
    )


if __name__ == "__main__":
    main()
