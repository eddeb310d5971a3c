"""Compiled CPU kernels (numba, parallel over rows), one concept per module.

They work on plain numpy arrays: dense float32 blocks, and sparse rows in CSR form
(``indptr`` int64 ``[n + 1]``, ``indices`` int64 ``[nnz]``, ``values`` float32 ``[nnz]``).
Every kernel has a dense, obviously-correct twin in :mod:`triton_rerank.reference`
that the tests compare it with.
"""

import numpy as np


def unsigned(index_array: np.ndarray) -> np.ndarray:
    """View an int64 (int32) index array as uint64 (uint32), without a copy, before
    passing it to a kernel.

    numba wraps negative indices around (Python semantics), which costs a compare and
    a branch on every access through a signed index loaded from memory; unsigned
    indices skip it (measured: 17% faster final scoring at Market-1501 scale).
    Index arrays stay int64 everywhere else.
    """
    return index_array.view(np.uint32 if index_array.dtype == np.int32 else np.uint64)
