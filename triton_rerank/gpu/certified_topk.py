"""Canonical top-k of float32 rows (``triton_rerank/canonical.py``) from a fast
half-precision pass.

1. Candidates: the streaming top-k kernel on float16 copies of x and y (tensor cores at
   full rate, products exact in fp32) keeps ``k_cand`` candidates per row, a few more
   than k.
2. Rescoring: the candidates' canonical similarities (``canonical.canonical_rescore``),
   sorted by descending value, equal values by smaller column.
3. Certificate: every approximate score is within ``delta_i`` of the exact one
   (:func:`error_bound`: float16 rounding of both rows, fp32 sums), and every canonical
   value within ``canonical_error`` of it. A column that is not a candidate scored at most
   ``a_i`` approximately (the row's last candidate), so at most ``a_i + delta_i +
   canonical_error`` canonically. When the k-th rescored value is above that, the row's
   top-k is exact, tie order included. The other rows (close calls) are recomputed
   canonically over every column (``canonical.canonical_topk``).

On unit-norm re-ID features ``delta`` is about 1e-3 and nearly every row passes.
"""

from __future__ import annotations

import math

import torch
import triton

from .. import canonical as definition
from ..topk import sort_by_value_then_index
from .canonical import canonical_rescore, canonical_topk
from .launch_config import MAX_STREAMING_K
from .streaming_topk import streaming_topk

# Extra candidates per row beyond k (rounded up to the kernel's power-of-two width).
DEFAULT_MARGIN = 16
_FP16_UNIT = 2.0**-11  # relative rounding error of float16 (normal range)
_FP16_SUBNORMAL_ERROR = 2.0**-25  # absolute rounding error below float16's normal range
_FP16_SAFE_MAX = 2.0**15  # |values| above this could round to inf in float16
_FP32_SUM_UNIT = 2.0**-23  # per-addition error of an fp32 sum (truncating hardware too)


def error_bound(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[n]`` float32: for each row i, a bound on ``|approx(x_i, y_j) - exact(x_i, y_j)|``
    over all j, where approx is the fp32 sum of products of float16-rounded values (any
    order) and exact the inner product of the float32 rows.

    Rounding v to float16 moves it by at most ``u |v| + a`` (u = 2**-11 in the normal
    range, a = 2**-25 below it, where a value can double). So one product moves by at
    most ``(2u + u^2) |x||y| + a (1 + u)(|x| + |y|) + a^2``, and summed over the d
    dimensions (Cauchy-Schwarz: ``sum |x||y| <= |x_i| |y_j|``, ``sum |x| <= sqrt(d) |x_i|``)
    by ``rounding`` below. Each of the two fp32 sums is off by at most ``d * 2**-23``
    times the sum of its terms' magnitudes; a tensor core's block sums (aligned to the
    largest term, truncated) stay within twice that, which the second sum's share (the
    float32 rescoring of earlier versions, now canonical) covers.
    """
    dim = x.shape[1]
    u, a = _FP16_UNIT, _FP16_SUBNORMAL_ERROR
    x_norms = torch.linalg.vector_norm(x, dim=1)
    y_norm = (x_norms if y is x else torch.linalg.vector_norm(y, dim=1)).max()
    norms_sum = x_norms + y_norm
    rounding = (
        (2 * u + u * u) * x_norms * y_norm + a * (1 + u) * math.sqrt(dim) * norms_sum + dim * a * a
    )
    magnitudes = (
        (1 + u) ** 2 * x_norms * y_norm + a * (1 + u) * math.sqrt(dim) * norms_sum + dim * a * a
    )  # of the rounded products, and more than the exact ones
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


def certified_topk(x: torch.Tensor, y: torch.Tensor, k: int, *, margin: int = DEFAULT_MARGIN):
    """The canonical top-``k`` of ``x @ y.T`` per row, by candidates + certificate (see the
    module doc).

    Args:
        x: ``[n, d]`` contiguous float32 (checked by the caller, see
            ``topk_similarity.check_feature_pair``); values below 2**15 in magnitude
            (:func:`fits_float16`).
        y: ``[m, d]`` contiguous float32 on x's device.
        k: ``1 <= k <= min(m, MAX_STREAMING_K)``.
        margin: candidates beyond k per row (at least; the kernel's padding adds more).

    Returns:
        ``(values [n, k] float32, indices [n, k] int64, n_recomputed)``: the canonical
        top-k, descending, equal values by smaller column; and how many rows failed the
        certificate and were recomputed canonically.
    """
    n_rows, n_cols = x.shape[0], y.shape[0]
    n_cand = candidate_count(k, n_cols, margin)
    x_half = x.half()
    y_half = x_half if y is x else y.half()
    approx_values, candidates = streaming_topk(n_cand, n_rows, n_cols, x=x_half, y=y_half)
    values, indices = sort_by_value_then_index(canonical_rescore(x, y, candidates), candidates)
    values, indices = values[:, :k].contiguous(), indices[:, :k].contiguous()
    if n_cand == n_cols:  # every column was a candidate
        return values, indices, 0
    x_norms = definition.row_norms(x)
    y_norm = float((x_norms if y is x else definition.row_norms(y)).max())
    left_out_at_most = definition.certify_threshold(
        approx_values[:, -1],
        error_bound(x, y).double(),
        definition.canonical_error(x_norms, y_norm, x.shape[1]),
    )
    uncertain = torch.nonzero(values[:, -1].double() <= left_out_at_most).flatten()
    if uncertain.numel():  # close calls: canonical values against every column
        values[uncertain], indices[uncertain] = canonical_topk(x[uncertain].contiguous(), y, k)
    return values, indices, int(uncertain.numel())
