"""A software prefetch hint for kernels whose loads are scattered over large arrays.

``prefetch(array, i)`` asks the CPU to start loading the cache line of ``array[i]``
(a 1-D array) and returns at once; it never faults and changes no result. Kernels call
it a few items ahead of the item they work on, so that the loads of the next rows
overlap the work on this one instead of each waiting for memory in turn (the inductive
scoring at 1M database rows: about 10% faster, benchmarks/results/faiss_rerank.md).

It is LLVM's ``llvm.prefetch`` intrinsic (read, keep in every cache level, data
cache), which every LLVM that numba uses knows; on a CPU without prefetch instructions
LLVM emits nothing.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch(typingctx, array, index):
    if not (
        isinstance(array, types.Array) and array.ndim == 1 and isinstance(index, types.Integer)
    ):
        return None

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        address = cgutils.get_item_pointer(
            context, builder, array_type, view, [args[1]], wraparound=False
        )
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        hint = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]),
            "llvm.prefetch",
        )
        # (address, 0 = read, 3 = keep in every cache level, 1 = data)
        builder.call(hint, [builder.bitcast(address, byte_pointer), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(array, index), codegen
