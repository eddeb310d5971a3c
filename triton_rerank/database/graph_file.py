"""The inductive graph's file: an uncompressed ``.npz`` archive, validated in full on load.

The arrays of a graph file go straight into numba kernels that index other arrays
with them, without bounds checks: a damaged or edited file could crash the process
or make a kernel read outside its arrays. Nothing in a file is trusted.
:func:`read_graph_file` checks the archive, each member's dtype and shape, every
index range, every offset array, every value range and the consistency between
members (all vectorised numpy, O(file size)), then a checksum of the content. What
it returns is safe to search with; anything else raises :class:`GraphFileError` (a
``ValueError``) naming the file and the problem.

Format 2 (:data:`GRAPH_FORMAT`): one uncompressed ``.npy`` member per name in
:data:`MEMBERS`, named like the :class:`~triton_rerank.database.inductive.InductiveGraph`
fields (``reverse`` is split into ``rev_indptr``, ``rev_rows``, ``rev_w``). With
g = the database size, d = the dimension, R = the propagation rounds (``iterations``,
or 0 when ``k2 == 1``), nnz = ``len(m_indices)`` and E = ``len(rev_rows)``:

* ``format``, ``k1``, ``k2``, ``iterations``, ``row_budget``: int64 scalars with
  ``format == 2``, ``k1 >= 1``, ``1 <= k2 <= k1``, ``iterations >= 0``,
  ``row_budget >= 1``;
* ``fingerprint``: str scalar, the :func:`database_fingerprint` of the database the
  graph was built for (64 hex digits), or ``""`` when the graph was built without one;
* ``ids``: int64 ``[g]``; ``caller_position``: int64 ``[g]``, a permutation of
  ``0 .. g-1``;
* ``vectors``: float32 ``[g, d]``, g >= 1, d >= 1, finite unit rows;
* ``knn_values``: float32 ``[g, k1]``; ``knn_indices``: int64 ``[g, k1]``: each row lists
  positions in ``[0, g)``, the node itself among them, then -1 for missing entries (none
  before a valid one); the values are similarities in ``[-1, 1]``, non-increasing,
  ``-inf`` exactly where the position is -1;
* ``m_indptr``: int64 ``[R, 2g + 1]``, non-decreasing when read row after row, from 0 to
  nnz, each round starting where the previous one ends, its ``A_r`` and ``A_r.T`` halves
  holding as many entries; ``m_indices``: int32 ``[nnz]`` in ``[0, g)``;
  ``m_values``: float32 ``[nnz]`` in ``[0, 1]``;
* ``inv_norm``: float32 ``[R, g]`` in ``(0, 1 / NORM_EPS]``;
* ``rev_indptr``: int64 ``[g + 1]``, non-decreasing from 0 to E, row n as long as the
  number of top-k2 lists that hold n; ``rev_rows``: int64 ``[E]`` in ``[0, g)``;
  ``rev_w``: float32 ``[E]`` in ``[0, 1]``;
* ``checksum``: str scalar, :func:`content_checksum` of all the other members.

The checksum detects damage and edits made after the file was saved. It is no
signature (anyone can recompute it), so the structural checks never rely on it: a file
edited with a recomputed checksum is refused by them, or is safe to search with.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import uuid
import zipfile
import zlib
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..cpu.propagation import top_k2_weights
from ..limits import NORM_EPS

GRAPH_FORMAT = 2

# Every member of a format-2 file, in the order the checksum reads them.
MEMBERS = (
    "format",
    "k1",
    "k2",
    "iterations",
    "row_budget",
    "fingerprint",
    "ids",
    "caller_position",
    "vectors",
    "knn_values",
    "knn_indices",
    "m_indptr",
    "m_indices",
    "m_values",
    "inv_norm",
    "rev_indptr",
    "rev_rows",
    "rev_w",
    "checksum",
)
# A shard of a sharded graph (``triton_rerank.distributed``) is a graph file whose rows
# are the shard's nodes: the same members plus where the shard sits in the database.
SHARD_MEMBERS = (
    *MEMBERS[:-1],
    "shard_index",
    "shard_count",
    "shard_offset",
    "database_size",
    "checksum",
)
SCALARS = (
    "format",
    "k1",
    "k2",
    "iterations",
    "row_budget",
    "shard_index",
    "shard_count",
    "shard_offset",
    "database_size",
)
STRINGS = ("fingerprint", "checksum")

# Slack on the value ranges, for float32 rounding (similarities of unit rows, normalised
# rows, unit norms).
_TOLERANCE = 1e-3

# What reading a damaged archive can raise (zipfile, zlib, numpy's .npy reader).
_READ_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
    ValueError,
    OSError,
    EOFError,
    KeyError,
    IndexError,
    NotImplementedError,
    RuntimeError,
    OverflowError,
    MemoryError,
)

_ZIP_STARTS = (b"PK\x03\x04", b"PK\x05\x06")  # an archive's first entry / an empty one
_NPY_START = b"\x93NUMPY"
_HEX_DIGITS = frozenset("0123456789abcdef")


class GraphFileError(ValueError):
    """A graph file that cannot be used; the message names the file and the problem.

    Attributes:
        path: the file.
        problem: what is wrong with it.
    """

    def __init__(self, path, problem: str):
        super().__init__(f"{path} is not a triton-rerank graph file or is damaged: {problem}")
        self.path = path
        self.problem = problem


def _digest(parts) -> str:
    """blake2b-256 hex digest of byte strings and C-contiguous arrays, in order."""
    h = hashlib.blake2b(digest_size=32)
    for part in parts:
        h.update(part)
    return h.hexdigest()


def _raw_bytes(array: np.ndarray):
    """The array's bytes in C order, without a copy when it is C-contiguous already."""
    array = np.ascontiguousarray(array).reshape(-1)
    return array.view(np.uint8) if array.dtype.itemsize else b""


