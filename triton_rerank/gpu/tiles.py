"""Triton building blocks shared by the kernels: score tiles and sortable top-k keys.

Top-k keys pack a score and its column into one int64 that sorts like
``(score descending, column ascending)``: the high 32 bits hold the fp32 score mapped
to an order-preserving int32, the low 32 bits hold ``0xFFFFFFFF - column``. A running
top-k is then a plain max/sort over int64 keys (``tl.topk``, ``tl.bitonic_merge``),
and the project's tie rule (equal scores: smaller column first) comes for free.
Columns must be below 2**32 per launch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# Smaller than every packed key of a real (non-NaN) score: marks empty slots.
EMPTY_KEY = tl.constexpr(-(2**63))
_LOW_BITS = tl.constexpr(2**32 - 1)


@triton.jit
def pack_keys(b_scores, o_cols):
    """``[BM, BN]`` fp32 scores and ``[BN]`` int32 columns -> ``[BM, BN]`` int64 keys."""
    b_bits = b_scores.to(tl.int32, bitcast=True)
    b_bits = tl.where(b_bits == -2147483648, 0, b_bits)  # -0.0 ties with +0.0
    b_bits = tl.where(b_bits < 0, b_bits ^ 0x7FFFFFFF, b_bits)
    low = tl.full([1], _LOW_BITS, tl.int64) - o_cols.to(tl.int64)
    return (b_bits.to(tl.int64) << 32) | low[None, :]


@triton.jit
def unpack_keys(b_keys):
    """``[BM, K]`` int64 keys -> ``([BM, K]`` fp32 scores, ``[BM, K]`` int64 columns)."""
    b_bits = (b_keys >> 32).to(tl.int32)
    b_bits = tl.where(b_bits < 0, b_bits ^ 0x7FFFFFFF, b_bits)
    low_bits = tl.full([1, 1], _LOW_BITS, tl.int64)
    b_cols = low_bits - (b_keys & low_bits)
    return b_bits.to(tl.float32, bitcast=True), b_cols


# Sorting network over int64 keys. A [2**a, 2**b] block is viewed as a hypercube of
# a + b axes of size 2; a compare-and-swap step pairs the elements along one axis and
# takes their min and max (``tl.min``/``tl.max``, fast in the interpreter as well,
# unlike the ``xor_sum`` of ``tl.sort``/``tl.topk``, and in every Triton from 3.6 on).
# Axes are counted from the innermost; orders: 0 ascending, 1 descending, 2 alternating.


@triton.jit
def _bitonic_stage(h, STAGE: tl.constexpr, ORDER: tl.constexpr, N_DIMS: tl.constexpr):
    """Sort each bitonic run of ``2**STAGE`` elements of hypercube ``h`` (``ORDER`` 2:
    alternate ascending and descending runs). Written out in one function: the
    interpreter pays a large fixed cost per nested ``@triton.jit`` call."""
    if ORDER == 2:  # run r is descending when bit STAGE of its position is set
        flip = tl.reshape(tl.arange(0, 2), [1] * (N_DIMS - STAGE - 1) + [2] + [1] * STAGE)
    else:
        flip = ORDER
    for i in tl.static_range(STAGE):
        # compare-and-swap of the pairs along hypercube axis N_DIMS - STAGE + i
        # (no constexpr assignments here: compiled Triton forbids reassigning them)
        low = tl.min(h, axis=N_DIMS - STAGE + i, keep_dims=True)
        high = tl.max(h, axis=N_DIMS - STAGE + i, keep_dims=True)
        second = tl.reshape(
            tl.arange(0, 2), [1] * (N_DIMS - STAGE + i) + [2] + [1] * (STAGE - 1 - i)
        )
        h = tl.where((flip ^ second) != 0, high, low)
    return h


@triton.jit
def bitonic_merge(x, LOG_M: tl.constexpr, LOG_K: tl.constexpr, ORDER: tl.constexpr):
    """Sort each bitonic row of ``x [2**LOG_M, 2**LOG_K]`` (ORDER 0 ascending, 1 descending)."""
    h = tl.reshape(x, [2] * (LOG_M + LOG_K))
    h = _bitonic_stage(h, LOG_K, ORDER, LOG_M + LOG_K)
    return tl.reshape(h, [2**LOG_M, 2**LOG_K])


@triton.jit
def topk_rows(x, LOG_M: tl.constexpr, LOG_N: tl.constexpr, LOG_K: tl.constexpr):
    """The ``2**LOG_K`` largest of each row of ``x [2**LOG_M, 2**LOG_N]``, descending
    (bitonic top-k: sort runs of 2**LOG_K, then halve by pairwise max and re-merge)."""
    h = tl.reshape(x, [2] * (LOG_M + LOG_N))
    for i in tl.static_range(1, LOG_K + 1):
        h = _bitonic_stage(h, i, 2 if i < LOG_N else 1, LOG_M + LOG_N)
    for i in tl.static_range(LOG_K + 1, LOG_N + 1):
        h = tl.max(h, axis=LOG_M + LOG_N - i)  # pairs runs i-1 apart: keeps the top halves
        h = _bitonic_stage(h, LOG_K, 2 if i < LOG_N else 1, LOG_M + LOG_N - i + LOG_K)
    return tl.reshape(h, [2**LOG_M, 2**LOG_K])


@triton.jit
def merge_topk(b_top, b_keys, LOG_M: tl.constexpr, LOG_N: tl.constexpr, LOG_K: tl.constexpr):
    """Top ``2**LOG_K`` of ``b_top [2**LOG_M, 2**LOG_K]`` and ``b_keys [2**LOG_M, 2**LOG_N]``
    (``LOG_N >= LOG_K``) per row.

    ``b_top`` may be any bitonic row (a constant, or the output of this function); the
    result is bitonic: finish with ``bitonic_merge(..., ORDER=1)``.
    """
    b_top = bitonic_merge(b_top, LOG_M, LOG_K, 0)  # ascending, against the descending top-k
    return tl.maximum(b_top, topk_rows(b_keys, LOG_M, LOG_N, LOG_K))


@triton.jit
def dot_tile(
    x_ptr,
    y_ptr,
    o_rows,
    m_rows,
    o_cols,
    m_cols,
    dim,
    stride_x,
    stride_y,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """``[BLOCK_M, BLOCK_N]`` fp32 inner products of rows ``o_rows`` of ``x [n, dim]``
    with rows ``o_cols`` of ``y [m, dim]`` (masked rows and columns give 0)."""
    p_x = x_ptr + o_rows.to(tl.int64)[:, None] * stride_x
    p_y = y_ptr + o_cols.to(tl.int64)[None, :] * stride_y
    b_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for d_start in range(0, dim, BLOCK_D):
        o_d = d_start + tl.arange(0, BLOCK_D)
        m_d = o_d < dim
        b_x = tl.load(p_x + o_d[None, :], mask=m_rows[:, None] & m_d[None, :], other=0.0)
        b_y = tl.load(p_y + o_d[:, None], mask=m_d[:, None] & m_cols[None, :], other=0.0)
        b_acc = tl.dot(b_x, b_y, b_acc, input_precision=INPUT_PRECISION)
    return b_acc


@triton.jit
def two_hop_tile(
    z_ptr,
    g_idx_ptr,
    g_val_ptr,
    g_inv_norm_ptr,
    o_rows,
    m_rows,
    o_cols,
    m_cols,
    n_terms,
    stride_z,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """``[BLOCK_M, BLOCK_N]`` re-ranked scores ``<A[i], A[q + j]>`` via the two-hop form
    ``g_inv_norm[j] * sum_t g_val[j, t] * z[i, g_idx[j, t]]`` (see
    ``triton_rerank/cpu/kernels/two_hop_scores.py``).

    ``z [b, N]`` fp32 holds ``A[i] @ M`` for the block's queries; ``g_idx [g, n_terms]``
    int64, ``g_val [g, n_terms]`` fp32 and ``g_inv_norm [g]`` fp32 describe the gallery.
    """
    p_z = z_ptr + o_rows.to(tl.int64)[:, None] * stride_z
    o_terms = o_cols.to(tl.int64) * n_terms
    m_tile = m_rows[:, None] & m_cols[None, :]
    b_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for t in range(0, n_terms):
        b_node = tl.load(g_idx_ptr + o_terms + t, mask=m_cols, other=0)
        b_weight = tl.load(g_val_ptr + o_terms + t, mask=m_cols, other=0.0)
        b_z = tl.load(p_z + b_node[None, :], mask=m_tile, other=0.0)
        b_acc += b_z * b_weight[None, :]
    b_inv_norm = tl.load(g_inv_norm_ptr + o_cols, mask=m_cols, other=0.0)
    return b_acc * b_inv_norm[None, :]


@dataclass(frozen=True)
class TwoHopTerms:
    """The propagated graph's share of the final scores of a block of queries.

    Attributes:
        z: ``[b, N]`` fp32, ``A[i] @ M`` for each query of the block.
        g_idx: ``[g, t]`` int64 node ids making up each gallery row.
        g_val: ``[g, t]`` fp32 their weights.
        g_inv_norm: ``[g]`` fp32 scale of each gallery row.
    """

    z: torch.Tensor
    g_idx: torch.Tensor
    g_val: torch.Tensor
    g_inv_norm: torch.Tensor

    def contiguous(self) -> TwoHopTerms:
        """The same terms in the dense row-major layout the kernels index."""
        return TwoHopTerms(
            self.z.contiguous(),
            self.g_idx.contiguous(),
            self.g_val.contiguous(),
            self.g_inv_norm.contiguous(),
        )


# ``tl.dot`` precision of float32 features. "tf32x3" splits each value into two TF32
# parts and sums three tensor-core products: about fp32 accuracy (relative error near
# 1e-6, exact on values with few mantissa bits) at tensor-core speed, where "ieee"
# runs on the (much slower) fp32 FMA units. Plain "tf32" (1e-3) would reorder the kNN.
FP32_DOT_PRECISION = "tf32x3"


def input_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` precision for feature ``dtype`` (fp16/bf16 products are exact in fp32
    whatever the setting; the interpreter computes every dot in full precision)."""
    return FP32_DOT_PRECISION if dtype == torch.float32 else "tf32"


