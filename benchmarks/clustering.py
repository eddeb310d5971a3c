"""Sparse k-reciprocal Jaccard distance + DBSCAN pseudo-labels against the projects' dense
computation (issue 17): time and peak memory, each run in a fresh process.

- ``ours``: ``triton_rerank.clustering.jaccard_distance(x, k1=30, k2=6)`` (pairs with
  ``d < 0.7``), then ``DBSCAN(eps=0.6, min_samples=4, metric="precomputed")`` on it
  (what ``pseudo_labels`` runs, timed in two parts);
- ``published``: the projects' ``compute_jaccard_distance(features, k1=30, k2=6)`` (SpCL,
  cluster-contrast-reid ``utils/faiss_rerank.py``: FAISS ``IndexFlatL2`` kNN, dense
  ``V``, ``V_qe`` and ``[N, N]`` distances, float32), then the same DBSCAN on the dense
  matrix. Its code is not part of this repository: pass a file defining
  ``compute_jaccard_distance`` with ``--published`` (e.g. a copy of SpCL's function; a
  ``search_option`` argument, if it has one, is set to 3, the CPU FAISS branch).
  Without it only ours runs.

The published run also compares the two results: the rows whose FAISS kNN set differs
from the canonical one (FAISS ranks by float32 ``|x|^2 + |y|^2 - 2 x.y``, whose error
at d=2048 is about 1e-5, so near-ties at the k1-th place can go the other way; those
rows, and the rows whose sets use them, get different distances), the largest
difference over the pairs we store, the pairs below 0.7 we do not store (0 expected)
and the agreement of the labels.

Features: ``app.synthetic.clustered_vectors`` unit rows, d=2048, the Market-1501
training shape (12,936 images, 751 identities), the MSMT17 one (32,621, 1,041) and
200,000 images of 11,765 identities (ours only: the published code would need about
160 GB per dense matrix).

A second table clusters Fashion-MNIST (all 70,000 real images, raw pixels, Debian's
``dataset-fashion-mnist``) by each method of ``pseudo_labels`` with its defaults
(Jaccard: k1=30, k2=6, eps=0.6; GNN: k1=26, k2=7, eps=0.1; cosine: eps by the rho
rule, rho=1.6e-3) and scores the labels against the classes (NMI, ARI;
outliers count as one group), one fresh process per method.

    .venv/bin/python benchmarks/clustering.py --published FILE   # results/clustering.*
    .venv/bin/python benchmarks/clustering.py --quick            # small, nothing saved
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import sys
import tempfile
import time

import numpy as np
from common import benchmark_parser, machine, peak_rss_mb, publish, run_child

METHODS = ("ours", "published")
K1, K2, EPS, MIN_SAMPLES, MAX_DISTANCE = 30, 6, 0.6, 4, 0.7
DIM = 2048
SHAPES = {
    "Market-1501 train": (12936, 751),
    "MSMT17 train": (32621, 1041),
    "200k images": (200000, 11765),
}
CLUSTER_METHODS = ("jaccard", "gnn", "cosine")
QUICK_SHAPES = {"quick": (1500, 100)}
SPREAD = 1.0  # within an identity cosine ~ 1 / (1 + spread^2) = 0.5, across ~ 0


def run_ours(data_path: str, out: str) -> dict:
    import scipy.sparse
    from sklearn.cluster import DBSCAN

    from triton_rerank.clustering import jaccard_distance

    x = np.load(data_path)
    jaccard_distance(x[:200], k1=10, k2=3)  # compiles the kernels (or loads them)
    before_rss = peak_rss_mb()
    start = time.perf_counter()
    distances = jaccard_distance(x, k1=K1, k2=K2, max_distance=MAX_DISTANCE)
    jaccard_seconds = time.perf_counter() - start
    start = time.perf_counter()
    labels = DBSCAN(eps=EPS, min_samples=MIN_SAMPLES, metric="precomputed").fit_predict(distances)
    dbscan_seconds = time.perf_counter() - start
    scipy.sparse.save_npz(out + ".npz", distances)
    np.save(out + "_labels.npy", labels)
    return {
        "method": "ours",
        "rss_before_mb": before_rss,
        "jaccard_seconds": jaccard_seconds,
        "dbscan_seconds": dbscan_seconds,
        "seconds": jaccard_seconds + dbscan_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "nnz": int(distances.nnz),
        "clusters": int(labels.max() + 1),
        "noise": int((labels == -1).sum()),
    }


def run_published(data_path: str, published: str, ours: str) -> dict:
    import scipy.sparse
    import torch
    from sklearn.cluster import DBSCAN
    from sklearn.metrics import adjusted_rand_score

    sys.path.insert(0, os.path.dirname(os.path.abspath(published)))  # its own helpers
    spec = importlib.util.spec_from_file_location("published_rerank", published)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    compute = module.compute_jaccard_distance
    options = (
        {"search_option": 3} if "search_option" in inspect.signature(compute).parameters else {}
    )
    if "print_flag" in inspect.signature(compute).parameters:
        options["print_flag"] = False
    features = torch.from_numpy(np.load(data_path))
    before_rss = peak_rss_mb()
    start = time.perf_counter()
    dense = compute(features, k1=K1, k2=K2, **options)
    jaccard_seconds = time.perf_counter() - start
    start = time.perf_counter()
    labels = DBSCAN(eps=EPS, min_samples=MIN_SAMPLES, metric="precomputed").fit_predict(dense)
    dbscan_seconds = time.perf_counter() - start
    report = {
        "method": "published",
        "rss_before_mb": before_rss,
        "jaccard_seconds": jaccard_seconds,
        "dbscan_seconds": dbscan_seconds,
        "seconds": jaccard_seconds + dbscan_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "clusters": int(labels.max() + 1),
        "noise": int((labels == -1).sum()),
    }
    sparse = scipy.sparse.load_npz(ours + ".npz").tocoo()
    ours_labels = np.load(ours + "_labels.npy")
    stored = np.abs(dense[sparse.row, sparse.col] - sparse.data)
    # dense pairs below MAX_DISTANCE that ours does not store, counted row by row
    missed = 0
    csr = sparse.tocsr()
    for i in range(dense.shape[0]):
        below = np.flatnonzero(dense[i] < MAX_DISTANCE - 1e-6)
        missed += len(np.setdiff1d(below, csr.indices[csr.indptr[i] : csr.indptr[i + 1]]))
    # where the two differ: FAISS's float32 kNN lists against the canonical ones
    import faiss

    from triton_rerank.cpu.knn import knn_graph

    index = faiss.IndexFlatL2(features.shape[1])
    index.add(features.numpy())
    _, faiss_lists = index.search(features.numpy(), K1)
    _, canonical_lists, _ = knn_graph(features, K1)
    differ = np.sort(faiss_lists, axis=1) != np.sort(canonical_lists, axis=1)
    report.update(
        knn_rows_differing=int(differ.any(axis=1).sum()),
        max_abs_diff=float(stored.max()),
        share_diff_above_1e6=float((stored > 1e-6).mean()),
        dense_pairs_below_max_not_stored=int(missed),
        labels_identical=bool((labels == ours_labels).all()),
        adjusted_rand=float(adjusted_rand_score(labels, ours_labels)),
    )
    return report


def run_fashion(method: str, quick: bool) -> dict:
    """One method of ``pseudo_labels`` on Fashion-MNIST, scored against the classes."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from triton_rerank.app.data import load_fashion_mnist
    from triton_rerank.clustering.pseudo_labels import cluster

    images, classes = load_fashion_mnist()
    if quick:
        images, classes = images[:3000], classes[:3000]
    cluster(images[:300], method=method)  # compiles the kernels (or loads them)
    before_rss = peak_rss_mb()
    start = time.perf_counter()
    found = cluster(images, method=method)
    seconds = time.perf_counter() - start
    labels = found.labels
    return {
        "method": method,
        "images": int(len(images)),
        "eps": found.eps,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": before_rss,
        "stored_pairs": found.stored_pairs,
        "clusters": int(labels.max() + 1),
        "noise": int((labels == -1).sum()),
        "nmi": float(normalized_mutual_info_score(classes, labels)),
        "ari": float(adjusted_rand_score(classes, labels)),
    }


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], METHODS + ("fashion",))
    parser.add_argument("--published", help="a file defining compute_jaccard_distance")
    parser.add_argument("--ours", help=argparse.SUPPRESS)
    parser.add_argument(
        "--published-max-n",
        type=int,
        default=40000,
        help="run the published code only up to this N (default 40000: its dense "
        "float32 matrices need up to 3 x 4 N^2 bytes, 13 GB at N=32,621)",
    )
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument(
        "--skip-fashion", action="store_true", help="leave out the Fashion-MNIST table"
    )
    args = parser.parse_args()
    if args.child == "fashion":
        print(json.dumps(run_fashion(args.method, args.quick)))
        return
    if args.child == "ours":
        print(json.dumps(run_ours(args.data, args.out)))
        return
    if args.child == "published":
        print(json.dumps(run_published(args.data, args.published, args.ours)))
        return

    from triton_rerank.app.synthetic import clustered_vectors

    shapes = QUICK_SHAPES if args.quick else SHAPES
    dim = 64 if args.quick else DIM
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name, (n, n_ids) in shapes.items():
            x, _ = clustered_vectors(n, dim, n_ids, spread=SPREAD, seed=0)
            data = os.path.join(workdir, f"{n}.npy")
            np.save(data, x)
            ours_out = os.path.join(workdir, f"{n}_ours")
            print(f"{name} (N={n}): ours ...", file=sys.stderr, flush=True)
            runs = {
                "ours": run_child(__file__, ["--child", "ours", "--data", data, "--out", ours_out])
            }
            if args.published and n <= args.published_max_n:
                print(f"{name} (N={n}): published ...", file=sys.stderr, flush=True)
                runs["published"] = run_child(
                    __file__,
                    ["--child", "published", "--data", data, "--published", args.published]
                    + ["--ours", ours_out],
                )
            results[name] = {"n": n, "ids": n_ids, "runs": runs}
            del x
    fashion = {}
    if not args.skip_fashion:
        for method in CLUSTER_METHODS:
            print(f"Fashion-MNIST: {method} ...", file=sys.stderr, flush=True)
            child = ["--child", "fashion", "--method", method] + (["--quick"] if args.quick else [])
            fashion[method] = run_child(__file__, child)

    lines = [
        "# Sparse k-reciprocal Jaccard distance + DBSCAN pseudo-labels",
        "",
        f"Command: `.venv/bin/python benchmarks/clustering.py"
        f"{' --published <file with compute_jaccard_distance>' if args.published else ''}"
        f"{' --quick' if args.quick else ''}`",
        "",
        f"Machine: {machine()}.",
        "",
        f"`clustered_vectors` unit rows, d={dim}, spread {SPREAD}; k1={K1}, k2={K2}; "
        f"DBSCAN eps={EPS}, min_samples={MIN_SAMPLES}; ours keeps the pairs with "
        f"d < {MAX_DISTANCE}. One fresh process per run (peak RSS is its own, the "
        "features included; 'RSS before the call' is after the imports, the features and, "
        "for ours, a small warm-up call); published = the projects' `compute_jaccard_distance` "
        "(FAISS `IndexFlatL2` on the CPU, dense float32 `V` and distances).",
        "",
        "| data | N | run | Jaccard (s) | DBSCAN (s) | total (s) | published / ours "
        "| peak RSS (MB) | RSS before the call (MB) | stored pairs | clusters | noise |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        runs = result["runs"]
        for method, r in runs.items():
            stored = f"{r['nnz']:,}" if "nnz" in r else f"{result['n'] ** 2:,} (dense)"
            ratio = (
                f"{runs['published']['seconds'] / r['seconds']:.1f}x"
                if method == "ours" and "published" in runs
                else ""
            )
            lines.append(
                f"| {name} | {result['n']:,} | {method} | {r['jaccard_seconds']:.2f} | "
                f"{r['dbscan_seconds']:.2f} | {r['seconds']:.2f} | {ratio} | "
                f"{r['peak_rss_mb']:.0f} | {r['rss_before_mb']:.0f} | {stored} | "
                f"{r['clusters']} | {r['noise']} |"
            )
    compared = [
        (name, r["runs"]["published"]) for name, r in results.items() if "published" in r["runs"]
    ]
    if compared:
        lines += [
            "",
            "Ours against the published result:",
            "",
            "| data | kNN sets differing (rows) | max abs diff (stored pairs) | share > 1e-6 "
            "| dense pairs < 0.7 not stored | labels identical | adjusted Rand |",
            "|---|---:|---:|---:|---:|---|---:|",
        ]
        for name, r in compared:
            lines.append(
                f"| {name} | {r['knn_rows_differing']} | {r['max_abs_diff']:.2e} | "
                f"{r['share_diff_above_1e6']:.2e} | "
                f"{r['dense_pairs_below_max_not_stored']} | {r['labels_identical']} | "
                f"{r['adjusted_rand']:.6f} |"
            )
    if fashion:
        lines += [
            "",
            f"Fashion-MNIST ({next(iter(fashion.values()))['images']:,} images, 10 classes), "
            "`pseudo_labels` defaults per method, DBSCAN min_samples=4:",
            "",
            "| method | eps | time (s) | peak RSS (MB) | stored pairs | clusters | outliers "
            "| NMI | ARI |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for method, r in fashion.items():
            lines.append(
                f"| {method} | {r['eps']:.4f} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | "
                f"{r['stored_pairs']:,} | {r['clusters']} | {r['noise']:,} | {r['nmi']:.3f} | "
                f"{r['ari']:.3f} |"
            )
    publish(
        "clustering",
        "\n".join(lines) + "\n",
        {"results": results, "fashion_mnist": fashion},
        save=not args.quick,
    )


if __name__ == "__main__":
    main()
