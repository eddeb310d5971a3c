"""Input checks shared by every public entry point.

One helper per kind of argument, so that the messages stay the same everywhere
and every message has a test (tests/test_checks.py).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch

from . import canonical

FLOAT_DTYPES_TORCH = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class FeaturePair:
    """Query and gallery features as float32 torch tensors on one device.

    Attributes:
        nodes: ``[q + g, d]`` float32, the queries then the gallery (one buffer).
        n_query: q.
        array_type: ``"numpy"`` or ``"torch"``: what the caller passed, and so what it gets back.
        device: the caller's device (``cpu`` for numpy input).
    """

    nodes: torch.Tensor
    n_query: int
    array_type: str
    device: torch.device


def as_numpy(x) -> np.ndarray:
    """A numpy view of ``x`` (a tensor on any device, an array, or array-like); bfloat16
    tensors, which numpy cannot hold, become float32 (exactly)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return np.asarray(x)


def _as_tensor(x, name: str) -> torch.Tensor:
    """``x`` (a numpy array or a tensor) as a dense floating-point tensor that autograd does
    not track, on x's device; numpy's float128/longdouble becomes float64."""
    if isinstance(x, torch.Tensor):
        if x.layout != torch.strided:
            raise TypeError(
                f"{name} is a {x.layout} tensor; pass a dense tensor (e.g. {name}.to_dense())"
            )
        if x.dtype not in FLOAT_DTYPES_TORCH:
            raise TypeError(
                f"{name} must be a floating-point tensor (float16, bfloat16, float32 or "
                f"float64), got dtype {x.dtype}"
            )
        if x.device.type == "meta":
            raise ValueError(f"{name} is on the meta device, which holds no values")
        return x.detach()  # model outputs and nn.Parameters: re-ranking is not differentiated
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(
            f"{name} must be a floating-point array (float16, float32 or float64), "
            f"got dtype {x.dtype}"
        )
    if x.dtype.itemsize > 8:  # longdouble: float64 holds every value re-ranking can use
        with np.errstate(over="ignore"):
            wide = x.astype(np.float64)
        if np.isfinite(x).all() and not np.isfinite(wide).all():
            raise ValueError(f"{name} has values beyond the float64 range")
        x = wide
    # native byte order, C order (big-endian arrays from files, transposed views)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("=")))


def _as_matrix(x, name: str) -> torch.Tensor:
    """``x`` as a float tensor after checking it is 2-D with at least one row."""
    t = _as_tensor(x, name)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, d], got {t.ndim}-D with shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)} has no rows")
    return t


