"""How often the certified kNN's certificate holds, on real and Market-shaped features.

The Triton kNN for float32 features (``triton_rerank/gpu/certified_topk.py``) takes
candidates from a float16 pass and falls back to the exact (slower) kernel for rows it
cannot certify. Its speed therefore depends on the share of certified rows. This script
measures that share without a GPU, emulating the candidate pass with torch on the CPU
(float16-rounded rows, products summed in fp32: the kernel's arithmetic up to the order
of the sums) and using the module's own error bound and margin. It also checks, on a
sample of rows, that the certified result equals the fp64 top-k.

    .venv/bin/python benchmarks/certified_knn.py            # writes results/certified_knn.*
    .venv/bin/python benchmarks/certified_knn.py --quick    # small shapes, nothing saved
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
from common import publish

from triton_rerank.gpu.certified_topk import DEFAULT_MARGIN, candidate_count, error_bound
from triton_rerank.topk import sort_by_value_then_index, topk_rows

BLOCK_ROWS = 512
CHECKED_ROWS = 500


def certify(nodes: torch.Tensor, k: int, margin: int) -> dict:
    """Emulate certified_topk(nodes, nodes, k) block by block; count certified rows."""
    n = nodes.shape[0]
    n_cand = candidate_count(k, n, margin)
    half = nodes.half().float()
    bound = error_bound(nodes, nodes)
    certified = torch.zeros(n, dtype=torch.bool)
    top_indices = torch.empty(n, k, dtype=torch.int64)
    gaps = []
    for start in range(0, n, BLOCK_ROWS):
        rows = slice(start, min(n, start + BLOCK_ROWS))
        approx_values, candidates = torch.topk(half[rows] @ half.T, n_cand, dim=1)
        exact = torch.einsum("rd,rcd->rc", nodes[rows], nodes[candidates])
        values, indices = sort_by_value_then_index(exact, candidates)
        left_out_at_most = approx_values[:, -1] + bound[rows]
        certified[rows] = values[:, k - 1] > left_out_at_most
        gaps.append((values[:, k - 1] - approx_values[:, -1]) / bound[rows])
        top_indices[rows] = indices[:, :k]
    # the certified rows agree with fp64 on a sample, apart from rows whose fp64 top-k
    # has a near-tie (gap under 1e-6: fp32 cannot order those; duplicate images do it)
    rng = np.random.default_rng(0)
    sample = torch.from_numpy(rng.choice(n, min(n, CHECKED_ROWS), replace=False))
    sample = sample[certified[sample]]
    ref_values, ref = topk_rows(nodes[sample].double() @ nodes.double().T, k + 1)
    clear = (ref_values.diff(dim=1).abs() > 1e-6).all(dim=1)
    equal = (top_indices[sample] == ref[:, :k]).all(1)
    gaps = torch.cat(gaps)
    return {
        "rows": n,
        "dim": nodes.shape[1],
        "k": k,
        "candidates": n_cand,
        "certified_share": float(certified.float().mean()),
        "median_delta": float(bound.median()),
        "median_gap_over_delta": float(gaps.median()),
        "smallest_gap_over_delta": float(gaps.min()),
        "sampled_rows": int(sample.numel()),
        "sampled_rows_with_near_ties": int((~clear).sum()),
        "sampled_clear_rows_equal_fp64": float(equal[clear].float().mean()),
        "sampled_rows_equal_fp64": float(equal.float().mean()),
    }


def datasets(quick: bool):
    """``(name, features [N, d] float32 L2-normalised)`` of each data set."""
    from triton_rerank.app.data import (
        load_digits_split,
        load_fashion_mnist,
        load_fashion_mnist_split,
        load_features,
    )
    from triton_rerank.app.synthetic import MARKET1501, reid_like_features

    from_set = [("digits (real, d=64)", load_digits_split())]
    try:
        from_set.append(("Fashion-MNIST test (real pixels, d=784)", load_fashion_mnist_split()))
    except FileNotFoundError as error:
        print(f"skipping Fashion-MNIST: {error}")
    try:
        from_set.append(
            (
                "PKU-Sketch (real re-ID features)",
                load_features("../shared/data/pku_sketch_pytorch_result.mat"),
            )
        )
    except FileNotFoundError as error:
        print(f"skipping PKU-Sketch: {error}")
    shapes = [MARKET1501, replace(MARKET1501, dim=2048)]
    if quick:
        shapes = [replace(s, n_query=300, n_gallery=1700, n_ids=150) for s in shapes]
    for shape in shapes:
        from_set.append(
            (f"Market-shaped synthetic (d={shape.dim})", reid_like_features(shape, seed=0))
        )
    arrays = [
        (name, np.concatenate([data.query_features, data.gallery_features]))
        for name, data in from_set
    ]
    if not quick:
        try:
            arrays.append(
                ("Fashion-MNIST, all 70,000 (real pixels, d=784)", load_fashion_mnist()[0])
            )
        except FileNotFoundError:
            pass
    for name, nodes in arrays:
        nodes = torch.nn.functional.normalize(torch.from_numpy(nodes).float(), dim=1)
        yield name, nodes.contiguous()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, nothing saved")
    args = parser.parse_args()
    results = []
    for name, nodes in datasets(args.quick):
        for k in (26, 60):  # Market's k1, VeRi's k1
            start = time.perf_counter()
            result = {
                "data": name,
                **certify(nodes, k, DEFAULT_MARGIN),
                "seconds": time.perf_counter() - start,
            }
            print(result, flush=True)
            results.append(result)
    lines = [
        "| data | N | d | k1 | candidates | certified | median delta | gap / delta:"
        " median, smallest |"
        " sampled rows = fp64 (without near-ties) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['data']} | {r['rows']:,} | {r['dim']} | {r['k']} | "
            f"{r['candidates']} | {100 * r['certified_share']:.2f}% | "
            f"{r['median_delta']:.2e} | {r['median_gap_over_delta']:.1f}, "
            f"{r['smallest_gap_over_delta']:.2f} | "
            f"{100 * r['sampled_rows_equal_fp64']:.1f}% "
            f"({100 * r['sampled_clear_rows_equal_fp64']:.1f}%) |"
        )
    table = (
        "# Certified kNN: share of rows certified by the float16 pass\n\n"
        "Command: `.venv/bin/python benchmarks/certified_knn.py` (CPU emulation of the\n"
        "candidate pass; margin "
        f"{DEFAULT_MARGIN}). The gap is the k-th rescored similarity minus the last\n"
        "candidate's float16 similarity; a row is certified when the gap exceeds its\n"
        "delta (the error bound), i.e. gap / delta > 1. Uncertified rows are recomputed\n"
        "by the exact kernel on the GPU. The last column compares a sample of 500\n"
        "certified rows with the fp64 top-k (in brackets: rows without a near-tie).\n\n"
        + "\n".join(lines)
        + "\n"
    )
    publish(
        "certified_knn", table, {"margin": DEFAULT_MARGIN, "results": results}, save=not args.quick
    )


if __name__ == "__main__":
    main()
