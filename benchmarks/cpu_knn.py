"""The certified CPU kNN: end-to-end time against a plain float32 product, the share of
rows the fast pass proves, and the MSMT17 shape.

All timings come from one run of this script, each measurement in a fresh process (so
peak RSS is its own), features in (unit rows) to results out:

- ``gemm``: the plain float32 torch upper-triangle product of ``U = [Xq; Xg]`` in
  2,048-row strips, nothing else (the floor the issue compares against);
- ``products``: only the matrix products ``ours`` does with the automatic pass: float32
  query strips against every node (they are also the ``[q, g]`` base of the score) and
  the gallery's upper triangle in bfloat16 (float32 where bf16 is not native), in
  2,048-row strips: the floor of ``ours`` before any selection, propagation or scoring;
- ``ours``: ``gnn_rerank`` with the fast pass chosen automatically (bf16 here) and
  forced to float32 (``TRITON_RERANK_KNN_PRECISION=fp32``), full ``[q, g]`` scores and
  ``topk=100``;
- ``before``: the same call on the code before the canonical kNN (a checkout given
  with ``--before-src``, e.g. ``git worktree add /tmp/before <commit>``), if given.

Then the share of rows certified by the fast pass (``knn_graph(report=...)``) on the
Market-1501 shape, Fashion-MNIST (Debian's ``dataset-fashion-mnist``; skipped when
absent) and scikit-learn's digits, for both passes.

    .venv/bin/python benchmarks/cpu_knn.py --before-src /tmp/before   # results/cpu_knn.*
    .venv/bin/python benchmarks/cpu_knn.py --quick                    # small, nothing saved
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from common import benchmark_parser, machine, median_report, peak_rss_mb, publish, run_child

METHODS = ("gemm", "products", "ours")
PRECISION_VARIABLE = "TRITON_RERANK_KNN_PRECISION"
REPEATS = 3
STRIP_ROWS = 2048


def run_method(method: str, data_path: str, topk: int | None) -> dict:
    """Child process: one timed call (after a small warm-up that compiles the kernels)."""
    import torch

    from triton_rerank import gnn_rerank

    with np.load(data_path) as data:
        xq, xg = data["query_f"], data["gallery_f"]
    if method == "gemm":
        nodes = torch.from_numpy(np.concatenate([xq, xg]))
        torch.matmul(nodes[:64], nodes[:256].T)
        start = time.perf_counter()
        for a in range(0, nodes.shape[0], STRIP_ROWS):
            torch.matmul(nodes[a : a + STRIP_ROWS], nodes[a:].T)
    elif method == "products":
        from triton_rerank.cpu.knn_precision import knn_precision

        nodes = torch.from_numpy(np.concatenate([xq, xg]))
        fast = torch.bfloat16 if knn_precision() == "bf16" else torch.float32
        torch.matmul(nodes[:64], nodes[:256].T)
        torch.matmul(nodes[:64].to(fast), nodes[:256].to(fast).T)
        n_query = xq.shape[0]
        start = time.perf_counter()
        for a in range(0, n_query, STRIP_ROWS):
            torch.matmul(nodes[a : a + STRIP_ROWS], nodes[a:].T)
        gallery = nodes[n_query:].to(fast)
        for a in range(0, gallery.shape[0], STRIP_ROWS):
            torch.matmul(gallery[a : a + STRIP_ROWS], gallery[a:].T)
    else:
        gnn_rerank(xq[:4], xg[:60], k1=8, k2=3)
        gnn_rerank(xq[:4], xg[:60], k1=8, k2=3, topk=5)
        start = time.perf_counter()
        gnn_rerank(xq, xg, k1=26, k2=7, lamb=0.3, topk=topk)
    return {"method": method, "seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def spawn(
    method: str,
    data_path: str,
    topk: int | None,
    *,
    precision: str = "auto",
    source: str | None = None,
) -> dict:
    """:func:`run_method` in a fresh process, on this checkout or on ``source``."""
    os.environ[PRECISION_VARIABLE] = precision  # inherited by the child
    args = ["--child", method, "--data", data_path]
    if topk is not None:
        args += ["--topk", str(topk)]
    try:
        return run_child(__file__, args, source=source)
    finally:
        del os.environ[PRECISION_VARIABLE]


def repeated(method, data_path, topk, repeats, **kwargs) -> dict:
    return median_report([spawn(method, data_path, topk, **kwargs) for _ in range(repeats)])


def certified_shares(sets: dict) -> list[dict]:
    """Rows proven by the fast pass per data set and pass (k1 = 26)."""
    from triton_rerank.checks import check_features
    from triton_rerank.cpu.knn import knn_graph

    rows = []
    for name, (xq, xg) in sets.items():
        nodes = check_features(xq, xg, normalize=True).nodes
        for precision in ("bf16", "fp32"):
            report = {}
            start = time.perf_counter()
            knn_graph(nodes, 26, precision=precision, report=report)
            rows.append(
                {
                    "data": name,
                    "n": nodes.shape[0],
                    "d": nodes.shape[1],
                    "precision": precision,
                    "candidates": report["candidates"],
                    "close_calls": report["close_calls"],
                    "certified": 1 - report["close_calls"] / nodes.shape[0],
                    "knn_seconds": time.perf_counter() - start,
                }
            )
    return rows


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], METHODS)
    parser.add_argument("--topk", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--before-src", help="a checkout of the code before the change")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_method(args.child, args.data, args.topk)))
        return

    from triton_rerank.app.data import load_digits_split, load_fashion_mnist_split
    from triton_rerank.app.synthetic import MARKET1501, MSMT17, ReidShape, reid_like_features
    from triton_rerank.cpu.knn_precision import auto_precision

    market = MARKET1501 if not args.quick else ReidShape(300, 1500, 64, 60, 6, 1 / 8)
    msmt = MSMT17 if not args.quick else ReidShape(500, 3000, 32, 100, 15, 1 / 8)
    repeats = REPEATS if not args.quick else 1
    results = {"market": {}, "msmt17": {}}
    shares_input = {}
    with tempfile.TemporaryDirectory() as workdir:
        paths = {}
        for name, shape in (("market", market), ("msmt17", msmt)):
            data = reid_like_features(shape, seed=0)
            paths[name] = os.path.join(workdir, f"{name}.npz")
            np.savez(paths[name], query_f=data.query_features, gallery_f=data.gallery_features)
            if name == "market":
                shares_input["Market-1501 shape (synthetic)"] = (
                    data.query_features,
                    data.gallery_features,
                )
        print("Market shape ...", file=sys.stderr, flush=True)
        runs = results["market"]
        runs["gemm"] = repeated("gemm", paths["market"], None, repeats)
        runs["products (floor of ours)"] = repeated("products", paths["market"], None, repeats)
        for topk in (None, 100):
            label = "full" if topk is None else f"top{topk}"
            runs[f"ours auto {label}"] = repeated("ours", paths["market"], topk, repeats)
            runs[f"ours fp32 {label}"] = repeated(
                "ours", paths["market"], topk, repeats, precision="fp32"
            )
            if args.before_src:
                runs[f"before {label}"] = repeated(
                    "ours", paths["market"], topk, repeats, source=args.before_src
                )
        print("MSMT17 shape ...", file=sys.stderr, flush=True)
        runs = results["msmt17"]
        runs["ours auto top100"] = spawn("ours", paths["msmt17"], 100)
        runs["ours fp32 top100"] = spawn("ours", paths["msmt17"], 100, precision="fp32")
        if args.before_src:
            runs["before top100"] = spawn("ours", paths["msmt17"], 100, source=args.before_src)

    digits = load_digits_split()
    shares_input["digits (real, d=64)"] = (digits.query_features, digits.gallery_features)
    try:
        fashion = load_fashion_mnist_split()
        shares_input["Fashion-MNIST test (real pixels, d=784)"] = (
            fashion.query_features,
            fashion.gallery_features,
        )
    except FileNotFoundError as error:
        print(f"Fashion-MNIST skipped: {error}", file=sys.stderr)
    shares = certified_shares(shares_input)

    gemm = results["market"]["gemm"]["seconds"]
    lines = [
        "# Certified CPU kNN",
        "",
        f"Command: `.venv/bin/python benchmarks/cpu_knn.py"
        f"{' --before-src <checkout of the code before>' if args.before_src else ''}"
        f"{' --quick' if args.quick else ''}`",
        "",
        f"Machine: {machine()}; `auto` picked {auto_precision()}.",
        "",
        f"Market-1501 shape (q={market.n_query}, g={market.n_gallery}, d={market.dim}, "
        "k1=26, k2=7, lamb=0.3), unit features in; median of "
        f"{repeats} fresh processes each; ratio = time / the plain fp32 upper-triangle "
        f"product of U in {STRIP_ROWS}-row strips measured in the same run.",
        "",
        "| run | time (s) | vs fp32 product | peak RSS (MB) | all times (s) |",
        "|---|---:|---:|---:|---|",
    ]
    for name, r in results["market"].items():
        lines.append(
            f"| {name} | {r['seconds']:.2f} | {r['seconds'] / gemm:.2f}x | "
            f"{r['peak_rss_mb']:.0f} | " + ", ".join(f"{t:.2f}" for t in r["all_seconds"]) + " |"
        )
    lines += [
        "",
        f"MSMT17 shape (q={msmt.n_query}, g={msmt.n_gallery}, d={msmt.dim}), topk=100, one "
        "run each:",
        "",
        "| run | time (s) | peak RSS (MB) |",
        "|---|---:|---:|",
    ]
    for name, r in results["msmt17"].items():
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} |")
    lines += [
        "",
        "Rows certified by the fast pass (k1 = 26; the rest are recomputed canonically):",
        "",
        "| data | N | d | pass | candidates | certified | close calls | kNN (s) |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in shares:
        lines.append(
            f"| {r['data']} | {r['n']:,} | {r['d']} | {r['precision']} | "
            f"{r['candidates']} | {100 * r['certified']:.2f}% | {r['close_calls']} | "
            f"{r['knn_seconds']:.2f} |"
        )
    publish(
        "cpu_knn",
        "\n".join(lines) + "\n",
        {"market": results["market"], "msmt17": results["msmt17"], "certified": shares},
        save=not args.quick,
    )


if __name__ == "__main__":
    main()
