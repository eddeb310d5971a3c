"""Which fast pass the CPU kNN runs: bfloat16 or float32 matrix products.

The fast pass only chooses candidates (``triton_rerank/canonical.py``): the kNN lists are
the same either way, bit for bit. bfloat16 products are about 3x faster where the CPU
multiplies bfloat16 natively (x86 ``avx512_bf16`` / ``amx_bf16``, Arm ``bf16``) and much
slower where it does not, so ``"auto"`` decides once per process:

1. the CPU flags (``/proc/cpuinfo`` on Linux; elsewhere float32);
2. a short calibration (about 50 ms): torch's bfloat16 product must be at least 1.5x faster
   than its float32 product here, and its values must obey the error model the
   certificate assumes (float32 sums of the bfloat16 products, rounded to bfloat16 once).

Force either with the environment variable ``TRITON_RERANK_KNN_PRECISION=bf16`` or
``=fp32`` (read at every call; ``auto`` or unset: the decision above).
"""

from __future__ import annotations

import functools
import os
import platform
import time

import torch

ENV_VARIABLE = "TRITON_RERANK_KNN_PRECISION"
PRECISIONS = ("auto", "bf16", "fp32")
_NATIVE_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}
_MIN_SPEEDUP = 1.5


def knn_precision() -> str:
    """``"bf16"`` or ``"fp32"``: the fast pass of the CPU kNN (see the module doc).

    Raises:
        ValueError: ``TRITON_RERANK_KNN_PRECISION`` is set to something else than
            ``auto``, ``bf16`` or ``fp32``.
    """
    value = os.environ.get(ENV_VARIABLE, "auto").strip().lower() or "auto"
    if value not in PRECISIONS:
        raise ValueError(f"{ENV_VARIABLE} must be one of {PRECISIONS}, got {value!r}")
    return auto_precision() if value == "auto" else value


def cpu_multiplies_bf16() -> bool:
    """Whether the CPU flags advertise native bfloat16 dot products (Linux only)."""
    if platform.system() != "Linux":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return bool(_NATIVE_FLAGS & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


def _seconds(function) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def _obeys_error_model(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether ``x @ y.T`` (bfloat16) is within one bfloat16 rounding of the float32 sums."""
    exact = x.double() @ y.double().T
    magnitudes = x.double().abs() @ y.double().abs().T
    slack = 2.0**-8 * exact.abs() + 2 * x.shape[1] * 2.0**-24 * magnitudes + 2.0**-120
    return bool(((x @ y.T).double() - exact).abs().le(slack).all())


@functools.cache
def auto_precision() -> str:
    """The ``"auto"`` decision, made once per process."""
    if not cpu_multiplies_bf16():
        return "fp32"
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(512, 256, generator=generator)
    y = torch.randn(1024, 256, generator=generator)
    x_low, y_low = x.bfloat16(), y.bfloat16()
    if not _obeys_error_model(x_low[:64], y_low[:256]):
        return "fp32"
    x_low @ y_low.T, x @ y.T  # first calls load the kernels
    speedup = _seconds(lambda: x @ y.T) / _seconds(lambda: x_low @ y_low.T)
    return "bf16" if speedup >= _MIN_SPEEDUP else "fp32"
