"""``gnn_rerank()``: the public entry point, and ``GNNReranker``, a reusable configuration."""

from __future__ import annotations

import importlib.util
import math
import numbers
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from . import limits
from .checks import (
    check_features,
    check_rerank_params,
    check_similarity_blocks,
    check_unnormalised_scale,
)
from .limits import check_fits

BACKENDS = ("auto", "cpu", "triton")
# Old names still accepted, with a DeprecationWarning: "torch" was the CPU path's name.
DEPRECATED_BACKENDS = {"torch": "cpu"}


def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def canonical_backend_name(backend: str, *, stacklevel: int = 3) -> str:
    """``backend`` with a deprecated alias replaced by its current name (and a
    ``DeprecationWarning``); unknown names are left for the caller to refuse."""
    if backend in DEPRECATED_BACKENDS:
        new = DEPRECATED_BACKENDS[backend]
        warnings.warn(
            f"backend={backend!r} is deprecated; use backend={new!r}",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        return new
    return backend


def resolve_backend(backend: str, device: torch.device | None = None) -> str:
    """The backend that will run for features on ``device`` (default: the CPU).

    ``"auto"`` picks ``"triton"`` (the kernels of ``triton_rerank.gpu``) for CUDA
    tensors and ``"cpu"`` (the CPU path) otherwise, also when ``TRITON_INTERPRET=1``
    is set. ``"triton"`` runs the kernels on CUDA tensors, or on CPU tensors in the
    Triton interpreter when ``TRITON_INTERPRET=1``. ``"cpu"`` always runs on the CPU
    (``"torch"``, its old name, is accepted with a ``DeprecationWarning``).

    Raises:
        ValueError: an unknown name, or ``"triton"`` where it cannot run (triton not
            installed, or CPU tensors without ``TRITON_INTERPRET=1``).
    """
    backend = canonical_backend_name(backend, stacklevel=4)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = device is not None and device.type == "cuda"
    if backend == "cpu":
        return "cpu"
    if backend == "auto":
        if on_cuda and not _triton_importable():
            warnings.warn(
                "triton is not installed: re-ranking CUDA tensors on the CPU path "
                "(pip install triton for the GPU kernels)",
                stacklevel=3,
            )
            return "cpu"
        return "triton" if on_cuda else "cpu"
    if not _triton_importable():
        raise ValueError(
            "backend='triton' needs the triton package, which is not "
            "installed; pip install triton, or use backend='auto' or 'cpu'"
        )
    if not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        where = "numpy arrays" if device is None else f"tensors on {device}"
        raise ValueError(
            f"backend='triton' runs on CUDA tensors, got {where}; set "
            f"TRITON_INTERPRET=1 (before triton is imported) to run the "
            f"kernels in the Triton interpreter, or use backend='auto' or "
            f"'cpu'"
        )
    return "triton"


def _to_caller(result, device: torch.device | None):
    """CPU tensors (or a tuple of them) to numpy (``device`` None) or to ``device``."""
    if isinstance(result, tuple):
        return tuple(_to_caller(r, device) for r in result)
    return result.numpy() if device is None else result.to(device)


def gnn_rerank(
    query,
    gallery,
    *,
    k1: int = 26,
    k2: int = 7,
    iterations: int = 2,
    lamb: float = 0.3,
    topk: int | None = None,
    normalize: bool = True,
    backend: str = "auto",
):
    """Re-rank gallery items for each query with GNN re-ranking (Zhang et al. 2020).

    Queries and gallery items are all nodes of one kNN graph (transductive
    re-ranking). Each node's row of the adjacency is propagated over its ``k2``
    nearest neighbours with squared-similarity weights, ``iterations`` times, and
    the final score of a pair is the inner product of their rows, mixed with the
    original cosine similarity by ``lamb``. See docs/design.md §1 for the exact steps.

    Args:
        query: ``[q, d]`` float features (numpy array or torch tensor).
        gallery: ``[g, d]`` features of the same array type (and device).
        k1: neighbours in the kNN graph (Market-1501: 26, VeRi-776: 60); ``k1 <= q + g``.
        k2: neighbours aggregated per propagation round, ``1 <= k2 <= k1``;
            ``k2 == 1`` skips propagation.
        iterations: propagation rounds (the reference code uses 2).
        lamb: weight of the original similarity in the final score, in [0, 1].
        topk: None for the full score matrix, or K (``1 <= K <= g``) for the top-K.
        normalize: L2-normalise rows first (rows of norm 0 are then an error).
        backend: ``"auto"`` (Triton kernels for CUDA tensors, the CPU path otherwise),
            ``"cpu"`` (the CPU path; CUDA tensors are computed on the CPU and returned
            on their device; ``"torch"`` is its deprecated old name) or ``"triton"``
            (the kernels: on CUDA tensors, or on CPU tensors and numpy arrays in the
            Triton interpreter when
            ``TRITON_INTERPRET=1``). See :func:`resolve_backend`.

    Returns:
        With ``topk=None``: ``scores [q, g]`` float32, higher is better.
        With ``topk=K``: ``(D [q, K] float32, I [q, K] int64)``, sorted by descending
        score, equal scores by smaller gallery index.
        numpy in, numpy out; torch in, torch out on the input's device.

    Raises:
        TypeError: non-array input, mixed numpy/torch, integer dtypes, non-integer k's.
        ValueError: bad shapes, empty input, NaN/inf, zero rows with ``normalize=True``,
            out-of-range ``k1``/``k2``/``iterations``/``lamb``/``topk``, mixed devices,
            unknown backend, or ``"triton"`` where it cannot run.
        MemoryError: the ``[q, g]`` output of ``topk=None`` (or the dense rows of
            degenerate data) does not fit in the memory available; the message says
            what to do.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> xq, xg = rng.standard_normal((5, 16)), rng.standard_normal((40, 16))
        >>> D, I = gnn_rerank(xq, xg, k1=10, k2=3, topk=5)
        >>> D.shape, I.dtype
        ((5, 5), dtype('int64'))
    """
    features = check_features(query, gallery, normalize=normalize)
    n_query = features.n_query
    n_gallery = features.nodes.shape[0] - n_query
    k1, k2, iterations, lamb, topk = check_rerank_params(
        k1=k1,
        k2=k2,
        iterations=iterations,
        lamb=lamb,
        topk=topk,
        n_nodes=n_query + n_gallery,
        n_gallery=n_gallery,
    )
    if not normalize:
        check_unnormalised_scale(features, k2)
    if topk is None:
        check_fits(
            4 * n_query * n_gallery,
            f"the [{n_query}, {n_gallery}] float32 score matrix (topk=None)",
            "pass topk=K to get the K best gallery items of each query instead",
            features.device,
        )
    device = features.device if features.array_type == "torch" else None
    # each backend is imported when it runs: the GPU one needs triton, the CPU one numba
    if resolve_backend(backend, device) == "triton":
        from .gpu.pipeline import run_triton as run
    else:
        from .cpu.pipeline import run_cpu as run
    result = run(features, k1=k1, k2=k2, iterations=iterations, lamb=lamb, topk=topk)
    return _to_caller(result, device)


# Tensor dtypes that numpy cannot hold (bfloat16) or would scale in their own precision
# (float16: numpy's float16 loop rounds each product to 16 bits): converted to float32
# first, exactly, and scaled there.
_NARROW_TENSOR_DTYPES = (torch.float16, torch.bfloat16)


def _check_affine(scale, offset) -> tuple[float, float]:
    """``scale`` and ``offset`` as floats after checking they are finite real numbers
    and ``scale != 0``.

    Raises:
        TypeError: not a real number (bools included).
        ValueError: NaN or inf, or ``scale == 0``.
    """
    for name, value in (("scale", scale), ("offset", offset)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a finite real number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if scale == 0:
        raise ValueError(
            f"scale must be non-zero (every similarity would be the offset), got {scale!r}"
        )
    return float(scale), float(offset)


def _similarity_rows(
    matrix, start: int, stop: int, scale: float, offset: float, out: np.ndarray, name: str
) -> np.ndarray:
    """Rows ``start:stop`` of ``matrix`` as float32 similarities ``offset + scale * x``,
    written into (a prefix of) the flat buffer ``out``.

    float16 and bfloat16 rows are converted to float32 first (exactly, into ``out``) and
    scaled there, so they give the same similarities as their float32 values; other
    floats are scaled in their own precision and rounded once. Tensors on any device
    are copied chunk by chunk, and never tracked by autograd.
    """
    rows = matrix[start:stop]
    if isinstance(rows, torch.Tensor):
        rows = rows.detach()
        block = out[: rows.numel()].reshape(rows.shape)
        if rows.dtype in _NARROW_TENSOR_DTYPES:
            torch.from_numpy(block).copy_(rows)  # exact, and from any device
            rows = block
        else:
            rows = rows.cpu().numpy()
    else:
        block = out[: rows.size].reshape(rows.shape)
        if rows.dtype == np.float16:
            block[...] = rows  # exact
            rows = block
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
        np.multiply(rows, scale, out=block, casting="unsafe")
        block += np.float32(offset)
    if not (np.isfinite(block.min()) and np.isfinite(block.max())):  # NaN propagates
        bad = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
        raw = matrix[bad]
        raw = raw.detach().double().cpu().numpy() if isinstance(raw, torch.Tensor) else raw
        if np.isfinite(raw).all():
            raise ValueError(
                f"{name} row {bad} overflows float32 as similarities "
                f"offset + scale * x with scale={scale!r}, offset={offset!r}"
            )
        raise ValueError(f"{name} contains NaN or inf (first in row {bad})")
    return block


def gnn_rerank_similarities(
    q_g,
    q_q,
    g_g,
    *,
    k1: int = 26,
    k2: int = 7,
    iterations: int = 2,
    lamb: float = 0.3,
    topk: int | None = None,
    scale: float = 1.0,
    offset: float = 0.0,
):
    """GNN re-ranking from precomputed similarity matrices instead of features.

    Same algorithm as :func:`gnn_rerank`, with ``U @ U.T`` given as its three blocks.
    The matrices are read one chunk of rows at a time and each entry ``x`` is used as
    the similarity ``offset + scale * x``, so distances can be passed as they are
    (squared euclidean between unit vectors: ``scale=-0.5, offset=1``; cosine distance:
    ``scale=-1, offset=1``) without a full-size converted copy.

    Args:
        q_g: ``[q, g]`` query-gallery similarities (numpy or torch; types may be mixed).
            Any float dtype: float16 and bfloat16 are converted to float32 exactly, one
            chunk at a time; tensors that require grad (``nn.Parameter``, model outputs)
            are read detached.
        q_q: ``[q, q]`` query-query similarities.
        g_g: ``[g, g]`` gallery-gallery similarities.
        k1, k2, iterations, lamb, topk: as :func:`gnn_rerank`.
        scale, offset: the affine map from the given entries to similarities (finite
            real numbers, ``scale != 0``).

    Returns:
        As :func:`gnn_rerank`, as numpy arrays, or as torch tensors on ``q_g``'s device
        when ``q_g`` is a tensor.

    Raises:
        TypeError: a non-number ``scale``/``offset``; a matrix that is not a numpy array
            or a tensor, or holds no floats (integers, bool, complex, object), naming it.
        ValueError: NaN/inf ``scale``/``offset`` or ``scale == 0``; bad shapes; NaN/inf
            entries (or entries that overflow float32 once scaled), naming the matrix and
            the row; bad hyper-parameters.
    """
    from .cpu.neighbour_lists import NeighbourLists
    from .cpu.pipeline import scores_from_lists

    scale, offset = _check_affine(scale, offset)
    n_query, n_gallery = check_similarity_blocks(q_g, q_q, g_g)
    n = n_query + n_gallery
    k1, k2, iterations, lamb, topk = check_rerank_params(
        k1=k1, k2=k2, iterations=iterations, lamb=lamb, topk=topk, n_nodes=n, n_gallery=n_gallery
    )
    lists = NeighbourLists(n, k1)
    base = torch.empty(n_query, n_gallery, dtype=torch.float32)
    rows = max(1, limits.SIMILARITY_CHUNK_BYTES // (4 * n))
    chunk = np.empty(rows * n, dtype=np.float32)
    for start in range(0, n_query, rows):
        stop = min(n_query, start + rows)
        lists.offer(_similarity_rows(q_q, start, stop, scale, offset, chunk, "q_q"), start, 0)
        block = _similarity_rows(q_g, start, stop, scale, offset, chunk, "q_g")
        lists.offer(block, start, n_query, columns_from=0)  # gallery nodes get queries too
        base[start:stop] = torch.from_numpy(block)
    for start in range(0, n_gallery, rows):
        stop = min(n_gallery, start + rows)
        block = _similarity_rows(g_g, start, stop, scale, offset, chunk, "g_g")
        lists.offer(block, n_query + start, n_query)
    result = scores_from_lists(
        lists.values,
        lists.indices,
        n_query=n_query,
        k2=k2,
        iterations=iterations,
        lamb=lamb,
        topk=topk,
        query=None,
        gallery=None,
        base=base,
    )
    return _to_caller(result, q_g.device if isinstance(q_g, torch.Tensor) else None)


@dataclass(frozen=True)
class GNNReranker:
    """A reusable GNN re-ranking configuration: ``GNNReranker(k1=60, k2=10)(xq, xg)``.

    Presets: :meth:`market1501` (k1=26, k2=7) and :meth:`veri776` (k1=60, k2=10).
    """

    k1: int = 26
    k2: int = 7
    iterations: int = 2
    lamb: float = 0.3
    normalize: bool = True
    backend: str = "auto"

    @classmethod
    def market1501(cls, **overrides) -> GNNReranker:
        return cls(**{"k1": 26, "k2": 7, **overrides})

    @classmethod
    def veri776(cls, **overrides) -> GNNReranker:
        return cls(**{"k1": 60, "k2": 10, **overrides})

    def __call__(self, query, gallery, topk: int | None = None):
        """Same as :func:`gnn_rerank` with this configuration."""
        return gnn_rerank(
            query,
            gallery,
            k1=self.k1,
            k2=self.k2,
            iterations=self.iterations,
            lamb=self.lamb,
            topk=topk,
            normalize=self.normalize,
            backend=self.backend,
        )
