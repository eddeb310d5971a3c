"""Compile every kernel variant the Triton backend launches, for NVIDIA GPUs, without
a GPU: Triton's compiler and the ptxas bundled in its wheel run on any machine.

The interpreter tests check what the kernels compute; this catches what only the
compiler rejects (constexpr misuse, layouts, dtypes, atomics on a real target). Run
by tests/test_triton_compile.py in a child process, since TRITON_INTERPRET must be
unset when the kernels are decorated. Prints one line per variant; exit status 1 if
any failed.

    python tests/compile_kernels.py [--arch 90 --arch 80]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("compile_kernels: unset TRITON_INTERPRET (interpreted kernels do not compile)")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from triton_rerank.gpu import (  # noqa: E402
    aggregate,
    canonical,
    launch_config,
    scoring,
    streaming_topk,
)
from triton_rerank.gpu.tiles import input_precision  # noqa: E402

CUDA = torch.device("cuda")  # only selects the GPU launch settings; never touched
FP32_SCALARS = {"eps", "keep", "mix"}
TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def signature(kernel, pointers: dict, constexprs: dict) -> dict:
    """Triton signature of ``kernel``: ``pointers`` maps pointer arguments to element
    types ("fp32", "i64", ...); other arguments are constexprs, fp32 or i32 scalars."""
    types = {}
    for name in kernel.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name.endswith("_ptr"):
            types[name] = "*" + pointers.get(name, "fp32")
        else:
            types[name] = "fp32" if name in FP32_SCALARS else "i32"
    return types


def streaming_variant(k: int, dtype: torch.dtype, has_dot: bool, has_two_hop: bool):
    constexprs = streaming_topk.streaming_config(k, dtype, CUDA)
    num_warps = constexprs.pop("num_warps")
    constexprs.update(HAS_DOT=has_dot, HAS_TWO_HOP=has_two_hop)
    pointers = {
        "x_ptr": TRITON_TYPES[dtype],
        "y_ptr": TRITON_TYPES[dtype],
        "g_idx_ptr": "i64",
        "out_idx_ptr": "i64",
    }
    return streaming_topk._streaming_topk_kernel, pointers, constexprs, num_warps


def score_block_variant(has_dot: bool):
    launch = launch_config.score_block(CUDA)
    constexprs = dict(
        HAS_DOT=has_dot,
        HAS_TWO_HOP=True,
        INPUT_PRECISION=input_precision(torch.float32),
        **{n: v for n, v in launch.items() if n != "num_warps"},
    )
    return scoring._score_block_kernel, {"g_idx_ptr": "i64"}, constexprs, launch["num_warps"]


def aggregate_variant(kernel, launch: dict, **flags):
    pointers = {name: "i64" for name in kernel.arg_names if "indptr" in name or "cols" in name}
    pointers["w_out_ptr"] = "i64"
    constexprs = {**flags, **{n: v for n, v in launch.items() if n != "num_warps"}}
    return kernel, pointers, constexprs, launch["num_warps"]


VARIANTS = {
    "knn fp32 k=26": streaming_variant(26, torch.float32, True, False),
    "knn fp16 k=26": streaming_variant(26, torch.float16, True, False),
    "knn bf16 k=60": streaming_variant(60, torch.bfloat16, True, False),
    "knn fp32 k=256": streaming_variant(256, torch.float32, True, False),
    "certified knn: fp16 candidates k=64": streaming_variant(64, torch.float16, True, False),
    "certified knn: canonical rescoring": (
        canonical._rescore_kernel,
        {"cand_ptr": "i64"},
        dict(BLOCK_C=64),
        launch_config.canonical_rescore()["num_warps"],
    ),
    "certified knn: canonical close calls": (
        canonical._block_kernel,
        {},
        {n: v for n, v in launch_config.canonical_block().items() if n != "num_warps"},
        launch_config.canonical_block()["num_warps"],
    ),
    "top-100 fp32, lamb in (0, 1)": streaming_variant(100, torch.float32, True, True),
    "top-100, lamb = 0": streaming_variant(100, torch.float32, False, True),
    "score block, lamb in (0, 1)": score_block_variant(True),
    "score block, lamb = 0": score_block_variant(False),
    "sparse aggregation": aggregate_variant(
        aggregate._sparse_rows_kernel, launch_config.aggregate_sparse(), WRITE_ROWS=True
    ),
    "sparse aggregation, norms only": aggregate_variant(
        aggregate._sparse_rows_kernel, launch_config.aggregate_sparse(), WRITE_ROWS=False
    ),
    "dense aggregation": aggregate_variant(
        aggregate._dense_rows_kernel, launch_config.aggregate_dense()
    ),
}


def resource_usage(cubin: bytes) -> str:
    """Registers per thread and stack bytes (register spills) of a compiled kernel, from
    the cuobjdump in Triton's wheel ("" when it is not there)."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.is_file():
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        report = subprocess.run(
            [str(tool), "--dump-resource-usage", file.name], capture_output=True, text=True
        ).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", report)
    return f"{found[1]} registers, {found[2]} B stack" if found else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch", type=int, action="append", help="compute capability x 10 (default: 90 and 80)"
    )
    archs = parser.parse_args().arch or [90, 80]
    failures = 0
    for arch in archs:
        for name, (kernel, pointers, constexprs, num_warps) in VARIANTS.items():
            start = time.perf_counter()
            try:
                source = ASTSource(kernel, signature(kernel, pointers, constexprs), constexprs)
                compiled = triton.compile(
                    source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps}
                )
                tensor_cores = "mma" in compiled.asm["ptx"]
                status = (
                    f"ok ({'tensor cores' if tensor_cores else 'no mma'}; "
                    f"{resource_usage(compiled.asm['cubin'])})"
                )
            except Exception:  # report every variant, then fail
                failures += 1
                status = "FAILED\n" + traceback.format_exc(limit=3)
            print(f"sm_{arch} {name}: {status} [{time.perf_counter() - start:.1f} s]", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
