"""Exact top-k inner products of float32 rows from a fast half-precision pass.

1. Candidates: the streaming top-k kernel on float16 copies of x and y (tensor cores at
   full rate, products exact in fp32) keeps ``k_cand`` candidates per row, a few more
   than k.
2. Rescoring: the candidates' inner products from the float32 rows (a gather kernel),
   sorted by descending value, equal values by smaller column.
3. Certificate: every approximate score is within ``delta_i`` of the exact one
   (:func:`error_bound`: float16 rounding of both rows, fp32 sums). A column that is not
   a candidate scored at most ``a_i`` approximately (the row's last candidate), so at
   most ``a_i + delta_i`` exactly. When the k-th rescored value is above that, the row's
   top-k is exact, tie order included. The other rows (close calls) are recomputed by
   the streaming kernel with fp32 FMA products ("ieee").

On unit-norm re-ID features ``delta`` is about 1e-3 and nearly every row passes.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..topk import sort_by_value_then_index
from .topk_similarity import MAX_STREAMING_K, streaming_topk

# Extra candidates per row beyond k (rounded up to the kernel's power-of-two width).
DEFAULT_MARGIN = 16
_FP16_UNIT = 2.0**-11  # relative rounding error of float16 (normal range)
_FP16_SUBNORMAL_ERROR = 2.0**-25  # absolute rounding error below float16's normal range
_FP16_SAFE_MAX = 2.0**15  # |values| above this could round to inf in float16
_FP32_SUM_UNIT = 2.0**-23  # per-addition error of an fp32 sum (truncating hardware too)
RESCORE_LAUNCH = dict(BLOCK_D=32, num_warps=4)


@triton.jit
def _rescore_kernel(x_ptr, y_ptr, cand_ptr, out_ptr, dim, n_cand, stride_x, stride_y,
                    BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    """``out[i, c] = <x[i], y[cand[i, c]]>`` in fp32, one program per row of x."""
    i_r = tl.program_id(0).to(tl.int64)
    o_c = tl.arange(0, BLOCK_C)
    m_c = o_c < n_cand
    b_cand = tl.load(cand_ptr + i_r * n_cand + o_c, mask=m_c, other=0)
    b_acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    for d_start in range(0, dim, BLOCK_D):
        o_d = d_start + tl.arange(0, BLOCK_D)
        m_d = o_d < dim
        b_x = tl.load(x_ptr + i_r * stride_x + o_d, mask=m_d, other=0.0)
        b_y = tl.load(y_ptr + b_cand[:, None] * stride_y + o_d[None, :],
                      mask=m_c[:, None] & m_d[None, :], other=0.0)
        b_acc += tl.sum(b_y * b_x[None, :], axis=1)
    tl.store(out_ptr + i_r * n_cand + o_c, b_acc, mask=m_c)


def rescore(x: torch.Tensor, y: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``[n, c]`` float32 inner products of ``x [n, d]`` with ``y[candidates[i]]``
    (``candidates [n, c]`` int64, c <= 256; x, y contiguous float32)."""
    n_rows, n_cand = candidates.shape
    out = torch.empty(n_rows, n_cand, dtype=torch.float32, device=x.device)
    if n_rows:
        _rescore_kernel[(n_rows,)](x, y, candidates.contiguous(), out, x.shape[1], n_cand,
                                   x.stride(0), y.stride(0),
                                   BLOCK_C=triton.next_power_of_2(n_cand), **RESCORE_LAUNCH)
    return out


