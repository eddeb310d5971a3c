"""How the CPU kernels are compiled: ``numba.njit``, cached on disk where a cache can be written.

numba looks for a writable cache next to the package (``__pycache__``), then in the
user's cache (``NUMBA_CACHE_DIR`` or ``~/.cache/numba``). On a read-only install
without a writable home it finds none and ``cache=True`` fails at import with "cannot
cache function ... no locator available". :func:`njit` then compiles without a disk
cache (every process compiles on first use) and warns once.
"""

from __future__ import annotations

import warnings

import numba


class NoKernelCacheWarning(UserWarning):
    """No writable location for numba's disk cache: kernels compile in every process."""


_warned = False


def _warn_no_cache(error: RuntimeError) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"triton_rerank: no writable cache for the compiled CPU kernels ({error}); they "
            f"are compiled in every process. Set NUMBA_CACHE_DIR to a writable directory "
            f"to keep them between processes.", NoKernelCacheWarning, stacklevel=4)


def njit(**options):
    """``numba.njit(cache=True, **options)``, or without the disk cache where numba has no
    writable location for it (see the module doc)."""
    def decorate(function):
        try:
            return numba.njit(cache=True, **options)(function)
        except RuntimeError as error:
            if "no locator available" not in str(error):
                raise
            _warn_no_cache(error)
            return numba.njit(cache=False, **options)(function)
    return decorate
