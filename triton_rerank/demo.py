"""Re-rank scikit-learn's digits and print mAP / Rank-1 before and after.

Run: ``python -m triton_rerank.demo``.
"""

from __future__ import annotations

import time

import numpy as np

from .data import load_digits_split
from .metrics import evaluate
from .rerank import gnn_rerank


def main() -> None:
    data = load_digits_split()
    labels = data.labels()
    query = data.query_features / np.linalg.norm(data.query_features, axis=1, keepdims=True)
    gallery = data.gallery_features / np.linalg.norm(data.gallery_features, axis=1,
                                                       keepdims=True)
    # compile the CPU kernels once, outside the timings
    q_pids, g_pids, q_camids, g_camids = labels
    evaluate(query[:20] @ gallery.T, q_pids[:20], g_pids, q_camids[:20], g_camids)
    gnn_rerank(query[:2], gallery[:30], k1=5, k2=2)
    start = time.perf_counter()
    before = evaluate(query @ gallery.T, *labels)
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    scores = gnn_rerank(query, gallery)
    rerank_s = time.perf_counter() - start
    after = evaluate(scores, *labels)

    print(f"sklearn digits: {len(query)} queries, {len(gallery)} gallery images, "
          f"64-d pixel features")
    print(f"{'method':<28}{'mAP':>8}{'Rank-1':>9}{'Rank-5':>9}{'time':>10}")
    for name, m, seconds in (("no re-ranking (cosine)", before, plain_s),
                             ("GNN re-ranking (k1=26,k2=7)", after, rerank_s)):
        print(f"{name:<28}{100 * m.mAP:>7.1f}%{100 * m.cmc[0]:>8.1f}%{100 * m.cmc[4]:>8.1f}%"
              f"{seconds:>9.3f}s")


if __name__ == "__main__":
    main()
