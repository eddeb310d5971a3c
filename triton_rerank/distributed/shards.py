"""Where a shard's vectors come from: an array, a ``.npy`` file, a FAISS index file, or a
part of a Ray Dataset of ``(id, vector)`` rows.

A source is what a shard actor receives when it starts, and again when Ray restarts it
after a failure, so it must be readable more than once: arrays travel through Ray's
object store (the driver keeps them alive), files are read from a path every node sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cpu.kernels.unit_rows import unit_rows


@dataclass(frozen=True)
class ShardSource:
    """One shard of the database.

    Attributes:
        kind: ``"array"`` (``data`` is ``(vectors [n, d], ids [n] or None)``),
            ``"npy"`` (``data`` is a path to an ``[n, d]`` array), ``"faiss"`` (``data`` is
            the path of a FAISS index file whose labels are the rows ``0 .. n-1``; its
            vectors are read back with ``reconstruct_n``) or ``"blocks"`` (``data`` is a
            list of object references to Ray Data batches with ``id`` and ``vector``
            columns).
        data: as above.
    """

    kind: str
    data: object


def as_source(shard) -> ShardSource:
    """A :class:`ShardSource` from an array, a path (``.npy`` or a FAISS index file), an
    ``(vectors, ids)`` pair, or a source."""
    if isinstance(shard, ShardSource):
        return shard
    if isinstance(shard, (str, Path)):
        return ShardSource("npy" if str(shard).endswith(".npy") else "faiss", str(shard))
    if isinstance(shard, tuple):
        return ShardSource("array", (np.asarray(shard[0]), np.asarray(shard[1], np.int64)))
    return ShardSource("array", (np.asarray(shard), None))


def read_source(source: ShardSource):
    """``(stored [n, d] float32, unit [n, d] float32, ids [n] int64 or None, index)``:
    the vectors as given, their canonical unit rows, the caller ids, and the FAISS
    index of a ``"faiss"`` source (else None)."""
    import ray

    index, ids = None, None
    if source.kind == "array":
        data = source.data
        stored, ids = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    elif source.kind == "npy":
        stored = np.load(source.data)
    elif source.kind == "faiss":
        import faiss

        index = faiss.read_index(source.data)
        stored = index.reconstruct_n(0, index.ntotal)
    elif source.kind == "blocks":
        batches = ray.get(list(source.data))
        stored = np.concatenate([np.stack(b["vector"]) for b in batches]) if batches else None
        ids = np.concatenate([np.asarray(b["id"], np.int64) for b in batches])
    else:
        raise ValueError(f"unknown shard source kind {source.kind!r}")
    stored = np.ascontiguousarray(stored, dtype=np.float32)
    return stored, checked_unit_rows(stored), ids, index


def checked_unit_rows(stored: np.ndarray, name: str = "shard vectors") -> np.ndarray:
    """``[n, d]`` float32 canonical unit rows of ``stored`` (float32, C order), after
    rejecting what ``checks.check_unit_rows`` rejects: not 2-D, no rows, NaN/inf, zero
    rows. In numpy and numba, so that a shard actor never loads torch."""
    if stored.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D [n, d], got {stored.ndim}-D with shape {stored.shape}"
        )
    if stored.shape[0] == 0:
        raise ValueError(f"{name} is empty: shape {stored.shape} has no rows")
    bad = ~np.isfinite(stored).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"{name} contains NaN or inf in {rows.size} row(s), first at row {rows[0]}"
        )
    zero = ~stored.any(axis=1)
    if zero.any():
        rows = np.flatnonzero(zero)
        raise ValueError(
            f"{name} has {rows.size} zero-norm row(s) (first at row {rows[0]}), which "
            f"cannot be L2-normalised"
        )
    unit = np.empty(stored.shape, dtype=np.float32)
    unit_rows(stored, unit)
    return unit


def sources_from_dataset(dataset, n_shards: int) -> list[ShardSource]:
    """Split a Ray Dataset of ``(id, vector)`` rows into ``n_shards`` sources, in the
    dataset's order (global position = rank in the materialised dataset)."""
    parts = dataset.materialize().split(n_shards, equal=False)
    return [ShardSource("blocks", part.to_numpy_refs()) for part in parts]
