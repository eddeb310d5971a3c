"""The float32 inner product of two rows in a fixed order, eight lanes at a time.

``lane_dot(a, b)`` sums ``a[e] * b[e]`` in ``LANES`` interleaved partial sums (term
``e`` goes to partial sum ``e % LANES``, each partial sum in order of ``e``) and adds the
eight partial sums pairwise: ``((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7))``.
Every product and sum is rounded to float32 on its own (no fused multiply-add, no
reassociation), so a pair of rows gets the same bits wherever and in whatever build the
product is taken.

The eight partial sums are one ``<8 x float>`` LLVM vector (one SIMD register), written
here as LLVM IR: numba compiles without fastmath (which would let LLVM reorder the sum
differently at each call site) and without LLVM's SLP vectoriser, so the same sums written
as eight scalars run one lane at a time. Lane-wise vector arithmetic rounds exactly as the
scalar operations do: the result is bit-identical to :func:`lane_dot_scalar`, the plain
loop it replaces (kept as its definition, for the tests).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import njit

LANES = 8


@njit()
def lane_dot_scalar(a, b):
    """:func:`lane_dot` as a plain loop (the definition; slower: one lane at a time)."""
    d = a.shape[0]
    n_full = d - d % LANES
    partial = np.zeros(LANES, np.float32)
    for e in range(0, n_full, LANES):
        for lane in range(LANES):
            partial[lane] += a[e + lane] * b[e + lane]
    for e in range(n_full, d):
        partial[e - n_full] += a[e] * b[e]
    return ((partial[0] + partial[1]) + (partial[2] + partial[3])) + (
        (partial[4] + partial[5]) + (partial[6] + partial[7])
    )


def _is_float32_row(array) -> bool:
    return (
        isinstance(array, types.Array)
        and array.ndim == 1
        and array.dtype == types.float32
        and array.layout == "C"
    )


def _lane_sums(builder, a_pointer, b_pointers, length):
    """LLVM IR of the fixed-order sums of ``a . b_k`` for every pointer in
    ``b_pointers`` (float32 rows of ``length`` entries), in one loop over the entries:
    each row keeps its own ``<8 x float>`` of partial sums, so the rows' additions
    are independent chains the CPU overlaps, and each row's sum is exactly the
    one-row sum. Returns the float32 values."""
    f32 = ir.FloatType()
    vector = ir.VectorType(f32, LANES)
    i64 = ir.IntType(64)
    n_full = builder.sub(length, builder.srem(length, i64(LANES)))
    totals = [
        cgutils.alloca_once_value(builder, ir.Constant(vector, [0.0] * LANES)) for _ in b_pointers
    ]

    def lanes(pointer, e):
        return builder.load(
            builder.bitcast(builder.gep(pointer, [e]), vector.as_pointer()), align=4
        )

    with cgutils.for_range_slice(builder, i64(0), n_full, i64(LANES)) as (e, _):
        a_lanes = lanes(a_pointer, e)
        for b_pointer, total in zip(b_pointers, totals, strict=True):
            product = builder.fmul(a_lanes, lanes(b_pointer, e))
            builder.store(builder.fadd(builder.load(total), product), total)
    with cgutils.for_range_slice(builder, n_full, length, i64(1)) as (e, _):
        lane = builder.sub(e, n_full)
        a_value = builder.load(builder.gep(a_pointer, [e]))
        for b_pointer, total in zip(b_pointers, totals, strict=True):
            term = builder.fmul(a_value, builder.load(builder.gep(b_pointer, [e])))
            partial = builder.load(total)
            summed = builder.fadd(builder.extract_element(partial, lane), term)
            builder.store(builder.insert_element(partial, summed, lane), total)
    sums = []
    for total in totals:
        partial = builder.load(total)
        p = [builder.extract_element(partial, i64(lane)) for lane in range(LANES)]
        sums.append(
            builder.fadd(
                builder.fadd(builder.fadd(p[0], p[1]), builder.fadd(p[2], p[3])),
                builder.fadd(builder.fadd(p[4], p[5]), builder.fadd(p[6], p[7])),
            )
        )
    return sums


@intrinsic
def lane_dot(typingctx, a, b):
    """``lane_dot(a, b)``: float32 inner product of two C-contiguous float32 rows of the
    same length (the caller's duty; only ``a``'s length is read), in the module's order."""
    if not (_is_float32_row(a) and _is_float32_row(b)):
        return None

    def codegen(context, builder, signature, args):
        rows = [
            context.make_array(t)(context, builder, v)
            for t, v in zip(signature.args, args, strict=True)
        ]
        length = builder.extract_value(rows[0].shape, 0)
        (total,) = _lane_sums(builder, rows[0].data, [rows[1].data], length)
        return total

    return types.float32(a, b), codegen


@intrinsic
def lane_dot_rows(typingctx, a, matrix, rows):
    """``lane_dot_rows(a, matrix, (r0, r1, ...))``: the tuple of ``lane_dot(a, matrix[r])``
    for each row index ``r`` (bit-identical to it), computed in one pass so that the
    rows' sums overlap. ``a``: C-contiguous float32 row; ``matrix``: C-contiguous
    float32 ``[n, len(a)]`` (the caller's duty: the width, ``0 <= r < n``); ``rows``: a
    tuple of integers."""
    if not (
        _is_float32_row(a)
        and isinstance(matrix, types.Array)
        and matrix.ndim == 2
        and matrix.dtype == types.float32
        and matrix.layout == "C"
        and isinstance(rows, types.UniTuple)
        and isinstance(rows.dtype, types.Integer)
    ):
        return None
    count = rows.count

    def codegen(context, builder, signature, args):
        row = context.make_array(signature.args[0])(context, builder, args[0])
        table = context.make_array(signature.args[1])(context, builder, args[1])
        width = builder.extract_value(table.shape, 1)
        length = builder.extract_value(row.shape, 0)
        starts = []
        for k in range(count):
            r = context.cast(builder, builder.extract_value(args[2], k), rows.dtype, types.int64)
            starts.append(builder.gep(table.data, [builder.mul(r, width)]))
        sums = _lane_sums(builder, row.data, starts, length)
        return context.make_tuple(builder, signature.return_type, sums)

    return types.UniTuple(types.float32, count)(a, matrix, rows), codegen
