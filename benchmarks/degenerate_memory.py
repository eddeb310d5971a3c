"""Peak memory and time of ``gnn_rerank`` on degenerate data against Gaussian features of
the same size: all rows identical, half of them identical.

Identical features share one kNN list, which makes the propagated rows dense; the CPU
path then switches to dense rows (``triton_rerank/cpu/propagation.py``), so memory stays at
about one ``N x N`` float32 matrix. Each case runs in a fresh process (so its peak RSS
is its own); the target is the all-identical case within 2x of the Gaussian peak RSS.

    .venv/bin/python benchmarks/degenerate_memory.py          # writes results/degenerate_memory.*
    .venv/bin/python benchmarks/degenerate_memory.py --quick  # small, nothing saved
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from common import benchmark_parser, peak_rss_mb, publish, run_child

KINDS = ("gaussian", "half identical", "all identical")
N_QUERY, DIM, SEED = 100, 64, 0


def features(kind: str, n: int) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    if kind == "all identical":
        x[:] = x[0]
    elif kind == "half identical":
        x[: n // 2] = x[0]
    return x


def run_case(kind: str, n: int) -> dict:
    """Child process: the full ``[q, g]`` scores of one case, after a warm-up."""
    from triton_rerank import gnn_rerank

    x = features(kind, n)
    gnn_rerank(x[:3], x[3:40], k1=5, k2=2)
    before = peak_rss_mb()
    start = time.perf_counter()
    gnn_rerank(x[:N_QUERY], x[N_QUERY:])
    return {
        "kind": kind,
        "n": n,
        "seconds": time.perf_counter() - start,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": before,
    }


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], KINDS)
    parser.add_argument("--n", type=int, default=10100, help="query + gallery (default 10,100)")
    parser.add_argument("--before-src", help="also run a checkout of the code before")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.n)))
        return
    n = 1500 if args.quick else args.n
    rows = []
    for source in [None] + ([args.before_src] if args.before_src else []):
        for kind in KINDS:
            print(f"{kind} ({source or 'this checkout'}) ...", file=sys.stderr, flush=True)
            row = run_child(__file__, ["--child", kind, "--n", str(n)], source=source)
            rows.append(dict(row, code="before" if source else "this change"))
    gaussian = rows[0]
    lines = [
        "# Degenerate data: memory and time",
        "",
        f"Command: `.venv/bin/python benchmarks/degenerate_memory.py"
        f"{' --before-src <checkout of the code before>' if args.before_src else ''}"
        f"{' --quick' if args.quick else ''}` (before: the main branch before the "
        "canonical kNN and the dense rows)",
        "",
        f"gnn_rerank (k1=26, k2=7, lamb=0.3, full [q, g] scores), q={N_QUERY}, "
        f"g={n - N_QUERY}, d={DIM}; each case in a fresh process; peak RSS of the whole "
        "process (importing torch is most of the baseline).",
        "",
        "| code | features | time (s) | peak RSS (MB) | vs Gaussian (this change) | "
        "RSS before the call (MB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['code']} | {r['kind']} | {r['seconds']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / gaussian['peak_rss_mb']:.2f}x "
            f"| {r['rss_before_mb']:.0f} |"
        )
    publish("degenerate_memory", "\n".join(lines) + "\n", {"cases": rows}, save=not args.quick)


if __name__ == "__main__":
    main()
