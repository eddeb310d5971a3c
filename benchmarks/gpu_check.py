"""GPU check of the Triton backend: compiled kernel tests and end-to-end timings.

On a CUDA machine, from the repository root (needs only torch, triton, numpy, scipy,
pytest and pytest-benchmark; offline; about 3-4 minutes, capped by ``--budget-s``):

    python benchmarks/gpu_check.py

1. Runs the kernel tests (``pytest -m interpreter tests/test_triton_*.py``), which are
   compiled for the GPU when CUDA is present, in a child process alongside steps 2-4;
   records pass/fail.
2. Times, on Market-1501-shaped synthetic features (q=3,368, g=19,732; d=512 and
   d=2048), features on the GPU to top-100 per query (k1=26, k2=7, lamb=0.3):
   ``gnn_rerank(backend="triton")`` vs the dense reference semantics
   (``triton_rerank.reference``, fp32, on the same GPU); CUDA events, warm-up, median
   of ``--runs`` runs; peak GPU memory of each; agreement of the two top-100 lists.
3. Times ours at the MSMT17 shape (N=93,820), where the dense reference does not fit.
4. Splits ours into its stages (kNN, propagation, scoring) at the Market shapes (the
   scoring also under other launch settings of its top-100 kernel), and
   times the kNN alone: the certified kNN (float16 candidates, exact rescoring), its
   candidate pass under other block sizes, and the exact float32 kernel (3xTF32 and
   "ieee" FMA products), with the agreement of their neighbour lists: the data for
   tuning the launch settings.

Results go to ``--out`` (default ``benchmarks/results/gpu_check_<device>.json``) after
every step, and to ``$OUT/<same name>`` when ``$OUT`` is set. ``--tiny`` runs small
shapes (and, without a GPU, the Triton interpreter): a smoke test of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import top_agreement

ROOT = Path(__file__).resolve().parents[1]
# the GPU machine has torch and triton but not this project installed
sys.path.insert(0, str(ROOT))
K1, K2, LAMB, TOPK = 26, 7, 0.3, 100


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", help="JSON path (default benchmarks/results/gpu_check_<device>.json)"
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="timed runs per method (default 20; 2 with --tiny)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=230.0,
        help="stop starting new steps after this many seconds",
    )
    parser.add_argument(
        "--tests-wait-s",
        type=float,
        default=40.0,
        help="how long to wait for the kernel tests after the timings",
    )
    parser.add_argument("--skip-tests", action="store_true", help="timings only")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="small shapes; without a GPU, runs in the Triton interpreter",
    )
    args = parser.parse_args()
    if args.runs is None:  # the interpreter takes seconds per call
        args.runs = 2 if args.tiny else 20
    return args


class Report:
    """The JSON result, rewritten to every destination after each step."""

    def __init__(self, paths: list[Path], facts: dict):
        self.paths = paths
        self.data = {**facts, "tests": None, "cases": []}

    def save(self) -> None:
        text = json.dumps(self.data, indent=2) + "\n"
        for path in self.paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


class KernelTests:
    """The interpreter-marked tests (compiled when CUDA is present) in a child process
    that runs alongside the timings: compiling them takes CPU minutes, running them
    takes the GPU a few milliseconds."""

    COMMAND = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "interpreter",
        "-p",
        "no:cacheprovider",
        "tests/test_triton_kernels.py",
        "tests/test_triton_backend.py",
    ]

    def __init__(self):
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(
            self.COMMAND, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def result(self, timeout_s: float) -> dict:
        """Wait up to ``timeout_s`` for the tests; kill them after that."""
        try:
            output, _ = self.proc.communicate(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            output, _ = self.proc.communicate()
            return {
                "passed": False,
                "summary": f"timed out after {time.perf_counter() - self.start:.0f} s",
                "output_tail": output[-3000:],
            }
        lines = output.strip().splitlines()
        return {
            "passed": self.proc.returncode == 0,
            "returncode": self.proc.returncode,
            "summary": lines[-1] if lines else "",
            "seconds": time.perf_counter() - self.start,
            "output_tail": output[-3000:],
        }


class Timer:
    """Milliseconds of a synchronised call: CUDA events on a GPU, wall clock otherwise."""

    def __init__(self, device):
        import torch

        self.torch, self.cuda = torch, device.type == "cuda"

    def __call__(self, fn) -> float:
        torch = self.torch
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return 1000 * (time.perf_counter() - start)
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        begin.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return begin.elapsed_time(end)


def dense_reference_topk(xq, xg, topk: int):
    """The dense reference semantics (``reference.gnn_rerank_reference``) in fp32 on the
    features' device, to the top-``topk`` per query (plain products: the timing baseline;
    the canonical similarities would add d dense N x N updates)."""
    import torch

    from triton_rerank.reference import gnn_rerank_reference
    from triton_rerank.topk import topk_rows

    scores = gnn_rerank_reference(
        xq,
        xg,
        k1=K1,
        k2=K2,
        iterations=2,
        lamb=LAMB,
        dtype=torch.float32,
        device=xq.device,
        similarity="matmul",
    )
    return topk_rows(scores, topk)


def time_method(fn, timer: Timer, runs: int, deadline: float) -> dict:
    """Warm up (compiles), then time up to ``runs`` calls while before ``deadline``."""
    import torch

    cuda = timer.cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    warm_ms = timer(fn)
    times = []
    while len(times) < runs and time.perf_counter() < deadline:
        times.append(timer(fn))
    result = {
        "median_ms": float(np.median(times)) if times else None,
        "runs": len(times),
        "all_ms": [round(t, 3) for t in times],
        "warmup_ms": round(warm_ms, 3),
    }
    if cuda:
        result["peak_gpu_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return result


# Launch settings of the final top-100 (streaming top-k at K_PAD 128) tried by
# stage_times, over the default ones
SCORING_SWEEP = [{"BLOCK_M": 16}, {"BLOCK_M": 64}, {"num_warps": 4}]


def streaming_launch_override(k_pad: int, override: dict):
    """Within the block, launches of the streaming top-k kernel at ``k_pad`` use
    ``override`` over their default settings (``gpu/launch_config.py``'s hook)."""
    from triton_rerank.gpu import launch_config

    return launch_config.override("streaming_topk", override, k_pad=k_pad)


def stage_times(xq, xg, timer: Timer, runs: int, deadline: float) -> dict:
    """Median ms of each stage of ``gpu_pipeline.run_triton`` (after the input checks),
    then of the scoring stage under each launch setting of SCORING_SWEEP."""
    import torch
    import triton

    from triton_rerank.gpu import pipeline as gpu_pipeline

    nodes = torch.nn.functional.normalize(torch.cat([xq, xg]), dim=1).contiguous()
    n_query = xq.shape[0]
    state = {}

    def knn():
        state["knn"] = gpu_pipeline.knn(nodes, K1)

    def propagate():
        state["graph"] = gpu_pipeline.propagate(*state["knn"], n_query=n_query, k2=K2, iterations=2)

    def score():
        gpu_pipeline.rerank_scores(
            state["graph"], nodes[:n_query], nodes[n_query:], lamb=LAMB, topk=min(TOPK, xg.shape[0])
        )

    stages = {"knn": knn, "propagate": propagate, "score_topk": score}
    times = {name: [] for name in stages}
    for _ in range(runs + 1):  # the first round warms up
        for name, stage in stages.items():
            times[name].append(timer(stage))
    graph = state["graph"]
    result = {
        **{f"{name}_ms": float(np.median(t[1:])) for name, t in times.items()},
        "mixing_nnz": int(graph.mixing.indices.shape[0]),
        "query_rows_nnz": int(graph.query_rows.indices.shape[0]),
        "scoring_sweep": [],
    }
    k_pad = triton.next_power_of_2(min(TOPK, xg.shape[0]))
    for override in SCORING_SWEEP:
        entry = {"tuning": override}
        result["scoring_sweep"].append(entry)
        if time.perf_counter() > deadline:
            entry["skipped"] = "time budget spent"
            continue
        try:
            with streaming_launch_override(k_pad, override):
                timer(score)  # compiles
                entry["score_topk_ms"] = float(np.median([timer(score) for _ in range(runs)]))
        except Exception as error:  # e.g. out of resources: record, go on
            entry["error"] = f"{type(error).__name__}: {error}"[:300]
    return result


# Launch settings of the streaming top-k kernel tried by knn_sweep, on the float16
# candidate pass of the certified kNN (the default) and on the exact float32 kernel
CANDIDATE_SWEEP = [
    {},
    {"num_warps": 4},
    {"BLOCK_M": 32},
    {"BLOCK_M": 128},
    {"BLOCK_N": 128},
    {"BLOCK_D": 64},
]
EXACT_SWEEP = [{}, {"INPUT_PRECISION": "ieee"}, {"num_warps": 4}]


def knn_sweep(xq, xg, timer: Timer, runs: int, deadline: float) -> list[dict]:
    """The kNN (k1 of Market) alone: the certified kNN (default), its float16 candidate
    pass under each setting of CANDIDATE_SWEEP, and the exact float32 kernel under each
    of EXACT_SWEEP (3xTF32, or "ieee" FMA products). Median ms; for whole kNN runs, the
    fraction of rows whose neighbours equal the certified kNN's."""
    import torch

    from triton_rerank.gpu.certified_topk import candidate_count, certified_topk
    from triton_rerank.gpu.streaming_topk import streaming_topk

    nodes = torch.nn.functional.normalize(torch.cat([xq, xg]), dim=1).contiguous()
    half = nodes.half()
    n = nodes.shape[0]
    n_cand = candidate_count(K1, n)
    runs_to_do = [("certified (default)", {}, lambda: certified_topk(nodes, nodes, K1))]
    runs_to_do += [
        (
            f"fp16 candidates k={n_cand}",
            tuning,
            lambda t=tuning: streaming_topk(n_cand, n, n, x=half, y=half, tuning=t),
        )
        for tuning in CANDIDATE_SWEEP
    ]
    runs_to_do += [
        (
            "exact fp32",
            tuning,
            lambda t=tuning: streaming_topk(K1, n, n, x=nodes, y=nodes, tuning=t),
        )
        for tuning in EXACT_SWEEP
    ]
    results, reference = [], None
    for label, tuning, fn in runs_to_do:
        entry = {"run": label, "tuning": tuning}
        results.append(entry)
        if time.perf_counter() > deadline:
            entry["skipped"] = "time budget spent"
            continue
        out = {}

        def run(fn=fn, out=out):
            out["result"] = fn()

        try:
            timer(run)  # compiles
            entry["median_ms"] = float(np.median([timer(run) for _ in range(runs)]))
        except Exception as error:  # e.g. too much shared memory: record, go on
            entry["error"] = f"{type(error).__name__}: {error}"[:300]
            continue
        indices = out["result"][1]
        if label.startswith("certified"):
            reference = indices
            entry["rows_recomputed"] = out["result"][2]
        elif label == "exact fp32" and reference is not None:
            entry["rows_equal_to_certified"] = float((indices == reference).all(1).float().mean())
    return results


def run_case(
    name: str,
    shape,
    *,
    with_reference: bool,
    skip_reason: str,
    device,
    timer,
    runs: int,
    deadline: float,
) -> dict:
    import torch

    from triton_rerank import gnn_rerank
    from triton_rerank.app.synthetic import reid_like_features

    data = reid_like_features(shape, seed=0)
    xq = torch.from_numpy(data.query_features).to(device)
    xg = torch.from_numpy(data.gallery_features).to(device)
    topk = min(TOPK, shape.n_gallery)
    case = {
        "name": name,
        "n_query": shape.n_query,
        "n_gallery": shape.n_gallery,
        "dim": shape.dim,
        "k1": K1,
        "k2": K2,
        "lamb": LAMB,
        "topk": topk,
        "input_gpu_mb": (xq.numel() + xg.numel()) * 4 / 2**20,
    }
    ours_out = {}

    def ours():
        ours_out["top"] = gnn_rerank(xq, xg, k1=K1, k2=K2, lamb=LAMB, topk=topk, backend="triton")

    case["ours"] = time_method(ours, timer, runs, deadline)
    if with_reference and time.perf_counter() < deadline:  # the Market shapes
        case["ours_stages"] = stage_times(xq, xg, timer, runs=5, deadline=deadline)
    if not with_reference:
        case["reference"] = {"skipped": skip_reason}
        return case
    if time.perf_counter() > deadline:
        case["reference"] = {"skipped": "time budget spent"}
        return case
    ref_out = {}

    def reference():
        ref_out["top"] = dense_reference_topk(xq, xg, topk)

    try:
        case["reference"] = time_method(reference, timer, runs, deadline)
    except torch.OutOfMemoryError as error:
        case["reference"] = {"skipped": f"out of memory: {error}"[:300]}
        return case
    ours_idx, ref_idx = ours_out["top"][1].cpu().numpy(), ref_out["top"][1].cpu().numpy()
    case["top10_rows_identical"] = top_agreement(ours_idx, ref_idx, 10)
    case["top100_overlap"] = float(
        np.mean([np.intersect1d(a, b).size / topk for a, b in zip(ours_idx, ref_idx, strict=True)])
    )
    ours_ms, ref_ms = case["ours"]["median_ms"], case["reference"]["median_ms"]
    if ours_ms and ref_ms:
        case["speedup_vs_reference"] = ref_ms / ours_ms
    return case


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    deadline = start + args.budget_s
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        if not args.tiny:
            sys.exit(
                "gpu_check: no CUDA device; use --tiny for a smoke test in the Triton interpreter"
            )
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported
    import triton

    from triton_rerank.app.synthetic import MARKET1501, MSMT17, reid_like_features

    device = torch.device("cuda" if cuda else "cpu")
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu-interpreter"
    slug = re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")
    name = f"gpu_check_{slug}.json" if not args.tiny else f"gpu_check_{slug}_tiny.json"
    paths = [Path(args.out) if args.out else ROOT / "benchmarks" / "results" / name]
    if os.environ.get("OUT"):
        paths.append(Path(os.environ["OUT"]) / paths[0].name)
    report = Report(
        paths,
        {
            "device": device_name,
            "torch": torch.__version__,
            "triton": triton.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "runs": args.runs,
            "budget_s": args.budget_s,
            "tiny": args.tiny,
            "timing": "CUDA events, 1 warm-up, median"
            if cuda
            else "wall clock (interpreter), median",
        },
    )
    report.save()

    tests = None if args.skip_tests else KernelTests()

    if args.tiny:
        cases = [
            (
                "tiny-d64",
                replace(MARKET1501, n_query=30, n_gallery=170, dim=64, n_ids=20),
                True,
                "",
            ),
            (
                "tiny-no-reference",
                replace(MSMT17, n_query=20, n_gallery=120, dim=32, n_ids=15),
                False,
                "skipped (test of the skip)",
            ),
        ]
    else:
        cases = [
            ("market-d512", MARKET1501, True, ""),
            ("market-d2048", replace(MARKET1501, dim=2048), True, ""),
            (
                "msmt17-d128",
                MSMT17,
                False,
                "dense reference needs several N x N fp32 buffers (N = 93,820: 35 GB "
                "each); it does not fit, and the original CUDA code overflows int32",
            ),
        ]
    timer = Timer(device)
    for case_name, shape, with_reference, reason in cases:
        if time.perf_counter() > deadline:
            report.data["cases"].append({"name": case_name, "skipped": "time budget spent"})
            report.save()
            continue
        try:
            case = run_case(
                case_name,
                shape,
                with_reference=with_reference,
                skip_reason=reason,
                device=device,
                timer=timer,
                runs=args.runs,
                deadline=deadline,
            )
        except Exception as error:  # record and go on: one shot on the GPU
            case = {"name": case_name, "error": f"{type(error).__name__}: {error}"[:2000]}
        report.data["cases"].append(case)
        report.data["elapsed_s"] = time.perf_counter() - start
        report.save()
        print(
            json.dumps({k: v for k, v in case.items() if k != "all_ms"}, default=str)[:600],
            flush=True,
        )
        if cuda:
            torch.cuda.empty_cache()
    if time.perf_counter() < deadline:
        try:
            data = reid_like_features(MARKET1501 if not args.tiny else cases[0][1], seed=0)
            report.data["knn_sweep"] = knn_sweep(
                torch.from_numpy(data.query_features).to(device),
                torch.from_numpy(data.gallery_features).to(device),
                timer,
                runs=min(args.runs, 10),
                deadline=deadline,
            )
        except Exception as error:
            report.data["knn_sweep"] = {"error": f"{type(error).__name__}: {error}"[:2000]}
        report.data["elapsed_s"] = time.perf_counter() - start
        report.save()
        print("knn sweep:", json.dumps(report.data["knn_sweep"])[:1500], flush=True)
    if tests:
        report.data["tests"] = tests.result(args.tests_wait_s)
        report.data["elapsed_s"] = time.perf_counter() - start
        report.save()
        print("kernel tests:", report.data["tests"]["summary"], flush=True)
    print(f"wrote {', '.join(map(str, paths))} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