@triton.jit
def score_tile(
    x_ptr,
    y_ptr,
    z_ptr,
    g_idx_ptr,
    g_val_ptr,
    g_inv_norm_ptr,
    o_rows,
    m_rows,
    o_cols,
    m_cols,
    dim,
    n_terms,
    stride_x,
    stride_y,
    stride_z,
    keep,
    mix,
    HAS_DOT: tl.constexpr,
    HAS_TWO_HOP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """``[BLOCK_M, BLOCK_N]`` scores ``mix * <x_i, y_j> + keep * two_hop(i, j)``; either
    term is left out (not computed) when its flag is off."""
    b_scores = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if HAS_DOT:
        b_scores = mix * dot_tile(
            x_ptr,
            y_ptr,
            o_rows,
            m_rows,
            o_cols,
            m_cols,
            dim,
            stride_x,
            stride_y,
            BLOCK_M,
            BLOCK_N,
            BLOCK_D,
            INPUT_PRECISION,
        )
    if HAS_TWO_HOP:
        b_scores += keep * two_hop_tile(
            z_ptr,
            g_idx_ptr,
            g_val_ptr,
            g_inv_norm_ptr,
            o_rows,
            m_rows,
            o_cols,
            m_cols,
            n_terms,
            stride_z,
            BLOCK_M,
            BLOCK_N,
        )
    return b_scores