def check_features(query, gallery, *, normalize: bool) -> FeaturePair:
    """Validate a query/gallery feature pair and convert it to float32 tensors.

    Args:
        query: ``[q, d]`` numpy array or torch tensor of floats.
        gallery: ``[g, d]`` array of the same type (and, for tensors, the same device).
        normalize: whether rows will be L2-normalised; then zero rows are rejected.

    Returns:
        A :class:`FeaturePair` holding the float32 rows (one ``[q + g, d]`` buffer) on
        the caller's device, L2-normalised when ``normalize`` is true.

    Raises:
        TypeError: not numpy/torch, mixed numpy and torch, or a non-floating dtype.
        ValueError: wrong ndim, empty, feature-dim mismatch, NaN/inf, zero-norm rows
            (with ``normalize=True``) or tensors on different devices.
    """
    if not isinstance(normalize, (bool, np.bool_)):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    types = []
    for name, x in (("query", query), ("gallery", gallery)):
        if isinstance(x, torch.Tensor):
            types.append("torch")
        elif isinstance(x, np.ndarray):
            types.append("numpy")
        else:
            raise TypeError(
                f"{name} must be a numpy.ndarray or a torch.Tensor, got {type(x).__name__}"
            )
    if types[0] != types[1]:
        raise TypeError(
            f"query and gallery must be the same array type, got query as {types[0]} and "
            f"gallery as {types[1]}; pass two numpy arrays or two torch tensors"
        )
    array_type = types[0]
    if array_type == "torch" and query.device != gallery.device:
        raise ValueError(
            f"query and gallery must be on the same device, got query on {query.device} "
            f"and gallery on {gallery.device}"
        )

    tensors = []
    for name, x in (("query", query), ("gallery", gallery)):
        t = _as_matrix(x, name)
        if t.shape[1] == 0:
            raise ValueError(f"{name} has feature dimension 0: shape {tuple(t.shape)}")
        tensors.append(t)
    xq, xg = tensors
    if xq.shape[1] != xg.shape[1]:
        raise ValueError(
            f"feature dimensions differ: query is [{xq.shape[0]}, {xq.shape[1]}] and "
            f"gallery is [{xg.shape[0]}, {xg.shape[1]}]"
        )

    n_query = xq.shape[0]
    nodes = torch.empty(n_query + xg.shape[0], xq.shape[1], dtype=torch.float32, device=xq.device)
    _copy_rows(xq, "query", nodes[:n_query], normalize)
    _copy_rows(xg, "gallery", nodes[n_query:], normalize)
    device = query.device if array_type == "torch" else torch.device("cpu")
    return FeaturePair(nodes, n_query, array_type, device)


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of the ``[n, d]`` matrix ``t`` is finite.

    A NaN or inf makes its row's sum NaN or inf, so finite row sums prove the matrix
    finite in one vectorised pass (``isfinite(t).all(dim=1)`` is several times slower);
    a non-finite sum (also from an overflow of finite values) gets the entrywise check.
    """
    if bool(torch.isfinite(t.sum(dim=1)).all()):
        return True
    return bool(torch.isfinite(t).all())


def _copy_rows(t: torch.Tensor, name: str, out: torch.Tensor, normalize: bool) -> None:
    """Copy ``t`` into the float32 ``out``, as canonical unit rows when ``normalize``
    (``canonical.unit_rows``: scale-aware, so any finite non-zero row works), after
    rejecting NaN/inf rows (and zero rows when normalising, or values beyond float32's
    range when not)."""
    if not _all_finite(t):
        bad = ~torch.isfinite(t).all(dim=1)
        rows = torch.nonzero(bad).flatten()
        raise ValueError(
            f"{name} contains NaN or inf in {rows.numel()} row(s), first at row {int(rows[0])}"
        )
    if not normalize:
        out.copy_(t)
        if not _all_finite(out):
            row = int(torch.nonzero(~torch.isfinite(out).all(dim=1)).flatten()[0])
            raise ValueError(
                f"{name} has values beyond the float32 range (first in row "
                f"{row}); with normalize=False the rows are used as float32"
            )
        return
    zero = (t == 0).all(dim=1)
    if bool(zero.any()):
        rows = torch.nonzero(zero).flatten()
        raise ValueError(
            f"{name} has {rows.numel()} zero-norm row(s) (first at row {int(rows[0])}), "
            f"which cannot be L2-normalised; remove them or pass normalize=False"
        )
    canonical.unit_rows(t, out)


def check_unnormalised_scale(features: FeaturePair, k2: int) -> None:
    """With ``normalize=False``, reject rows so long that the propagation's float32 sums
    could overflow: weights are squared similarities (up to ``|x|**4``) and a propagated
    row's squared norm sums up to N entries of ``2 * k2`` weights each.

    Raises:
        ValueError: the largest row norm is above that limit (the message gives both).
    """
    n = features.nodes.shape[0]
    limit = (1e37 / (4.0 * n * k2 * k2)) ** 0.125
    largest = float(canonical.row_norms(features.nodes).max())
    if largest > limit:
        raise ValueError(
            f"with normalize=False the rows are used as they are, and the "
            f"longest has norm {largest:.4g}: above {limit:.4g}, squared "
            f"similarities would overflow float32 in the propagation; pass "
            f"normalize=True or scale the features down"
        )


def check_unit_rows(x, name: str, dim: int) -> tuple[np.ndarray, str, torch.device]:
    """Validate ``[n, dim]`` vectors (numpy or torch) and L2-normalise them.

    Returns:
        ``(rows [n, dim] float32 numpy array of unit rows, array type, device)``, the
        last two as in :class:`FeaturePair`.

    Raises:
        TypeError: not numpy/torch, or a non-floating dtype.
        ValueError: wrong ndim, no rows, a dimension other than ``dim``, NaN/inf, zero rows.
    """
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        raise TypeError(f"{name} must be a numpy.ndarray or a torch.Tensor, got {type(x).__name__}")
    t = _as_matrix(x, name)
    if t.shape[1] != dim:
        raise ValueError(f"{name} has dimension {t.shape[1]} but the index has dimension {dim}")
    rows = torch.empty(t.shape, dtype=torch.float32)
    _copy_rows(t.cpu(), name, rows, normalize=True)
    if isinstance(x, torch.Tensor):
        return rows.numpy(), "torch", x.device
    return rows.numpy(), "numpy", torch.device("cpu")


def check_int(
    value, name: str, *, minimum: int, maximum: int | None = None, maximum_reason: str = ""
) -> int:
    """Return ``value`` as an int after checking ``minimum <= value <= maximum``.

    Raises:
        TypeError: ``value`` is not an integer (bools are rejected too).
        ValueError: out of range; the message quotes the value and the bound.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        reason = f" ({maximum_reason})" if maximum_reason else ""
        raise ValueError(f"{name}={value} is larger than {maximum}{reason}")
    return value


