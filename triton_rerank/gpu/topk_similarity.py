"""``topk_similarity``: the k largest inner products of each row of x with the rows of y,
on the GPU (or in the Triton interpreter).

float32 features get the canonical kNN values (``triton_rerank/canonical.py``) through
``certified_topk`` (a float16 candidate pass, canonical rescoring, a certificate) or,
where the float16 pass cannot run, canonically over every column
(``canonical.canonical_topk``); float16/bfloat16 features go straight to the streaming
kernel (``streaming_topk.py``).
"""

from __future__ import annotations

import torch

from .canonical import canonical_topk
from .certified_topk import DEFAULT_MARGIN, certified_topk, fits_float16
from .launch_config import MAX_STREAMING_K
from .streaming_topk import streaming_topk

FEATURE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_feature_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise ValueError unless ``x [n, d]`` and ``y [m, d]`` are non-empty 2-D feature
    tensors of one supported dtype on one device."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must be [n, d] and [m, d], got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.dtype != y.dtype or x.dtype not in FEATURE_DTYPES:
        raise ValueError(
            f"x and y must share one dtype of {FEATURE_DTYPES}, got {x.dtype} and {y.dtype}"
        )
    if x.device != y.device:
        raise ValueError(f"x and y must be on one device, got {x.device} and {y.device}")
    if min(x.shape[0], y.shape[0], x.shape[1]) == 0:
        raise ValueError(f"empty input: x {tuple(x.shape)}, y {tuple(y.shape)}")
    if y.shape[0] >= 2**32:
        raise ValueError(f"y has {y.shape[0]} rows; at most 2**32 - 1 per call")


def topk_similarity(x: torch.Tensor, y: torch.Tensor, k: int):
    """The ``k`` largest inner products of each row of x with the rows of y.

    Args:
        x: ``[n, d]`` float32, float16 or bfloat16 (products accumulate in fp32).
            float32 rows get the canonical similarities of ``triton_rerank/canonical.py``
            (the kNN's definition, equal to the CPU path's bit for bit): through
            ``certified_topk`` (a float16 pass, canonical rescoring and a certificate;
            close calls recomputed canonically), or canonically over every column where
            the float16 pass cannot run (values beyond float16's range, k near
            ``MAX_STREAMING_K``).
        y: ``[m, d]`` same dtype and device (may be x itself).
        k: ``1 <= k <= min(m, MAX_STREAMING_K)``.

    Returns:
        ``(values [n, k] float32, indices [n, k] int64)``, each row by descending
        value, equal values by smaller column index.

    Raises:
        ValueError: mismatched shapes, dtypes or devices, empty input, or k out of range.

    Example:
        >>> x = torch.randn(1000, 64, device="cuda")
        >>> values, indices = topk_similarity(x, x, 26)  # kNN, self included
    """
    check_feature_pair(x, y)
    if not 1 <= k <= min(y.shape[0], MAX_STREAMING_K):
        raise ValueError(
            f"k must be in [1, min(m, {MAX_STREAMING_K})] with m = {y.shape[0]}, got {k}"
        )
    same = y is x
    x = x.contiguous()
    y = x if same else y.contiguous()
    if x.dtype != torch.float32:
        return streaming_topk(k, x.shape[0], y.shape[0], x=x, y=y)
    if k + DEFAULT_MARGIN <= MAX_STREAMING_K and fits_float16(x, y):
        return certified_topk(x, y, k)[:2]
    return canonical_topk(x, y, k)
