"""Compiled CPU kernels (numba, parallel over rows), one concept per module.

They work on plain numpy arrays: dense float32 blocks, and sparse rows in CSR form
(``indptr`` int64 ``[n + 1]``, ``indices`` int64 ``[nnz]``, ``values`` float32 ``[nnz]``).
Every kernel has a dense, obviously-correct twin in :mod:`triton_rerank.reference`
that the tests compare it with.
"""
