"""The GPU backend (``backend="triton"``): Triton kernels, one op per module, and
``pipeline.py`` that strings them together; ``launch_config.py`` holds every launch
setting. Imported only when it runs; needs torch, triton, numpy and scipy, not numba.
"""
