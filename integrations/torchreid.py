"""GNN re-ranking inside torchreid's evaluation, with one line.

torchreid users evaluate with ``engine.run(test_only=True, rerank=True)``, which
calls the k-reciprocal ``re_ranking(distmat, distmat_qq, distmat_gg)`` (k1=20, k2=6,
lambda=0.3). This module offers:

- :func:`re_ranking`: a drop-in with torchreid's signature and return convention,
- :func:`use_gnn_reranking` (and :func:`enable_gnn_reranking` /
  :func:`disable_gnn_reranking`): make torchreid's ``Engine`` call it,
- :func:`evaluate`: torchreid's ``(cmc, mAP)`` straight from features, with
  ``rerank="gnn"``, ``"none"`` or ``"k-reciprocal"``.

Works with PyPI's ``torchreid`` 0.2.5 (code under ``torchreid.reid``) and with
upstream installs (``torchreid.*``).

Distances and cosine similarity: torchreid's ``"euclidean"`` metric is the SQUARED
euclidean distance ``d = |x|^2 + |y|^2 - 2 <x, y>``; for L2-normalised features that
is ``2 - 2 cos``, so ``cos = 1 - d / 2``. Its ``"cosine"`` metric is ``d = 1 - cos``.
The GNN works on cosine similarities, so the drop-in converts with those formulas and
converts its re-ranked similarity ``s`` back to the same scale (``2 - 2 s`` or
``1 - s``). When the features were NOT L2-normalised (torchreid's default is
``normalize_feature=False``), ``1 - d / 2`` is not the cosine: the drop-in still
runs, on that approximation, and warns once. Pass ``normalize_feature=True`` to
``engine.run``/``engine.test`` for exact GNN re-ranking.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from types import ModuleType

import numpy as np
import torch

from triton_rerank.checks import as_numpy

# Squared euclidean distances between unit vectors lie in [0, 4]; above this (with
# a little room for rounding) the features cannot have been L2-normalised.
_UNIT_SQUARED_DISTANCE_MAX = 4.0 * (1 + 1e-4)
METRICS = ("euclidean", "cosine")


def torchreid_module(name: str) -> ModuleType:
    """Import ``torchreid.reid.<name>`` (PyPI layout) or else ``torchreid.<name>`` (upstream).

    Args:
        name: dotted module path inside torchreid, e.g. ``"metrics"`` or ``"utils.rerank"``.

    Raises:
        ImportError: torchreid is not installed (install the ``torchreid`` extra), or has
            no such module.
    """
    try:
        import torchreid  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "torchreid is not installed; install it with: pip install 'triton-rerank[torchreid]'"
        ) from err
    for candidate in (f"torchreid.reid.{name}", f"torchreid.{name}"):
        try:
            return importlib.import_module(candidate)
        except ModuleNotFoundError as err:
            if err.name is None or not candidate.startswith(err.name):
                raise
    raise ImportError(f"torchreid has no module {name!r} under torchreid.reid or torchreid")


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


class UnnormalisedFeaturesWarning(UserWarning):
    """Distances larger than unit vectors allow: cosine similarities are approximate."""


_warned_unnormalised = False


def _warn_unnormalised_once(max_distance: float) -> None:
    global _warned_unnormalised
    if not _warned_unnormalised:
        _warned_unnormalised = True
        warnings.warn(
            f"squared euclidean distances up to {max_distance:.3g} (> 4): the features were "
            "not L2-normalised, so cosine = 1 - d/2 is only an approximation; evaluate "
            "with normalize_feature=True for exact GNN re-ranking",
            UnnormalisedFeaturesWarning,
            stacklevel=3,
        )


def re_ranking(
    q_g_dist,
    q_q_dist,
    g_g_dist,
    k1: int = 26,
    k2: int = 7,
    lamb: float = 0.3,
    metric: str = "euclidean",
) -> np.ndarray:
    """Drop-in for torchreid's ``re_ranking`` that runs GNN re-ranking.

    Args:
        q_g_dist: ``[q, g]`` distances (numpy array or torch tensor: torchreid's engine
            passes a numpy ``distmat`` and torch ``distmat_qq`` / ``distmat_gg``).
        q_q_dist: ``[q, q]`` distances.
        g_g_dist: ``[g, g]`` distances.
        k1, k2, lamb: GNN re-ranking parameters (see :func:`triton_rerank.gnn_rerank`).
        metric: the distance the matrices hold: ``"euclidean"`` (torchreid's squared
            euclidean; exact for L2-normalised features, an approximation with a warning
            otherwise) or ``"cosine"`` (``1 - cos``).

    Any float dtype works (float16 and bfloat16 are read as float32, exactly), and so do
    tensors that require grad (they are read detached).

    Returns:
        ``[q, g]`` float32 numpy re-ranked distances, smaller is better, on the input
        metric's scale (``2 - 2 s`` for euclidean, ``1 - s`` for cosine, where ``s`` is
        the re-ranked similarity).

    Raises:
        TypeError: a matrix that is not an array, or holds no floats.
        ValueError: unknown metric, bad shapes, NaN/inf, or bad k1/k2/lamb.
    """
    from triton_rerank.checks import check_similarity_blocks
    from triton_rerank.rerank import gnn_rerank_similarities

    _check_metric(metric)
    # the result is numpy whatever the input, as torchreid's: a tensor is read on the CPU
    q_g_dist = q_g_dist.detach().cpu() if isinstance(q_g_dist, torch.Tensor) else as_numpy(q_g_dist)
    check_similarity_blocks(q_g_dist, q_q_dist, g_g_dist)  # before reading any value
    if metric == "euclidean":
        # unnormalised features show in every block; the query-gallery one is checked
        largest = float(q_g_dist.max())
        if largest > _UNIT_SQUARED_DISTANCE_MAX:
            _warn_unnormalised_once(largest)
    scale = -0.5 if metric == "euclidean" else -1.0  # similarity = 1 + scale * distance
    scores = gnn_rerank_similarities(
        q_g_dist, q_q_dist, g_g_dist, k1=k1, k2=k2, lamb=lamb, scale=scale, offset=1.0
    )
    if isinstance(scores, torch.Tensor):
        scores = scores.numpy()  # a CPU tensor: a view
    scores -= 1.0  # back to the input's distance scale, in place
    scores /= scale
    return scores


# --- making torchreid's Engine use it ------------------------------------------------

_ENGINE_MODULE = "engine.engine"  # where Engine._evaluate looks up re_ranking
_patched: dict | None = None


def enable_gnn_reranking(
    k1: int = 26, k2: int = 7, lamb: float = 0.3, metric: str = "euclidean"
) -> None:
    """Make torchreid's ``Engine`` (``rerank=True``) use GNN re-ranking until disabled.

    Args:
        k1, k2, lamb: GNN parameters.
        metric: the ``dist_metric`` the engine evaluates with (torchreid's default is
            ``"euclidean"``).

    Raises:
        RuntimeError: already enabled (disable first, or use :func:`use_gnn_reranking`).
    """
    global _patched
    if _patched is not None:
        raise RuntimeError("GNN re-ranking is already enabled in torchreid; disable it first")
    _check_metric(metric)
    engine_module = torchreid_module(_ENGINE_MODULE)

    def gnn_re_ranking(q_g_dist, q_q_dist, g_g_dist, *args, **kwargs):
        # torchreid passes its own k1/k2/lambda_value only positionally, if at all: the
        # GNN parameters chosen here win
        return re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=k1, k2=k2, lamb=lamb, metric=metric)

    _patched = {"module": engine_module, "original": engine_module.re_ranking}
    engine_module.re_ranking = gnn_re_ranking


def disable_gnn_reranking() -> None:
    """Restore torchreid's own ``re_ranking`` (a no-op when not enabled)."""
    global _patched
    if _patched is not None:
        _patched["module"].re_ranking = _patched["original"]
        _patched = None


