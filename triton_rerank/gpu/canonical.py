"""Canonical similarities on the GPU (defined in ``triton_rerank/canonical.py``): float64
sums of the exact float32 products in order k = 0, 1, ..., d-1, rounded to float32, so
that they equal the CPU path's values bit for bit.

Every element's sum runs over k one step at a time (an outer-product update per step for
a tile; fused multiply-adds do not change the result, the products being exact in
float64). That is slow next to a tensor-core product, so it only runs where the kNN needs
it: the fast pass's candidates (:func:`canonical_rescore`) and the rows the certificate
cannot prove (:func:`canonical_topk`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import limits
from ..topk import topk_rows
from . import launch_config


@triton.jit
def _rescore_kernel(
    x_ptr, y_ptr, cand_ptr, out_ptr, dim, n_cand, stride_x, stride_y, BLOCK_C: tl.constexpr
):
    """``out[i, c] = canonical(x[i], y[cand[i, c]])``, one program per row of x."""
    i_r = tl.program_id(0).to(tl.int64)
    o_c = tl.arange(0, BLOCK_C)
    m_c = o_c < n_cand
    b_cand = tl.load(cand_ptr + i_r * n_cand + o_c, mask=m_c, other=0)
    p_y = y_ptr + b_cand * stride_y
    b_acc = tl.zeros([BLOCK_C], dtype=tl.float64)
    for k in range(0, dim):
        b_x = tl.load(x_ptr + i_r * stride_x + k).to(tl.float64)
        b_y = tl.load(p_y + k, mask=m_c, other=0.0).to(tl.float64)
        b_acc += b_x * b_y
    tl.store(out_ptr + i_r * n_cand + o_c, b_acc.to(tl.float32), mask=m_c)


def canonical_rescore(x: torch.Tensor, y: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``[n, c]`` float32 canonical similarities of ``x [n, d]`` with ``y[candidates[i]]``
    (``candidates [n, c]`` int64, valid ids, c <= 256; x, y contiguous float32)."""
    n_rows, n_cand = candidates.shape
    out = torch.empty(n_rows, n_cand, dtype=torch.float32, device=x.device)
    if n_rows:
        _rescore_kernel[(n_rows,)](
            x,
            y,
            candidates.contiguous(),
            out,
            x.shape[1],
            n_cand,
            x.stride(0),
            y.stride(0),
            BLOCK_C=triton.next_power_of_2(n_cand),
            **launch_config.canonical_rescore(),
        )
    return out


@triton.jit
def _block_kernel(
    x_ptr,
    y_ptr,
    out_ptr,
    n_rows,
    n_cols,
    dim,
    stride_x,
    stride_y,
    stride_out,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """``out[i, j] = canonical(x[i], y[j])`` for a ``[BLOCK_M, BLOCK_N]`` tile."""
    i_m = tl.program_id(0).to(tl.int64)
    i_n = tl.program_id(1).to(tl.int64)
    o_rows = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_cols = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_rows = o_rows < n_rows
    m_cols = o_cols < n_cols
    p_x = x_ptr + o_rows * stride_x
    p_y = y_ptr + o_cols * stride_y
    b_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float64)
    for k in range(0, dim):
        b_x = tl.load(p_x + k, mask=m_rows, other=0.0).to(tl.float64)
        b_y = tl.load(p_y + k, mask=m_cols, other=0.0).to(tl.float64)
        b_acc += b_x[:, None] * b_y[None, :]
    p_out = out_ptr + o_rows[:, None] * stride_out + o_cols[None, :]
    tl.store(p_out, b_acc.to(tl.float32), mask=m_rows[:, None] & m_cols[None, :])


def canonical_block(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write the canonical similarities of ``x [n, d]`` and ``y [m, d]`` (contiguous
    float32) into ``out [n, m]`` float32 (unit column stride); returns ``out``."""
    n_rows, n_cols = out.shape
    if n_rows and n_cols:
        launch = launch_config.canonical_block()
        grid = (triton.cdiv(n_rows, launch["BLOCK_M"]), triton.cdiv(n_cols, launch["BLOCK_N"]))
        _block_kernel[grid](
            x, y, out, n_rows, n_cols, x.shape[1], x.stride(0), y.stride(0), out.stride(0), **launch
        )
    return out


def canonical_topk(x: torch.Tensor, y: torch.Tensor, k: int):
    """The canonical top-``k`` of each row of ``x`` over the rows of ``y`` (contiguous
    float32 on one device), computed in row blocks of at most ``limits.GPU_CANONICAL_BLOCK_BYTES``.

    Returns:
        ``(values [n, k] float32, indices [n, k] int64)``, descending, equal values by
        smaller column.
    """
    n_rows, n_cols = x.shape[0], y.shape[0]
    values = torch.empty(n_rows, k, dtype=torch.float32, device=x.device)
    indices = torch.empty(n_rows, k, dtype=torch.int64, device=x.device)
    rows = max(1, limits.GPU_CANONICAL_BLOCK_BYTES // (4 * n_cols))
    for start in range(0, n_rows, rows):
        stop = min(n_rows, start + rows)
        block = torch.empty(stop - start, n_cols, dtype=torch.float32, device=x.device)
        canonical_block(x[start:stop], y, block)
        values[start:stop], indices[start:stop] = topk_rows(block, k)
    return values, indices