def check_unit_interval(value, name: str) -> float:
    """Return ``value`` as a float after checking it is a finite number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1], got {value!r}")
    value = float(value)
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def check_rerank_params(*, k1, k2, iterations, lamb, topk, n_nodes: int, n_gallery: int):
    """Validate GNN re-ranking hyper-parameters against the data sizes.

    Returns:
        ``(k1, k2, iterations, lamb, topk)`` as plain Python numbers (``topk`` may be None).
    """
    k1 = check_int(
        k1,
        "k1",
        minimum=1,
        maximum=n_nodes,
        maximum_reason=f"the number of nodes, query + gallery = {n_nodes}",
    )
    k2 = check_int(k2, "k2", minimum=1, maximum=k1, maximum_reason="k2 must not exceed k1")
    iterations = check_int(iterations, "iterations", minimum=0)
    lamb = check_unit_interval(lamb, "lamb")
    if topk is not None:
        topk = check_int(
            topk,
            "topk",
            minimum=1,
            maximum=n_gallery,
            maximum_reason=f"the gallery size {n_gallery}",
        )
    return k1, k2, iterations, lamb, topk


def check_similarity_blocks(q_g, q_q, g_g) -> tuple[int, int]:
    """Validate the three similarity (or distance) matrices of a query/gallery split.

    Args:
        q_g: ``[q, g]``; q_q: ``[q, q]``; g_g: ``[g, g]``. Each a numpy array or a torch
            tensor of floats (the types may be mixed: torchreid's engine passes both).

    Returns:
        ``(q, g)``.

    Raises:
        TypeError: a non-array or a non-floating dtype.
        ValueError: wrong ndim, empty, or shapes that do not fit together.
    """
    for name, x in (("q_g", q_g), ("q_q", q_q), ("g_g", g_g)):
        if not isinstance(x, (np.ndarray, torch.Tensor)):
            raise TypeError(
                f"{name} must be a numpy.ndarray or a torch.Tensor, got {type(x).__name__}"
            )
        floating = (
            x.is_floating_point()
            if isinstance(x, torch.Tensor)
            else np.issubdtype(x.dtype, np.floating)
        )
        if not floating:
            raise TypeError(f"{name} must hold floats, got dtype {x.dtype}")
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(x.shape)}")
    n_query, n_gallery = q_g.shape
    if n_query == 0 or n_gallery == 0:
        raise ValueError(f"q_g is empty: shape {tuple(q_g.shape)}")
    for name, x, expected in (
        ("q_q", q_q, (n_query, n_query)),
        ("g_g", g_g, (n_gallery, n_gallery)),
    ):
        if tuple(x.shape) != expected:
            raise ValueError(
                f"{name} must have shape {list(expected)} to match q_g "
                f"{list(q_g.shape)}, got {list(x.shape)}"
            )
    return n_query, n_gallery


def describe_rows(mask: np.ndarray) -> str:
    """``"3 rows, the first is row 7"`` for a boolean mask over rows."""
    rows = np.flatnonzero(mask)
    return f"{len(rows)} row{'s' if len(rows) > 1 else ''}, the first is row {rows[0]}"


def unit_rows(features: np.ndarray, name: str = "features") -> np.ndarray:
    """``[n, d]`` features with every row scaled to L2 norm 1, as float32.

    These are the canonical unit rows of ``gnn_rerank(normalize=True)``
    (``canonical.unit_rows``: scaled by a power of two and summed in float64, so rows of
    1e-30 or 1e30 are fine), bit for bit.

    Raises:
        ValueError: no feature dimension, a row with NaN or inf, or a row of norm 0
            (it has no direction to compare by cosine).
    """
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"{name} must be [n, d] with d >= 1, got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):  # also non-native byte order
        x = x.astype(np.float64)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise ValueError(f"{name} have NaN or inf in {describe_rows(~finite)}")
    zero = ~x.any(axis=1)
    if zero.any():
        raise ValueError(
            f"{name} have rows of norm 0 ({describe_rows(zero)}), which cannot be "
            "compared by cosine"
        )
    out = torch.empty(x.shape, dtype=torch.float32)
    canonical.unit_rows(torch.from_numpy(np.ascontiguousarray(x)), out)
    return out.numpy()
