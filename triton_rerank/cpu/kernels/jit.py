"""How the CPU kernels are compiled and run in parallel.

Compilation: :func:`njit` is ``numba.njit`` with numba's disk cache where a cache can
be written. numba takes the first writable one of ``NUMBA_CACHE_DIR`` (when set),
the package's own ``__pycache__`` and the user's cache (``~/.cache/numba``, or
``$XDG_CACHE_HOME/numba``). On a read-only install without a writable home it finds
none, and ``cache=True`` fails at import with "cannot cache function ... no locator
available"; :func:`njit` then compiles without a disk cache (every process compiles
on first use) and warns once (:class:`NoKernelCacheWarning`).

Parallelism: :func:`parallel_chunks` runs a ``nogil`` kernel over chunks of rows on
``numba.get_num_threads()`` threads. It replaces numba's ``parallel=True``, whose
lowering compiles a loop body into three LLVM modules (the function, its parallel loop
and their wrapper, each with copies of every helper it calls): about 1.5 s more per
kernel and per argument types on 2 cores even when the body is one call. A plain
kernel is compiled once.
"""

from __future__ import annotations

import itertools
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

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
            f"to keep them between processes.",
            NoKernelCacheWarning,
            stacklevel=4,
        )


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


# Worker threads for parallel_chunks (the calling thread is one of the workers), created
# on first use and replaced by a larger pool when more are asked for (the old one is not
# shut down: another thread may still be submitting to it; its threads end once it is
# garbage), forgotten in a forked child (whose copy of the pool has no threads).
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def _workers(n: int) -> ThreadPoolExecutor:
    """A pool of at least ``n`` threads."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < n:
            _pool, _pool_size = ThreadPoolExecutor(n, thread_name_prefix="triton_rerank"), n
        return _pool


def _run_parallel(call, n_units: int, n_threads: int) -> None:
    """``call(unit, worker)`` for every unit in ``range(n_units)`` on ``n_threads``
    threads, the calling one included (``worker`` in ``range(n_threads)`` names the
    thread: its units run one after another); each thread takes the next unit as it
    finishes one. The first exception is re-raised once every thread has stopped
    (units not yet started then do not run)."""
    if n_threads <= 1:
        for unit in range(n_units):
            call(unit, 0)
        return
    units = itertools.count()  # next() is atomic under the GIL
    failed = threading.Event()

    def work(worker: int):
        try:
            for unit in units:
                if unit >= n_units or failed.is_set():
                    return
                call(unit, worker)
        except BaseException:
            failed.set()
            raise

    others = [_workers(n_threads - 1).submit(work, w) for w in range(1, n_threads)]
    try:
        work(0)
    finally:
        errors = [f.exception() for f in others]  # waits for every thread
    for error in errors:
        if error is not None:
            raise error


# Chunks per thread that parallel_chunks makes by default: enough that the threads end
# close together (a thread left without work waits at most for one chunk, 1/16 of a
# thread's share), few enough that the kernel calls from Python (about a microsecond
# each) and the chunks' scratch rows stay negligible.
CHUNKS_PER_THREAD = 16


def _chunks_and_threads(n_items: int, min_size: int, max_chunks: int | None) -> tuple[int, int]:
    if n_items <= 0:
        return 0, 0
    n_threads = numba.get_num_threads()
    n_chunks = n_threads * CHUNKS_PER_THREAD if max_chunks is None else max_chunks
    n_chunks = max(1, min(n_chunks, n_items // max(1, min_size)))
    n_threads = min(n_threads, n_chunks)
    return (1, 1) if n_threads == 1 else (n_chunks, n_threads)  # one thread: one call


def worker_count(n_items: int, *, min_size: int = 1, max_chunks: int | None = None) -> int:
    """The threads :func:`parallel_chunks` runs ``n_items`` items on (0 for none), so
    that a caller can allocate one set of scratch rows per thread beforehand."""
    return _chunks_and_threads(n_items, min_size, max_chunks)[1]


def parallel_chunks(
    kernel,
    n_items: int,
    *args,
    min_size: int = 1,
    max_chunks: int | None = None,
    pass_worker: bool = False,
) -> None:
    """``kernel(start, stop, *args)`` over contiguous chunks covering ``range(n_items)``,
    in parallel on ``numba.get_num_threads()`` threads (the calling one included).

    With several threads the items are cut into ``CHUNKS_PER_THREAD`` chunks per thread
    (at most ``max_chunks``, of at least ``min_size`` items where there are enough, all
    sizes within one of each other), and threads take the next chunk as they finish one;
    with one thread the kernel is called once for all the items. ``kernel`` must be
    compiled with ``nogil=True`` (otherwise it runs one chunk at a time), and chunks must
    write disjoint outputs. The first exception a chunk raises is re-raised once every
    thread has stopped; chunks not yet started then do not run. With ``pass_worker``
    the kernel is called as ``kernel(worker, start, stop, *args)``, ``worker`` in
    ``range(worker_count(n_items, min_size=..., max_chunks=...))`` naming the thread
    that runs the chunk: a thread's chunks run one after another, so scratch rows
    indexed by ``worker`` are never used by two chunks at once.
    """
    n_chunks, n_threads = _chunks_and_threads(n_items, min_size, max_chunks)
    if n_chunks == 0:
        return

    def run(c: int, worker: int) -> None:
        start, stop = n_items * c // n_chunks, n_items * (c + 1) // n_chunks
        if pass_worker:
            kernel(worker, start, stop, *args)
        else:
            kernel(start, stop, *args)

    _run_parallel(run, n_chunks, n_threads)
