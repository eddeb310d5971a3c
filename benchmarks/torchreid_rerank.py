"""torchreid benchmark: torchreid's own ``re_ranking`` vs our drop-in, as the engine calls them.

Market-1501-shaped synthetic features (``triton_rerank.app.synthetic``), L2-normalised;
the three distance matrices are computed the engine's way
(``compute_distance_matrix``, squared euclidean; ``distmat`` as numpy,
``distmat_qq``/``distmat_gg`` as tensors) before the clock starts, then each
``re_ranking`` is timed in its own process (peak RSS included the inputs, which both
share). The drop-in's ranking is compared with ``gnn_rerank`` on the features.

Run from the repository root (writes benchmarks/results/torchreid_rerank.{md,json}):

    .venv/bin/python benchmarks/torchreid_rerank.py

``--quick`` runs a small shape only (a smoke test of the script itself).
"""

from __future__ import annotations

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

METHODS = ("torchreid k-reciprocal", "gnn drop-in", "gnn_rerank on features")
GNN = dict(k1=26, k2=7, lamb=0.3)
REPEATS = 3  # the GNN runs take seconds: median of this many fresh processes


def run_method(method: str, data_path: str, out_path: str) -> dict:
    """Child process: distances as the engine makes them, then one timed re-ranking."""
    import torch

    from triton_rerank import gnn_rerank
    from triton_rerank.app.data import load_features
    from triton_rerank.evaluation.metrics import evaluate
    from triton_rerank.integrations.torchreid import re_ranking, torchreid_module

    data = load_features(data_path)
    qf = torch.nn.functional.normalize(torch.from_numpy(data.query_features), dim=1)
    gf = torch.nn.functional.normalize(torch.from_numpy(data.gallery_features), dim=1)
    if method == "gnn_rerank on features":
        gnn_rerank(qf[:4], gf[:60], k1=8, k2=3)  # compile the kernels first
        start = time.perf_counter()
        scores = gnn_rerank(qf, gf, **GNN).numpy()
    else:
        distance = torchreid_module("metrics").compute_distance_matrix
        distmat = distance(qf, gf).numpy()
        distmat_qq, distmat_gg = distance(qf, qf), distance(gf, gf)
        if method == "gnn drop-in":
            re_ranking(distmat[:4, :60], distmat_qq[:4, :4], distmat_gg[:60, :60], k1=8, k2=3)
            start = time.perf_counter()
            scores = -re_ranking(distmat, distmat_qq, distmat_gg, **GNN)
        else:
            k_reciprocal = torchreid_module("utils.rerank").re_ranking
            start = time.perf_counter()
            scores = -k_reciprocal(distmat, distmat_qq.numpy(), distmat_gg.numpy())
    seconds = time.perf_counter() - start
    report = {"method": method, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}
    metrics = evaluate(scores, *data.labels())
    report.update(mAP=metrics.mAP, rank1=float(metrics.cmc[0]))
    np.save(out_path, np.argsort(-scores, axis=1, kind="stable")[:, :100])
    return report


def main() -> None:
    args = benchmark_parser(__doc__.splitlines()[0], METHODS).parse_args()
    if args.child:
        print(json.dumps(run_method(args.child, args.data, args.out)))
        return

    from triton_rerank.app.synthetic import MARKET1501, ReidShape, reid_like_features

    shape = MARKET1501 if not args.quick else ReidShape(300, 1500, 64, 60, 6, 1 / 8)
    rows, tops = {}, {}
    with tempfile.TemporaryDirectory() as workdir:
        data_path = os.path.join(workdir, "market.npz")
        save_feature_set(data_path, reid_like_features(shape, seed=0))
        for method in METHODS:
            print(f"running {method} ...", file=sys.stderr, flush=True)
            out_path = os.path.join(workdir, f"{method.replace(' ', '_')}.npy")
            repeats = 1 if method.startswith("torchreid") else REPEATS
            rows[method] = median_report(
                [
                    run_child(__file__, ["--child", method, "--data", data_path, "--out", out_path])
                    for _ in range(repeats)
                ]
            )
            tops[method] = np.load(out_path)
    agreement = {
        k: top_agreement(tops["gnn drop-in"], tops["gnn_rerank on features"], k)
        for k in (1, 10, 100)
    }
    base = rows["gnn drop-in"]["seconds"]
    lines = [
        "# torchreid re_ranking benchmark",
        "",
        f"Command: `.venv/bin/python benchmarks/torchreid_rerank.py"
        f"{' --quick' if args.quick else ''}`",
        "",
        f"Machine: {machine()}",
        "",
        f"Market-1501 shape: q={shape.n_query}, g={shape.n_gallery}, d={shape.dim}; features "
        "L2-normalised; distance matrices made as torchreid's engine makes them, before the "
        "clock starts (both re-rankers take the same inputs). torchreid k-reciprocal: "
        "k1=20, k2=6, lambda=0.3; GNN: k1=26, k2=7, lamb=0.3. Each run in its own process; "
        f"the GNN rows are the median of {REPEATS} runs. Peak RSS includes the input "
        "distance matrices (1.6 GB for the gallery-gallery one).",
        "",
        "| method | time (s) | vs drop-in | peak RSS (MB) | mAP | Rank-1 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method in METHODS:
        r = rows[method]
        lines.append(
            f"| {method} | {r['seconds']:.2f} | {r['seconds'] / base:.1f}x | "
            f"{r['peak_rss_mb']:.0f} | {100 * r['mAP']:.2f}% | "
            f"{100 * r['rank1']:.2f}% |"
        )
    lines += [
        "",
        "Drop-in (from distances) vs gnn_rerank (from features), identical top-k lists: "
        + ", ".join(f"top-{k}: {100 * v:.2f}% of queries" for k, v in agreement.items()),
        "",
        "GNN times: "
        + "; ".join(
            f"{m}: " + ", ".join(f"{t:.2f}" for t in rows[m]["all_seconds"]) for m in METHODS[1:]
        )
        + " s.",
    ]
    publish(
        "torchreid_rerank",
        "\n".join(lines) + "\n",
        {"rows": rows, "top_agreement": agreement},
        save=not args.quick,
    )


if __name__ == "__main__":
    main()