def error_bound(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[n]`` float32: for each row i, a bound on ``|approx(x_i, y_j) - exact(x_i, y_j)|``
    over all j, where approx is the fp32 sum of products of float16-rounded values (any
    order) and exact the rescored fp32 value.

    Rounding v to float16 moves it by at most ``u |v| + a`` (u = 2**-11 in the normal
    range, a = 2**-25 below it, where a value can double). So one product moves by at
    most ``(2u + u^2) |x||y| + a (1 + u)(|x| + |y|) + a^2``, and summed over the d
    dimensions (Cauchy-Schwarz: ``sum |x||y| <= |x_i| |y_j|``, ``sum |x| <= sqrt(d) |x_i|``)
    by ``rounding`` below. Each of the two fp32 sums is off by at most ``d * 2**-23``
    times the sum of its terms' magnitudes; a tensor core's block sums (aligned to the
    largest term, truncated) stay within twice that, which the rescoring's share covers.
    """
    dim = x.shape[1]
    u, a = _FP16_UNIT, _FP16_SUBNORMAL_ERROR
    x_norms = torch.linalg.vector_norm(x, dim=1)
    y_norm = (x_norms if y is x else torch.linalg.vector_norm(y, dim=1)).max()
    norms_sum = x_norms + y_norm
    rounding = ((2 * u + u * u) * x_norms * y_norm + a * (1 + u) * math.sqrt(dim) * norms_sum
                + dim * a * a)
    magnitudes = ((1 + u)**2 * x_norms * y_norm + a * (1 + u) * math.sqrt(dim) * norms_sum
                  + dim * a * a)  # of the rounded products, and more than the exact ones
    summing = 2 * dim * _FP32_SUM_UNIT * magnitudes
    return 1.05 * (rounding + summing)  # 5%: the norms' own rounding


def fits_float16(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether x and y can be rounded to float16 without overflow."""
    largest = x.abs().max() if y is x else torch.maximum(x.abs().max(), y.abs().max())
    return float(largest) < _FP16_SAFE_MAX


def candidate_count(k: int, n_cols: int, margin: int = DEFAULT_MARGIN) -> int:
    """Candidates per row of the float16 pass: ``k + margin`` rounded up to the
    kernel's power-of-two width, at most every column and ``MAX_STREAMING_K``."""
    return min(n_cols, MAX_STREAMING_K, triton.next_power_of_2(k + margin))


def certified_topk(x: torch.Tensor, y: torch.Tensor, k: int, *,
                   margin: int = DEFAULT_MARGIN):
    """Top-``k`` of ``x @ y.T`` per row, exact, by candidates + certificate (see module doc).

    Args:
        x: ``[n, d]`` contiguous float32 (checked by the caller, see
            ``topk_similarity.check_feature_pair``); values below 2**15 in magnitude
            (:func:`fits_float16`).
        y: ``[m, d]`` contiguous float32 on x's device.
        k: ``1 <= k <= min(m, MAX_STREAMING_K)``.
        margin: candidates beyond k per row (at least; the kernel's padding adds more).

    Returns:
        ``(values [n, k] float32, indices [n, k] int64, n_recomputed)``: the top-k,
        descending, equal values by smaller column; and how many rows failed the
        certificate and were recomputed by the exact kernel.
    """
    n_rows, n_cols = x.shape[0], y.shape[0]
    n_cand = candidate_count(k, n_cols, margin)
    x_half = x.half()
    y_half = x_half if y is x else y.half()
    approx_values, candidates = streaming_topk(n_cand, n_rows, n_cols, x=x_half, y=y_half)
    values, indices = sort_by_value_then_index(rescore(x, y, candidates), candidates)
    values, indices = values[:, :k].contiguous(), indices[:, :k].contiguous()
    if n_cand == n_cols:  # every column was a candidate
        return values, indices, 0
    left_out_at_most = approx_values[:, -1] + error_bound(x, y)
    uncertain = torch.nonzero(values[:, -1] <= left_out_at_most).flatten()
    if uncertain.numel():  # exact fp32 products, like the rescoring (few rows)
        values[uncertain], indices[uncertain] = streaming_topk(
            k, uncertain.numel(), n_cols, x=x[uncertain].contiguous(), y=y,
            tuning={"INPUT_PRECISION": "ieee"})
    return values, indices, int(uncertain.numel())
