"""Launch settings of every Triton kernel (block sizes, warps, programs), in one place.

Each kernel's launcher asks :func:`settings` for its keyword arguments; the defaults
below are fixed, not autotuned, so that the interpreter (where ``@triton.autotune``
does not run) runs the same code. Benchmarks sweep them with :func:`override`::

    with launch_config.override("streaming_topk", {"BLOCK_M": 16}, k_pad=128):
        ...  # every streaming top-k launch at K_PAD 128 uses BLOCK_M = 16
"""

from __future__ import annotations

import contextlib

import torch

# Largest k of the streaming top-k kernel (its running top-k lives in registers).
MAX_STREAMING_K = 256
# Programs of the sparse aggregation kernel per GPU multiprocessor (each holds one
# scratch row); in the interpreter programs run one after another, a few share the rows.
PROGRAMS_PER_SM = 4
INTERPRETER_PROGRAMS = 3

KERNELS = (
    "streaming_topk",
    "score_block",
    "aggregate_sparse",
    "aggregate_dense",
    "canonical_rescore",
    "canonical_block",
)

_overrides: list[tuple[str, dict, dict]] = []


def settings(kernel: str, defaults: dict, **context) -> dict:
    """``defaults`` with the active overrides of ``kernel`` applied (those whose match
    keywords all equal the launch's ``context``, e.g. ``k_pad``)."""
    merged = dict(defaults)
    for name, match, values in _overrides:
        if name == kernel and all(context.get(key) == value for key, value in match.items()):
            merged.update(values)
    return merged


@contextlib.contextmanager
def override(kernel: str, values: dict, **match):
    """Within the block, launches of ``kernel`` (one of ``KERNELS``) whose context equals
    ``match`` use ``values`` over their settings."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    entry = (kernel, dict(match), dict(values))
    _overrides.append(entry)
    try:
        yield
    finally:
        _overrides.remove(entry)


def streaming_topk(k_pad: int, device: torch.device) -> dict:
    """Block sizes of the streaming top-k: wide column tiles for the running top-k
    (``BLOCK_N >= K_PAD``), fewer rows per program as k grows (registers).

    On the GPU, 8 warps: with 4, the sorting network's keys overflow the 255 registers
    of a thread and spill to the stack (sm_90, per tests/compile_kernels.py: 824 bytes
    at K_PAD 64, 696 at K_PAD 128; with 8 warps 0 and 48)."""
    if device.type != "cuda":  # interpreter: fewer, larger numpy steps
        defaults = dict(BLOCK_M=64, BLOCK_N=max(64, k_pad), BLOCK_D=64, num_warps=4)
    else:
        block_m = 64 if k_pad <= 64 else 32 if k_pad <= 128 else 16
        defaults = dict(BLOCK_M=block_m, BLOCK_N=max(64, k_pad), BLOCK_D=32, num_warps=8)
    return settings("streaming_topk", defaults, k_pad=k_pad)


def score_block(device: torch.device) -> dict:
    """Block sizes and warps of the full-block scoring kernel (wider tiles in the
    interpreter)."""
    block_n = 64 if device.type == "cuda" else 128
    return settings("score_block", dict(BLOCK_M=32, BLOCK_N=block_n, BLOCK_D=32, num_warps=4))


def aggregate_sparse() -> dict:
    """Sparse aggregation: source rows per step, entries of each per step, output
    entries per step, warps."""
    return settings("aggregate_sparse", dict(BLOCK_W=8, BLOCK_E=64, BLOCK_OUT=512, num_warps=4))


def aggregate_dense() -> dict:
    """Dense aggregation: source rows per step, entries of each per step, warps."""
    return settings("aggregate_dense", dict(BLOCK_W=16, BLOCK_E=64, num_warps=4))


def canonical_rescore() -> dict:
    """Canonical rescoring of candidates (one program per row)."""
    return settings("canonical_rescore", dict(num_warps=4))


def canonical_block() -> dict:
    """Canonical similarity blocks (close calls recomputed over every column)."""
    return settings("canonical_block", dict(BLOCK_M=32, BLOCK_N=64, num_warps=4))


def program_count(n_rows: int, device: torch.device) -> int:
    """Programs of a persistent kernel over ``n_rows`` rows on ``device``."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        programs = PROGRAMS_PER_SM * sms
    else:
        programs = INTERPRETER_PROGRAMS
    return max(1, min(n_rows, programs))