@contextlib.contextmanager
def use_gnn_reranking(k1: int = 26, k2: int = 7, lamb: float = 0.3, metric: str = "euclidean"):
    """Context manager: torchreid's ``Engine`` re-ranks with GNN inside the block.

    Example:
        >>> with use_gnn_reranking(k1=26, k2=7):  # doctest: +SKIP
        ...     engine.run(test_only=True, rerank=True, normalize_feature=True)
    """
    enable_gnn_reranking(k1=k1, k2=k2, lamb=lamb, metric=metric)
    try:
        yield
    finally:
        disable_gnn_reranking()


# --- evaluation from features ---------------------------------------------------------

RERANK_MODES = ("gnn", "none", "k-reciprocal")


def k_reciprocal_distances(
    query: torch.Tensor,
    gallery: torch.Tensor,
    *,
    metric: str = "euclidean",
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """torchreid's own k-reciprocal re-ranking (Zhong et al. 2017) of query features
    against gallery features, as torchreid's engine runs it: the three distance matrices
    from torchreid's ``compute_distance_matrix``, then ``torchreid.utils.rerank.re_ranking``
    (its defaults: k1=20, k2=6, lambda=0.3). The one place the project calls it (the
    baseline of ``evaluate(rerank="k-reciprocal")``, the CLI and the benchmarks).

    Args:
        query: ``[q, d]`` float32 tensor; gallery: ``[g, d]`` float32 tensor.
        metric: ``"euclidean"`` or ``"cosine"``.

    Returns:
        ``[q, g]`` float32 numpy re-ranked distances (lower is better).
    """
    distance = torchreid_module("metrics").compute_distance_matrix
    re_ranking = torchreid_module("utils.rerank").re_ranking
    return re_ranking(
        distance(query, gallery, metric).numpy(),
        distance(query, query, metric).numpy(),
        distance(gallery, gallery, metric).numpy(),
        k1=k1,
        k2=k2,
        lambda_value=lambda_value,
    )


def _float32_features(x, name: str) -> torch.Tensor:
    """``x`` as a detached float32 CPU tensor (bfloat16 included, which numpy lacks),
    after checking it is 2-D."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().float()
    else:
        t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, d], got shape {list(t.shape)}")
    return t


def evaluate(
    qf,
    gf,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    *,
    rerank: str = "gnn",
    metric: str = "euclidean",
    normalize_feature: bool = True,
    max_rank: int = 50,
    k1: int = 26,
    k2: int = 7,
    lamb: float = 0.3,
):
    """torchreid's ``(cmc, mAP)`` for features, with optional re-ranking.

    The same numbers as torchreid's engine (``_evaluate``: distances with ``metric``,
    optional ``re_ranking``, ``evaluate_rank``), computed the fast way: ``"gnn"`` runs
    :func:`triton_rerank.gnn_rerank` on the features directly (no distance matrices),
    and the metrics come from :func:`triton_rerank.evaluation.metrics.evaluate`.

    Equal to the engine inside :func:`use_gnn_reranking` with ``normalize_feature=True``
    wherever torchreid's fp32 distance matrices rank each row's neighbours as the
    features do (and no final scores tie). They may not where two neighbours'
    similarities differ by less than the distances' rounding (about 1e-7 of
    ``|x|^2 + |y|^2``): nearly collinear features, such as a random-weight network's
    (cosines around 0.9995), can swap a pair at a k1 or k2 boundary there, and the
    engine's mAP moves in the 5th digit. From features the kNN is exact (the canonical
    similarity and its tie rule).

    Args:
        qf, gf: ``[q, d]`` / ``[g, d]`` features (numpy or torch, any float dtype; tensors
            that require grad are read detached).
        q_pids, g_pids, q_camids, g_camids: labels, checked before anything is computed
            (see :func:`triton_rerank.evaluation.metrics.check_labels`: 1-D, one per row of qf / gf,
            integers, integer-valued floats or strings).
        rerank: ``"gnn"``, ``"none"`` or ``"k-reciprocal"`` (torchreid's own re_ranking,
            k1=20, k2=6, lambda=0.3).
        metric: ``"euclidean"`` or ``"cosine"``, as torchreid's ``dist_metric``.
        normalize_feature: L2-normalise features first (torchreid's engine flag).
        max_rank: CMC length.
        k1, k2, lamb: GNN parameters.

    Returns:
        ``(cmc [max_rank] float32 numpy, mAP float)``, as torchreid's ``evaluate_rank``.

    Raises:
        TypeError: labels of an unsupported kind (see ``check_labels``).
        ValueError: unknown rerank mode or metric, features that are not 2-D, labels of
            the wrong length or shape, NaN/inf or non-integer float labels; then whatever
            the re-ranking and :func:`triton_rerank.evaluation.metrics.evaluate` raise.
    """
    from triton_rerank.evaluation.metrics import check_labels
    from triton_rerank.evaluation.metrics import evaluate as evaluate_scores
    from triton_rerank.rerank import gnn_rerank

    if rerank not in RERANK_MODES:
        raise ValueError(f"rerank must be one of {RERANK_MODES}, got {rerank!r}")
    _check_metric(metric)
    qf, gf = _float32_features(qf, "qf"), _float32_features(gf, "gf")
    labels = check_labels(
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        n_query=qf.shape[0],
        n_gallery=gf.shape[0],
        query_source=f"qf {list(qf.shape)}",
        gallery_source=f"gf {list(gf.shape)}",
    )
    if normalize_feature:
        qf = torch.nn.functional.normalize(qf, p=2, dim=1)
        gf = torch.nn.functional.normalize(gf, p=2, dim=1)
    if rerank == "gnn":
        scores = gnn_rerank(qf, gf, k1=k1, k2=k2, lamb=lamb, normalize=False)
    elif rerank == "k-reciprocal":
        scores = -k_reciprocal_distances(qf, gf, metric=metric)
    else:
        scores = -torchreid_module("metrics").compute_distance_matrix(qf, gf, metric).numpy()
    result = evaluate_scores(scores, *labels, max_rank=max_rank)
    return result.cmc.astype(np.float32), result.mAP