def database_fingerprint(vectors: np.ndarray, ids: np.ndarray) -> str:
    """A digest of a database: its stored vectors and their ids.

    Args:
        vectors: ``[n, d]`` the vectors as the index stores them (taken as float32).
        ids: ``[n]`` the id of each vector (taken as int64).

    Returns:
        64 hex digits; equal for equal vectors (bit for bit) and ids.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    shape = np.array(vectors.shape, dtype=np.int64)
    return _digest(
        [b"triton-rerank database\0", _raw_bytes(shape), _raw_bytes(vectors), _raw_bytes(ids)]
    )


def content_checksum(members: Mapping[str, np.ndarray], names: tuple = MEMBERS) -> str:
    """The checksum of a graph file's content: a digest of every member of ``names``
    (:data:`MEMBERS`, or :data:`SHARD_MEMBERS` for a shard) but ``checksum`` (name,
    dtype, shape and bytes), in that order.

    Members may be arrays of any dtype and shape (the digest is defined for every file).
    """
    parts = []
    for name in names[:-1]:
        array = np.asarray(members[name])
        parts += [*_checksum_header(name, array.dtype, array.shape), _raw_bytes(array)]
    return _digest(parts)


def _checksum_header(name: str, dtype: np.dtype, shape: tuple) -> list[bytes]:
    """What :func:`content_checksum` reads of a member before its bytes."""
    header = f"{name}\0{dtype.str}\0{shape}\0".encode()
    return [struct.pack("<q", len(header)), header]


class ArrayParts:
    """A 1-D member of :func:`write_graph_file` given as consecutive parts, written one
    after another and never joined in memory (a large file's rows, round by round).

    Args:
        dtype: the member's dtype; every part must have it.
        length: the member's length, the parts' lengths summed.
        parts: an iterable of 1-D arrays, read once, in order (a generator may free
            what it no longer needs between parts).
    """

    def __init__(self, dtype, length: int, parts):
        self.dtype, self.shape, self.parts = np.dtype(dtype), (int(length),), parts

    def chunks(self, name: str):
        """The parts, each checked against the dtype, then the length checked."""
        written = 0
        for part in self.parts:
            part = np.asarray(part)
            if part.dtype != self.dtype or part.ndim != 1:
                raise ValueError(
                    f"member {name!r}: a part is {part.dtype} {part.shape}, "
                    f"expected 1-D {self.dtype}"
                )
            written += part.shape[0]
            yield part
        if written != self.shape[0]:
            raise ValueError(
                f"member {name!r}: parts hold {written} items, expected {self.shape[0]}"
            )


def write_graph_file(path, members: Mapping[str, object], names: tuple = MEMBERS) -> None:
    """Write a graph file: ``members`` (every name of ``names`` but ``format`` and
    ``checksum``) plus the format and the checksum, uncompressed. ``names``:
    :data:`MEMBERS`, or :data:`SHARD_MEMBERS` for a shard of a sharded graph. A 1-D
    member may be an :class:`ArrayParts` (written part by part).

    The members are written in order and the checksum (the last member) is computed as
    their bytes go out, so nothing is held twice. The file is written next to ``path``
    under a temporary name, then renamed, so that an interrupted save never leaves a
    truncated file at ``path``.
    """
    path = Path(path)
    arrays = {"format": np.int64(GRAPH_FORMAT)}
    for name in names[1:-1]:
        value = members[name]
        if name in SCALARS:
            arrays[name] = np.int64(value)
        elif name in STRINGS:
            arrays[name] = np.str_(value)
        elif isinstance(value, ArrayParts):
            arrays[name] = value
        else:
            arrays[name] = np.ascontiguousarray(value)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with (
            open(temporary, "xb") as f,
            zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive,
        ):
            checksum = hashlib.blake2b(digest_size=32)
            for name, value in arrays.items():
                _write_member(archive, name, value, checksum)
            _write_member(archive, "checksum", np.str_(checksum.hexdigest()), None)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _write_member(archive: zipfile.ZipFile, name: str, value, checksum) -> None:
    """One ``.npy`` member (an array or :class:`ArrayParts`), its header and bytes added
    to ``checksum`` (a hash object, or None) as :func:`content_checksum` reads them."""
    parts = value if isinstance(value, ArrayParts) else None
    array = None if parts is not None else np.asarray(value)
    dtype, shape = (parts.dtype, parts.shape) if parts is not None else (array.dtype, array.shape)
    if checksum is not None:
        for piece in _checksum_header(name, dtype, shape):
            checksum.update(piece)
    with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
        if array is not None:
            np.lib.format.write_array(member, array, allow_pickle=False)
            if checksum is not None:
                checksum.update(_raw_bytes(array))
            return
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
        np.lib.format.write_array_header_1_0(member, {**header, "shape": shape})
        for chunk in parts.chunks(name):
            raw = _raw_bytes(chunk)
            member.write(raw)
            if checksum is not None:
                checksum.update(raw)


def read_graph_file(path) -> dict[str, np.ndarray]:
    """Read and validate a graph file written by :func:`write_graph_file`.

    Returns:
        Every member of :data:`MEMBERS` as a C-contiguous array (0-d for scalars and
        strings), all checked against the rules of the module doc.

    Raises:
        FileNotFoundError: no such file.
        GraphFileError: not a graph archive, another format (rebuild the graph), a
            member missing, unexpected, damaged or breaking a rule, or a wrong checksum.
    """
    return _read_validated(path, MEMBERS)


def read_graph_shard_file(path) -> dict[str, np.ndarray]:
    """Read and validate one shard of a sharded graph (members :data:`SHARD_MEMBERS`).

    The rules are those of a whole graph with ``g`` the shard's rows: its nodes are
    positions ``shard_offset .. shard_offset + g - 1`` of a database of ``database_size``
    rows, so the positions in ``knn_indices``, ``m_indices`` and ``rev_rows`` lie in
    ``[0, database_size)`` and each kNN row lists its own position; ``caller_position`` is
    ``0 .. g-1`` in order. How many lists hold each node (``rev_indptr``) depends on every
    shard: the set is checked together when it is opened
    (``triton_rerank.distributed.graph_shards``).

    Raises:
        FileNotFoundError, GraphFileError: as :func:`read_graph_file`.
    """
    return _read_validated(path, SHARD_MEMBERS)


def _read_validated(path, names: tuple) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no graph file at {path}")
    with open(path, "rb") as f:
        start = f.read(len(_NPY_START))
    if start.startswith(_NPY_START):
        raise GraphFileError(path, "it is a single .npy array, not an .npz archive")
    if start[:4] not in _ZIP_STARTS:  # np.load would try to unpickle anything else
        raise GraphFileError(path, "truncated or not an .npz archive")
    try:
        archive = np.load(path, allow_pickle=False)
    except _READ_ERRORS as error:
        raise GraphFileError(path, f"truncated or not an .npz archive ({error})") from None
    with archive:
        members = _read_members(archive, path, names)
    _check_members(members, path, sharded=names is SHARD_MEMBERS)
    if str(members["checksum"]) != content_checksum(members, names):
        raise GraphFileError(
            path,
            "its checksum does not match its content: the file was "
            "damaged or edited after it was saved; rebuild the graph",
        )
    return members


def _read_members(archive, path: Path, names: tuple) -> dict[str, np.ndarray]:
    """Every member of an open ``.npz`` archive, after the format and the member names."""
    try:
        entries = archive.zip.namelist()
    except _READ_ERRORS as error:
        raise GraphFileError(path, f"truncated or not an .npz archive ({error})") from None
    repeated = [name for name, count in Counter(entries).items() if count > 1]
    if repeated:
        raise GraphFileError(path, f"member {repeated[0]!r} appears more than once")
    present = {name.removesuffix(".npy") for name in entries if name.endswith(".npy")}
    if "format" not in present:
        raise GraphFileError(path, "missing member 'format'")
    version = _read_member(archive, "format", path)
    if version.shape != () or version.dtype.kind not in "iu":
        raise GraphFileError(
            path, f"member 'format' must be an integer scalar, got {_describe(version)}"
        )
    if int(version) != GRAPH_FORMAT:
        raise ValueError(
            f"{path} has graph format {int(version)}; this version reads "
            f"format {GRAPH_FORMAT}: rebuild the graph"
        )
    for name in names:
        if name not in present:
            raise GraphFileError(path, f"missing member {name!r}")
    for member in entries:
        if member.removesuffix(".npy") not in names or not member.endswith(".npy"):
            raise GraphFileError(path, f"unexpected member {member.removesuffix('.npy')!r}")
    return {name: _read_member(archive, name, path) for name in names}


def _read_member(archive, name: str, path: Path) -> np.ndarray:
    """One member, once its ``.npy`` header agrees with the bytes the archive holds for it
    (so that a forged header cannot make numpy allocate more than the file holds)."""
    try:
        info = archive.zip.getinfo(f"{name}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise GraphFileError(
                path, f"member {name!r} is compressed; graph files are written uncompressed"
            )
        with archive.zip.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                raise GraphFileError(
                    path,
                    f"member {name!r} has .npy version {version}, which graph files do not use",
                )
            header_size = member.tell()
        if dtype.hasobject:
            raise GraphFileError(path, f"member {name!r} holds Python objects")
        data_size = math.prod(shape) * dtype.itemsize
        if min(shape, default=0) < 0 or info.file_size != header_size + data_size:
            raise GraphFileError(
                path,
                f"member {name!r} is truncated or its header is "
                f"damaged ({dtype} {shape} needs {data_size} bytes, "
                f"the archive holds {info.file_size - header_size})",
            )
        array = archive[name]
        return array if array.flags.c_contiguous else array.copy(order="C")
    except _READ_ERRORS as error:
        if isinstance(error, GraphFileError):
            raise
        raise GraphFileError(path, f"member {name!r} is damaged ({error})") from None


def _describe(array: np.ndarray) -> str:
    return f"{array.dtype} array of shape {array.shape}"


class _Checker:
    """The rules of the module doc, one method per kind of rule; each failure is a
    :class:`GraphFileError` naming the member."""

    def __init__(self, members: Mapping[str, np.ndarray], path: Path):
        self.members = members
        self.path = path

    def fail(self, problem: str):
        raise GraphFileError(self.path, problem)

    def array(self, name: str, dtype, shape: tuple, shape_text: str) -> np.ndarray:
        """Member ``name`` after checking its dtype and shape (None = any length)."""
        array = self.members[name]
        if (
            array.dtype != np.dtype(dtype)
            or array.ndim != len(shape)
            or any(s is not None and s != t for s, t in zip(shape, array.shape, strict=True))
        ):
            self.fail(
                f"member {name!r} must have dtype {np.dtype(dtype)} and shape "
                f"{shape_text}, got {_describe(array)}"
            )
        return array

    def scalar(
        self, name: str, minimum: int, maximum: int | None = None, maximum_text: str = ""
    ) -> int:
        """Integer scalar member ``name`` in ``[minimum, maximum]``."""
        value = int(self.array(name, np.int64, (), "()"))
        if value < minimum:
            self.fail(f"member {name!r} is {value}, below its minimum {minimum}")
        if maximum is not None and value > maximum:
            self.fail(f"member {name!r} is {value}, above {maximum_text}")
        return value

    def string(self, name: str, *, allow_empty: bool) -> str:
        """Hex-digest string member ``name`` (``""`` allowed if ``allow_empty``)."""
        array = self.members[name]
        if array.shape != () or array.dtype.kind != "U":
            self.fail(f"member {name!r} must be a str scalar, got {_describe(array)}")
        value = str(array)
        if not (value == "" and allow_empty) and (
            len(value) != 64 or not set(value) <= _HEX_DIGITS
        ):
            self.fail(f"member {name!r} must be 64 hex digits, got {value[:80]!r}")
        return value

    def within(self, name: str, array: np.ndarray, low, high, what: str) -> None:
        """Every entry of ``array`` (member ``name`` or a part of it) in ``[low, high]``."""
        if array.size and (array.min() < low or array.max() > high):
            bad = array[(array < low) | (array > high)][0]
            self.fail(f"member {name!r} holds {bad!s}: {what}")

    def finite(self, name: str, array: np.ndarray) -> None:
        """No NaN or infinity in ``array`` (its min and max: NaN propagates through them,
        and no array-sized temporary is made)."""
        if array.size and not (np.isfinite(array.min()) and np.isfinite(array.max())):
            self.fail(f"member {name!r} holds NaN or infinite values")

    def offsets(self, name: str, offsets: np.ndarray, total: int, total_text: str) -> None:
        """CSR offsets: non-decreasing, from 0 to ``total`` (so every row lies inside the
        arrays it points into)."""
        if offsets.size == 0:
            return
        if offsets[0] != 0 or offsets[-1] != total:
            self.fail(
                f"member {name!r} must run from 0 to {total_text} = {total}, runs from "
                f"{offsets[0]} to {offsets[-1]}"
            )
        if (np.diff(offsets) < 0).any():
            self.fail(f"member {name!r} decreases (offsets must be non-decreasing)")


def _check_members(members: Mapping[str, np.ndarray], path: Path, *, sharded: bool) -> None:
    """Check every member against the rules of the module doc (of
    :func:`read_graph_shard_file` when ``sharded``)."""
    check = _Checker(members, path)
    k1 = check.scalar("k1", 1)
    k2 = check.scalar("k2", 1, k1, f"k1 = {k1}")
    iterations = check.scalar("iterations", 0)
    check.scalar("row_budget", 1)
    check.string("fingerprint", allow_empty=True)
    check.string("checksum", allow_empty=False)

    vectors = members["vectors"]
    if vectors.ndim != 2 or vectors.shape[0] < 1 or vectors.shape[1] < 1:
        check.fail(
            f"member 'vectors' must be a float32 array of shape (g, d) with g >= 1 "
            f"and d >= 1, got {_describe(vectors)}"
        )
    g, d = vectors.shape
    offset, size = 0, g  # the shard's first position and the database's size
    if sharded:
        count = check.scalar("shard_count", 1)
        check.scalar("shard_index", 0, count - 1, f"shard_count - 1 = {count - 1}")
        offset = check.scalar("shard_offset", 0)
        size = check.scalar("database_size", offset + g)
    check.array("vectors", np.float32, (g, d), "(g, d)")
    check.finite("vectors", vectors)
    norms = np.linalg.norm(vectors, axis=1)
    check.within(
        "vectors",
        norms,
        1 - _TOLERANCE,
        1 + _TOLERANCE,
        "a row norm; the vectors must be unit rows",
    )

    check.array("ids", np.int64, (g,), f"(g,) = ({g},)")
    position = check.array("caller_position", np.int64, (g,), f"(g,) = ({g},)")
    check.within("caller_position", position, 0, g - 1, f"positions must lie in [0, {g})")
    if (np.bincount(position, minlength=g) != 1).any():
        check.fail(
            "member 'caller_position' must be a permutation of 0 .. g-1 (a position appears twice)"
        )

    knn_shape = f"(g, k1) = ({g}, {k1})"
    values = check.array("knn_values", np.float32, (g, k1), knn_shape)
    indices = check.array("knn_indices", np.int64, (g, k1), knn_shape)
    check.within(
        "knn_indices",
        indices,
        -1,
        size - 1,
        f"positions must lie in [0, {size}), or be -1 for none",
    )
    missing = indices < 0
    if (missing[:, :-1] & ~missing[:, 1:]).any():
        check.fail("member 'knn_indices' has a missing entry (-1) before a valid one")
    if sharded and not np.array_equal(position, np.arange(g)):
        check.fail("member 'caller_position' of a shard must be 0 .. g-1 in order")
    if not (indices == offset + np.arange(g)[:, None]).any(axis=1).all():
        check.fail("member 'knn_indices' has a row that does not list its own node")
    if not np.array_equal(np.isneginf(values), missing):
        check.fail("member 'knn_values' must be -inf exactly where 'knn_indices' is -1")
    found = values[~missing]
    check.finite("knn_values", found)
    check.within(
        "knn_values",
        found,
        -1 - _TOLERANCE,
        1 + _TOLERANCE,
        "similarities of unit rows lie in [-1, 1]",
    )
    if (values[:, 1:] > values[:, :-1]).any():
        check.fail("member 'knn_values' must be non-increasing along each row")

    n_rounds = 0 if k2 == 1 else iterations  # as InductiveGraph.n_rounds
    m_indices = members["m_indices"]
    nnz = m_indices.shape[0] if m_indices.ndim == 1 else -1
    rounds_text = "R = iterations, or 0 when k2 = 1"
    m_indptr = check.array(
        "m_indptr",
        np.int64,
        (n_rounds, 2 * g + 1),
        f"(R, 2g + 1) = ({n_rounds}, {2 * g + 1}) ({rounds_text})",
    )
    check.array("m_indices", np.int32, (None,), "(nnz,)")
    m_values = check.array("m_values", np.float32, (nnz,), f"(nnz,) = ({nnz},) like 'm_indices'")
    if n_rounds:
        check.offsets("m_indptr", m_indptr.ravel(), nnz, "nnz = len(m_indices)")
        if (m_indptr[1:, 0] != m_indptr[:-1, -1]).any():
            check.fail(
                "member 'm_indptr' has a round that does not start where the previous one ends"
            )
        # (a shard's A_r.T rows hold the entries of every shard naming its nodes: the
        # halves match over the whole set, checked when the set is opened)
        if (
            not sharded
            and (m_indptr[:, g] - m_indptr[:, 0] != m_indptr[:, 2 * g] - m_indptr[:, g]).any()
        ):
            check.fail(
                "member 'm_indptr' has a round whose A_r and A_r.T halves hold "
                "different numbers of entries"
            )
    elif nnz:
        check.fail(f"member 'm_indices' must be empty when there are no rounds, holds {nnz}")
    check.within("m_indices", m_indices, 0, size - 1, f"node positions must lie in [0, {size})")
    check.finite("m_values", m_values)
    check.within(
        "m_values", m_values, 0, 1 + _TOLERANCE, "entries of normalised rows lie in [0, 1]"
    )

    inv_norm = check.array(
        "inv_norm", np.float32, (n_rounds, g), f"(R, g) = ({n_rounds}, {g}) ({rounds_text})"
    )
    check.finite("inv_norm", inv_norm)
    check.within(
        "inv_norm",
        inv_norm,
        np.finfo(np.float32).tiny,
        (1 + _TOLERANCE) / np.float32(NORM_EPS),
        f"inverse norms lie in (0, 1 / {NORM_EPS}]",
    )

    rev_rows = members["rev_rows"]
    n_edges = rev_rows.shape[0] if rev_rows.ndim == 1 else -1
    rev_indptr = check.array("rev_indptr", np.int64, (g + 1,), f"(g + 1,) = ({g + 1},)")
    check.array("rev_rows", np.int64, (None,), "(E,)")
    rev_w = check.array("rev_w", np.float32, (n_edges,), f"(E,) = ({n_edges},) like 'rev_rows'")
    check.offsets("rev_indptr", rev_indptr, n_edges, "E = len(rev_rows)")
    w_idx = top_k2_weights(values, indices, k2)[0]
    if not sharded and not np.array_equal(
        np.diff(rev_indptr), np.bincount(w_idx.ravel(), minlength=g)
    ):
        check.fail(
            "member 'rev_indptr' does not match the top-k2 lists: row n must list "
            "every node whose top-k2 holds n"
        )
    check.within("rev_rows", rev_rows, 0, size - 1, f"node positions must lie in [0, {size})")
    check.finite("rev_w", rev_w)
    check.within("rev_w", rev_w, 0, 1 + _TOLERANCE, "weights are squared similarities in [0, 1]")
