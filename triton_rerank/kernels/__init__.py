"""Triton kernels of the GPU backend, one op per module; imported only when it runs."""
