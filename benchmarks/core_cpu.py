"""Core CPU benchmark: ours vs the dense reference vs torchreid's k-reciprocal re-ranking.

Market-1501-shaped synthetic features (q=3,368, g=19,732, d=512; see
``triton_rerank.app.synthetic``), each method in its own process (so peak RSS is its
own), timed from features in to the ``[q, g]`` scores out, then evaluated with
``triton_rerank.evaluation.metrics.evaluate``. Also runs ours at the MSMT17 shape (q=11,659,
g=82,161, d=128) with ``topk=100``, where the dense reference would need > 100 GB.

Run from the repository root (writes benchmarks/results/core_cpu.{md,json}):

    .venv/bin/python benchmarks/core_cpu.py

``--quick`` runs a small shape only (a smoke test of the script itself).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from common import (
    benchmark_parser,
    machine,
    median_report,
    peak_rss_mb,
    publish,
    run_child,
    save_feature_set,
    top_agreement,
)

METHODS = ("ours", "reference", "k-reciprocal")
# ours takes seconds, so it is run this many times (each in a fresh process) and the
# median is reported: this machine's timings vary by +-15% from run to run
OURS_REPEATS = 5


def run_method(method: str, data_path: str, topk: int | None, out_path: str) -> dict:
    """Child process: load features, run one method, report time / peak RSS / accuracy."""
    import torch

    from triton_rerank import gnn_rerank
    from triton_rerank.app.data import load_features
    from triton_rerank.evaluation.metrics import evaluate
    from triton_rerank.reference import gnn_rerank_reference

    data = load_features(data_path)
    xq, xg = data.query_features, data.gallery_features
    if method == "ours":
        gnn_rerank(xq[:4], xg[:60], k1=8, k2=3)  # compile the numba kernels first
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    if method == "ours":
        result = gnn_rerank(xq, xg, k1=26, k2=7, lamb=0.3, topk=topk)
    elif method == "reference":
        result = gnn_rerank_reference(
            xq, xg, k1=26, k2=7, lamb=0.3, dtype=torch.float32, similarity="matmul"
        )
    else:
        from triton_rerank.integrations.torchreid import k_reciprocal_distances

        result = -k_reciprocal_distances(torch.from_numpy(xq), torch.from_numpy(xg))
    seconds = time.perf_counter() - start
    report = {
        "method": method,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before,
    }
    if topk is None:
        scores = np.asarray(result, dtype=np.float32)
        metrics = evaluate(scores, *data.labels())
        report.update(mAP=metrics.mAP, rank1=float(metrics.cmc[0]))
        top = np.argsort(-scores, axis=1, kind="stable")[:, :100]
    else:
        top = np.asarray(result[1])
    np.save(out_path, top)
    return report


def spawn(method: str, data_path: str, topk: int | None, workdir: str) -> dict:
    out_path = os.path.join(workdir, f"top_{method}_{topk}.npy")
    args = ["--child", method, "--data", data_path, "--out", out_path]
    if topk is not None:
        args += ["--topk", str(topk)]
    return dict(run_child(__file__, args), top_path=out_path)


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], METHODS)
    parser.add_argument("--topk", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_method(args.child, args.data, args.topk, args.out)))
        return

    from triton_rerank.app.synthetic import MARKET1501, MSMT17, ReidShape, reid_like_features
    from triton_rerank.evaluation.metrics import evaluate

    market = MARKET1501 if not args.quick else ReidShape(300, 1500, 64, 60, 6, 1 / 8)
    msmt = MSMT17 if not args.quick else ReidShape(500, 3000, 32, 100, 15, 1 / 8)
    with tempfile.TemporaryDirectory() as workdir:
        paths = {}
        for name, shape in (("market", market), ("msmt", msmt)):
            data = reid_like_features(shape, seed=0)
            paths[name] = os.path.join(workdir, f"{name}.npz")
            save_feature_set(paths[name], data)
            if name == "market":
                plain = evaluate(data.query_features @ data.gallery_features.T, *data.labels())
            del data
        rows = {}
        for method in METHODS:
            print(f"running {method} on the Market-1501 shape ...", file=sys.stderr, flush=True)
            rows[method] = spawn(method, paths["market"], None, workdir)
        rows["ours"] = median_report(
            [rows["ours"]]
            + [spawn("ours", paths["market"], None, workdir) for _ in range(OURS_REPEATS - 1)]
        )
        print("running ours on the MSMT17 shape (topk=100) ...", file=sys.stderr, flush=True)
        msmt_row = spawn("ours", paths["msmt"], 100, workdir)
        ours_top, reference_top = (np.load(rows[m]["top_path"]) for m in ("ours", "reference"))
        agreement = {k: top_agreement(ours_top, reference_top, k) for k in (1, 10, 100)}

    ours = rows["ours"]
    lines = [
        "# Core CPU benchmark",
        "",
        f"Command: `.venv/bin/python benchmarks/core_cpu.py{' --quick' if args.quick else ''}`",
        "",
        f"Machine: {machine()}",
        "",
        f"Market-1501 shape: q={market.n_query}, g={market.n_gallery}, d={market.dim}, "
        f"{market.n_ids} ids, {market.n_cams} cameras, 1/8 distractors; features in, "
        "[q, g] scores out; each method in its own process. GNN: k1=26, k2=7, lamb=0.3, "
        "2 iterations; k-reciprocal: torchreid's re_ranking (k1=20, k2=6, lambda=0.3) "
        "including its distance matrices. Peak RSS is the whole process (importing the "
        "CUDA build of torch alone is ~690 MB).",
        "",
        f"Ours: median of {OURS_REPEATS} runs (each in a fresh process; all: "
        + ", ".join(f"{t:.2f}" for t in rows["ours"]["all_seconds"])
        + " s), max peak RSS of those runs. The baselines run once.",
        "",
        "| method | time (s) | vs ours | peak RSS (MB) | mAP | Rank-1 |",
        "|---|---:|---:|---:|---:|---:|",
        f"| no re-ranking (cosine) | - | - | - | {100 * plain.mAP:.1f}% | "
        f"{100 * plain.cmc[0]:.1f}% |",
    ]
    for method in METHODS:
        r = rows[method]
        lines.append(
            f"| {method} | {r['seconds']:.2f} | {r['seconds'] / ours['seconds']:.1f}x | "
            f"{r['peak_rss_mb']:.0f} | {100 * r['mAP']:.1f}% | {100 * r['rank1']:.1f}% |"
        )
    lines += [
        "",
        "Ours vs the dense reference, identical top-k lists (order included): "
        + ", ".join(f"top-{k}: {100 * v:.2f}% of queries" for k, v in agreement.items()),
        "",
        f"MSMT17 shape (q={msmt.n_query}, g={msmt.n_gallery}, d={msmt.dim}), ours with "
        f"topk=100: {msmt_row['seconds']:.1f} s, peak RSS {msmt_row['peak_rss_mb']:.0f} MB "
        "(the dense reference would hold several 93,820^2 fp32 matrices: > 100 GB).",
    ]
    publish(
        "core_cpu",
        "\n".join(lines) + "\n",
        {
            "market": rows,
            "msmt17_topk100": msmt_row,
            "plain_mAP": plain.mAP,
            "top_agreement_vs_reference": agreement,
        },
        save=not args.quick,
    )


if __name__ == "__main__":
    main()
