"""Feature-file loaders and the embedded default dataset.

``load_features`` reads the ``pytorch_result.mat`` layout that most re-ID training
code writes (``query_f``, ``gallery_f`` as ``[n, d]`` float arrays; ``query_label``,
``gallery_label``, ``query_cam``, ``gallery_cam`` as ``1 x n`` arrays), and ``.npz``
files with the same keys. It checks everything it reads: a file that cannot be used
gives one ``ValueError`` whose message reads ``<file>: <key>: <problem>``.
``load_digits_split`` builds a small real retrieval task from scikit-learn's bundled
8x8 digits (no download).
"""

from __future__ import annotations

import math
import os
import struct
import warnings
import zipfile
import zlib

import numpy as np

from ..checks import describe_rows, unit_rows  # noqa: F401 (unit_rows: re-exported)
from ..evaluation.feature_set import FeatureSet

FEATURE_KEYS = ("query_f", "gallery_f")
LABEL_KEYS = ("query_label", "gallery_label", "query_cam", "gallery_cam")
# Labels that are compared with each other: identities jointly, cameras jointly.
LABEL_PAIRS = (("query_label", "gallery_label"), ("query_cam", "gallery_cam"))
_KEYS = FEATURE_KEYS + LABEL_KEYS


# What scipy.io.loadmat, numpy.load and zipfile raise on damaged or foreign files (found
# by corrupting valid .mat and .npz files byte by byte): besides OSError, EOFError and
# ValueError, scipy's Cython MAT reader raises TypeError, IndexError, KeyError,
# UnboundLocalError, ZeroDivisionError and MemoryError (sizes read from a damaged
# header); zipfile raises BadZipFile, NotImplementedError (unknown compression) and
# RuntimeError (a member flagged as encrypted); both raise zlib.error on damaged
# compressed data.
def _read_errors() -> tuple[type[BaseException], ...]:
    from scipy.io.matlab import MatReadError

    return (
        OSError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        UnboundLocalError,
        ArithmeticError,
        MemoryError,
        RuntimeError,
        struct.error,
        zlib.error,
        zipfile.BadZipFile,
        MatReadError,
    )


def _describe(err: BaseException) -> str:
    """An exception as one short line: ``"Name: message"``."""
    text = " ".join(str(err).split())
    if len(text) > 200:
        text = text[:197] + "..."
    module = type(err).__module__.split(".")[0]
    name = type(err).__name__ if module == "builtins" else f"{module}.{type(err).__name__}"
    return f"{name}: {text}" if text else name


class _BadMat(Exception):
    """A MAT v5 structure that scipy's reader must not be given."""


# MAT v5 data types that scipy's reader has a dtype for. Its Cython reader looks the
# type of a data element up in a fixed table without a bounds check, so any other code
# in a damaged file (0, 8, 10, 11, 14, 15, >= 19) crashes the process (segfault).
_MAT5_DATA_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 16, 17, 18})
_MAT5_MATRIX, _MAT5_COMPRESSED = 14, 15
_MAT5_CELL, _MAT5_CHAR = 1, 4
_MAT5_NUMERIC_CLASSES = range(6, 16)  # double, single, int8 ... uint64
_MAT5_OTHER_CLASSES = {
    2: "struct",
    3: "object",
    5: "sparse matrix",
    16: "function handle",
    17: "MATLAB class object (opaque)",
}
_MAT5_MAX_DEPTH = 16  # cells inside cells
_MAT5_MAX_CELLS = 10**7  # more labels than any re-ID set has images


class _Mat5Stream:
    """Forward-only reads from one top-level element of a MAT v5 file, inflating it when
    it is an miCOMPRESSED element, for :func:`_check_mat5`."""

    def __init__(self, f, size: int, compressed: bool):
        self._f, self._left = f, size
        self._inflate = zlib.decompressobj() if compressed else None
        self._buffer = b""

    def _fill(self, n: int) -> None:
        while len(self._buffer) < n:
            if self._inflate.unconsumed_tail:
                data = self._inflate.unconsumed_tail
            elif self._inflate.eof or self._left <= 0:
                raise _BadMat("compressed data end inside a variable")
            else:
                data = self._f.read(min(self._left, 1 << 20))
                if not data:
                    raise _BadMat("the file ends inside a compressed variable")
                self._left -= len(data)
            try:
                self._buffer += self._inflate.decompress(data, 1 << 20)
            except zlib.error as err:
                raise _BadMat(f"damaged compressed data ({err})") from None

    def read(self, n: int) -> bytes:
        if self._inflate is None:
            data = self._f.read(min(n, self._left))
            self._left -= len(data)
            if len(data) < n:
                raise _BadMat("the file ends inside a variable")
            return data
        self._fill(n)
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def skip(self, n: int) -> None:
        if self._inflate is None:
            if n > self._left:
                raise _BadMat("the file ends inside a variable")
            self._f.seek(n, os.SEEK_CUR)
            self._left -= n
            return
        while n > 0:
            step = min(n, 1 << 20)
            self._fill(step)
            self._buffer = self._buffer[step:]
            n -= step


class _Mat5Checker:
    """Walks a MAT v5 file the way scipy reads it and rejects what would crash scipy:
    data elements of an unknown type inside the variables that will be loaded. Also
    names, from their headers alone, the variables that are not plain arrays."""

    def __init__(self, path: str, endian: str, wanted):
        self.path, self.endian, self.wanted = path, endian, set(wanted)

    def _element(self, s: _Mat5Stream):
        """``(type, None, data)`` of a small element (data inside the 8-byte tag), or
        ``(type, size, None)`` of a full one whose data is still unread."""
        tag = s.read(8)
        mdtype, size = struct.unpack(self.endian + "II", tag)
        if mdtype >> 16:  # small data element: size and type share the first 4 bytes
            return mdtype & 0xFFFF, None, tag[4 : 4 + min(mdtype >> 16, 4)]
        return mdtype, size, None

    def _bytes(self, s: _Mat5Stream, limit: int = 4096) -> bytes:
        """The data of a header element (dimensions, a name)."""
        mdtype, size, data = self._element(s)
        if data is not None:
            return data
        if size > limit:
            raise _BadMat(f"a header element of {size} bytes")
        data = s.read(size)
        s.skip(-size % 8)
        return data

    def _data(self, s: _Mat5Stream, key: str, char: bool) -> None:
        """Check the type of a data element and skip its data. scipy looks the type up
        for every numeric element, and for char elements that hold data."""
        mdtype, size, data = self._element(s)
        empty = not data if size is None else size == 0
        if mdtype not in _MAT5_DATA_TYPES and not (char and empty):
            raise _BadMat(f"{key}: unknown data type code {mdtype}")
        if size is not None:
            s.skip(size + -size % 8)

    def matrix(self, s: _Mat5Stream, key: str | None, depth: int = 0) -> None:
        """Check the matrix whose miMATRIX tag was just read (``key`` None: top level,
        whose name decides whether it is checked further)."""
        s.read(8)  # the array-flags tag
        flags = struct.unpack(self.endian + "II", s.read(8))[0]
        mclass, complex_ = flags & 0xFF, flags >> 11 & 1
        if mclass == 17:  # opaque: a name, then class data
            name = self._bytes(s).decode("latin1")
            dims = ()
        else:
            dims = self._bytes(s, limit=128)  # scipy reads at most 32 dimensions
            dims = struct.unpack(f"{self.endian}{len(dims) // 4}i", dims[: len(dims) // 4 * 4])
            if len(dims) < 2:  # MATLAB writes 2 or more; scipy crashes on a char array with 0
                raise _BadMat(f"a matrix with {len(dims)} dimensions")
            name = self._bytes(s).decode("latin1")
        if key is None:
            if name not in self.wanted:
                return
            key = name
        where = f"{self.path}: {key}: "
        if mclass in _MAT5_OTHER_CLASSES:
            raise ValueError(
                f"{where}is a MATLAB {_MAT5_OTHER_CLASSES[mclass]}, not an array of "
                "numbers (or, for labels, of strings)"
            )
        if mclass in _MAT5_NUMERIC_CLASSES or mclass == _MAT5_CHAR:
            for _ in range(1 + (complex_ and mclass != _MAT5_CHAR)):
                self._data(s, key, char=mclass == _MAT5_CHAR)
        elif mclass == _MAT5_CELL:
            n_cells = math.prod(dims)
            if depth >= _MAT5_MAX_DEPTH or min(dims, default=0) < 0 or n_cells > _MAT5_MAX_CELLS:
                raise _BadMat(f"{key}: a cell array of shape {dims} at depth {depth}")
            for _ in range(n_cells):
                mdtype, size = struct.unpack(self.endian + "II", s.read(8))
                if mdtype != _MAT5_MATRIX:
                    raise _BadMat(f"{key}: a cell that is not a matrix")
                if size:
                    self.matrix(s, key, depth + 1)
        else:
            raise _BadMat(f"{key}: unknown MATLAB class code {mclass}")

    def check(self, f, size: int) -> None:
        f.seek(128)
        while size - f.tell() >= 8:
            start = f.tell()
            mdtype, nbytes = struct.unpack(self.endian + "II", f.read(8))
            if nbytes > size - start - 8:
                raise _BadMat(
                    f"the variable at byte {start} has {nbytes} bytes but the file "
                    f"ends {size - start - 8} bytes later"
                )
            if mdtype in (_MAT5_MATRIX, _MAT5_COMPRESSED) and nbytes:
                s = _Mat5Stream(f, nbytes, compressed=mdtype == _MAT5_COMPRESSED)
                if (
                    mdtype == _MAT5_MATRIX
                    or struct.unpack(self.endian + "I", s.read(8)[:4])[0] == _MAT5_MATRIX
                ):
                    self.matrix(s, None)
            f.seek(start + 8 + nbytes)


def _read_mat(path: str, head: bytes) -> dict:
    import scipy.io

    version = head[124:128]
    major = version[int(version[2:3] == b"I")] if len(version) == 4 else 0
    if len(head) == 128 and 0 not in head[:4] and major == 1:  # MAT v5 (v4 files start with 0s)
        checker = _Mat5Checker(path, "<" if head[126:128] == b"IM" else ">", _KEYS)
        try:
            with open(path, "rb") as f:
                checker.check(f, os.fstat(f.fileno()).st_size)
        except (_BadMat, struct.error) as err:
            raise ValueError(f"{path}: corrupt or truncated .mat file ({err})") from None
    try:
        with warnings.catch_warnings():  # e.g. duplicate names; unreadable ones are caught below
            warnings.simplefilter("ignore")
            return scipy.io.loadmat(path, variable_names=_KEYS)
    except NotImplementedError as err:  # MATLAB v7.3 files are HDF5
        if "HDF" not in str(err):
            raise ValueError(f"{path}: not a readable .mat file ({_describe(err)})") from err
        raise ValueError(
            f"{path}: MATLAB v7.3 (HDF5) files are not supported; save with "
            f"scipy.io.savemat or MATLAB's -v7 flag, or as .npz with the same keys"
        ) from err
    except _read_errors() as err:
        raise ValueError(
            f"{path}: not a readable .mat file, or a damaged one ({_describe(err)})"
        ) from err


def _mat_names(path: str) -> list[str]:
    """Names of the variables in a .mat file (empty when they cannot be listed)."""
    import scipy.io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [name for name, _, _ in scipy.io.whosmat(path)]
    except _read_errors():
        return []


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"


def _read_npz(path: str, head: bytes) -> tuple[dict, list[str]]:
    if head.startswith(_NPY_MAGIC):
        raise ValueError(
            f"{path}: is a .npy file (a single array), not an .npz archive of "
            "named arrays; save with numpy.savez(path, query_f=..., gallery_f=...)"
        )
    if not head.startswith(_ZIP_MAGIC):
        raise ValueError(f"{path}: not an .npz archive (it does not start with a zip header)")
    try:
        npz = np.load(path, allow_pickle=False)
    except _read_errors() as err:
        raise ValueError(f"{path}: damaged or truncated .npz archive ({_describe(err)})") from err
    raw = {}
    with npz:
        names = list(npz.files)
        for key in _KEYS:
            if key not in names:
                continue
            try:
                raw[key] = npz[key]
            except ValueError as err:
                if "allow_pickle" in str(err):
                    raise ValueError(
                        f"{path}: {key}: holds Python objects (dtype object), "
                        "which are not loaded (unpickling is unsafe); save it "
                        "as an array of numbers or strings"
                    ) from err
                raise ValueError(
                    f"{path}: {key}: cannot be read, the archive is damaged ({_describe(err)})"
                ) from err
            except _read_errors() as err:
                raise ValueError(
                    f"{path}: {key}: cannot be read, the archive is damaged ({_describe(err)})"
                ) from err
    return raw, names


def _dtype_words(dtype: np.dtype) -> str:
    kinds = {
        "U": "strings",
        "S": "byte strings",
        "V": "records",
        "M": "dates",
        "m": "time spans",
        "O": "Python objects (e.g. a MATLAB cell array)",
        "c": "complex numbers",
    }
    return f"{kinds[dtype.kind]} (dtype {dtype})" if dtype.kind in kinds else f"dtype {dtype}"


def _array(path: str, key: str, value) -> np.ndarray:
    if isinstance(value, str):  # scipy's placeholder for a variable it could not read
        raise ValueError(f"{path}: {key}: cannot be read ({value})")
    if not isinstance(value, np.ndarray):
        raise ValueError(
            f"{path}: {key}: is a {type(value).__name__}, not an array; save it "
            "as a full (dense) array"
        )
    return value


def _feature_matrix(path: str, key: str, x: np.ndarray) -> None:
    """Check the dtype and shape of one feature matrix."""
    where, side = f"{path}: {key}: ", key.split("_")[0]
    if x.dtype.kind not in "biuf":
        real = "; features must be real numbers" if x.dtype.kind == "c" else ""
        raise ValueError(f"{where}must hold numbers, got {_dtype_words(x.dtype)}{real}")
    if x.ndim != 2:
        hint = " (save a single row as [1, d])" if x.ndim == 1 else ""
        raise ValueError(f"{where}must be a 2-D [n, d] array, got shape {x.shape}{hint}")
    if x.shape[0] == 0:
        raise ValueError(f"{where}has no rows (shape {x.shape}): the {side} set is empty")
    if x.shape[1] == 0:
        raise ValueError(f"{where}has feature dimension 0 (shape {x.shape})")


def _feature_values(path: str, key: str, x: np.ndarray) -> np.ndarray:
    """``x`` as float32 after checking that every value is finite and no row is zero."""
    where = f"{path}: {key}: "
    with np.errstate(over="ignore", invalid="ignore"):
        y = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(y).all(axis=1)
    if bad.any():
        n_nan = int(np.isnan(x).sum()) if x.dtype.kind == "f" else 0
        n_inf = int(np.isinf(x).sum()) if x.dtype.kind == "f" else 0
        if n_nan + n_inf == 0:
            raise ValueError(
                f"{where}values beyond float32's range (largest magnitude "
                f"{float(np.abs(x).max()):.3g}) in {describe_rows(bad)}"
            )
        counts = " and ".join(f"{n} {what}" for n, what in ((n_nan, "NaN"), (n_inf, "inf")) if n)
        raise ValueError(
            f"{where}{counts} value{'s' if n_nan + n_inf > 1 else ''} in "
            f"{describe_rows(bad)}; features must be finite"
        )
    zero = ~y.any(axis=1)
    if zero.any():
        raise ValueError(
            f"{where}all-zero features in {describe_rows(zero)}; cosine "
            "similarity needs rows of non-zero norm"
        )
    return y


def _cell_strings(path: str, key: str, x: np.ndarray) -> np.ndarray:
    """A MATLAB cell array of strings (cellstr) as an array of str."""
    out = []
    for item in x.reshape(-1, order="F"):
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, np.ndarray) and item.dtype.kind == "U" and item.size <= 1:
            out.append(str(item.reshape(-1)[0]) if item.size else "")
        else:
            raise ValueError(
                f"{path}: {key}: holds {_dtype_words(x.dtype)}; labels must be "
                "a numeric array, a char array or a cell array of strings"
            )
    return np.array(out, dtype=str).reshape(x.shape, order="F")


_INT64_LIMIT = 2.0**63


def _label_vector(path: str, key: str, x: np.ndarray, n: int) -> tuple[str, np.ndarray]:
    """``("numbers", int64 labels)`` or ``("strings", str labels)`` of one label key."""
    where, feature_key = f"{path}: {key}: ", key.split("_")[0] + "_f"
    if x.dtype.kind == "O":
        x = _cell_strings(path, key, x)
    if x.ndim > 2 or (x.ndim == 2 and 1 not in x.shape):
        raise ValueError(
            f"{where}must be a vector of labels ([n], [1, n] or [n, 1]), got shape {x.shape}"
        )
    x = x.reshape(-1)
    if x.shape[0] != n:
        raise ValueError(
            f"{where}has {x.shape[0]} entries but {feature_key} has {n} rows (one label per image)"
        )
    kind = x.dtype.kind
    if kind in "US":
        try:
            text = x.astype(str)
        except UnicodeDecodeError:
            raise ValueError(
                f"{where}byte strings that are not ASCII; store them as text (str) labels"
            ) from None
        return "strings", np.char.strip(text)
    if kind in "biu":
        if kind == "u" and x.size and int(x.max()) >= _INT64_LIMIT:
            raise ValueError(f"{where}label {int(x.max())} is too large for int64")
        return "numbers", x.astype(np.int64)
    if kind != "f":
        raise ValueError(f"{where}must hold integers or strings, got {_dtype_words(x.dtype)}")
    for bad, problem in (
        (np.isnan(x), "NaN"),
        (np.isinf(x), "infinite"),
        (np.abs(x) >= _INT64_LIMIT, "too large for int64"),
        (x != np.round(x), "not a whole number"),
    ):
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            many = f" ({int(bad.sum())} entries)" if bad.sum() > 1 else ""
            raise ValueError(
                f"{where}entry {first} is {x[first].item()!r}, {problem}{many}; "
                "labels must be integers (or strings)"
            )
    return "numbers", x.astype(np.int64)


def _labels(path: str, raw: dict, n_query: int, n_gallery: int) -> list[np.ndarray]:
    """The four label vectors, checked, with string labels mapped to integers."""
    vectors = {}
    for key in LABEL_KEYS:
        n = n_query if key.startswith("query") else n_gallery
        vectors[key] = _label_vector(path, key, _array(path, key, raw[key]), n)
    for query_key, gallery_key in LABEL_PAIRS:
        (q_kind, q), (g_kind, g) = vectors[query_key], vectors[gallery_key]
        if q_kind != g_kind:
            raise ValueError(
                f"{path}: {gallery_key}: holds {g_kind} but {query_key} holds "
                f"{q_kind}; store both as integers or both as strings"
            )
        if q_kind == "strings":  # one integer per distinct string, over query and gallery
            codes = np.unique(np.concatenate([q, g]), return_inverse=True)[1].reshape(-1)
            vectors[query_key] = q_kind, codes[:n_query].astype(np.int64)
            vectors[gallery_key] = g_kind, codes[n_query:].astype(np.int64)
    return [vectors[key][1] for key in LABEL_KEYS]


def load_features(path: str | os.PathLike) -> FeatureSet:
    """Load query/gallery features (and labels when present) from ``.mat`` or ``.npz``.

    Everything read is checked, and only the six keys are read. Features must be real
    numbers (any integer or float dtype; stored as float32), 2-D ``[n, d]`` with
    ``n >= 1`` and ``d >= 1``, the same ``d`` for query and gallery, finite, and without
    all-zero rows (cosine similarity needs a direction). Labels are vectors (``[n]``,
    ``[1, n]`` or ``[n, 1]``) with one entry per feature row, holding integers (floats
    must be whole numbers; NaN is an error) or strings.

    String labels (re-ID identities such as ``"0001"``, MATLAB char or cellstr arrays)
    are stripped of surrounding spaces and mapped to integers ``0, 1, ...`` in sorted
    order, jointly over query and gallery (identities over ``query_label`` and
    ``gallery_label`` together, cameras over ``query_cam`` and ``gallery_cam``
    together), so equal strings get equal integers. A key holding strings whose partner
    holds numbers is an error.

    Args:
        path: a ``pytorch_result.mat``-style file or an ``.npz`` with the same keys.

    Returns:
        :class:`FeatureSet`; labels are None when the file has none of them.

    Raises:
        FileNotFoundError: no such file.
        ValueError: ``"<file>: <key>: <problem>"`` for anything else: not a regular file,
            unreadable, empty, unknown extension, not a .mat / .npz archive, a damaged or
            truncated one, missing feature keys, only some label keys, non-numeric,
            complex or object arrays, wrong shapes, no rows, feature dimension 0,
            different query and gallery dimensions, NaN / inf / all-zero feature rows, or
            labels of the wrong length, NaN, not whole numbers, or strings against numbers.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such feature file")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not a regular file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".mat", ".npz"):
        raise ValueError(f"{path}: unsupported file type {ext!r}; expected .mat or .npz")
    try:
        with open(path, "rb") as f:
            head = f.read(128)
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or _describe(err)})") from err
    if not head:
        raise ValueError(f"{path}: the file is empty (0 bytes)")
    if ext == ".mat":
        raw = _read_mat(path, head)
        names = [k for k in raw if not k.startswith("__")]
    else:
        raw, names = _read_npz(path, head)

    missing = [key for key in FEATURE_KEYS if key not in raw]
    if missing:
        if ext == ".mat" and len(names) < len(_KEYS):
            names = _mat_names(path) or names
        raise ValueError(f"{path}: missing {', '.join(missing)}; found keys {sorted(names)}")
    arrays = {key: _array(path, key, raw[key]) for key in FEATURE_KEYS}
    for key in FEATURE_KEYS:
        _feature_matrix(path, key, arrays[key])
    query, gallery = (arrays[key] for key in FEATURE_KEYS)
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"{path}: gallery_f: has dimension {gallery.shape[1]} but query_f has "
            f"dimension {query.shape[1]} (shapes {gallery.shape} and {query.shape});"
            " query and gallery features must come from the same model"
        )
    query, gallery = (_feature_values(path, key, arrays[key]) for key in FEATURE_KEYS)

    present = [key for key in LABEL_KEYS if key in raw]
    if not present:
        return FeatureSet(query, gallery)
    if len(present) != len(LABEL_KEYS):
        absent = [key for key in LABEL_KEYS if key not in raw]
        raise ValueError(f"{path}: has {', '.join(present)} but not {', '.join(absent)}")
    return FeatureSet(query, gallery, *_labels(path, raw, len(query), len(gallery)))


def load_digits_split(queries_per_class: int = 20, seed: int = 0) -> FeatureSet:
    """scikit-learn's 1,797 real 8x8 digit images as a retrieval task.

    Class = identity. ``queries_per_class`` images of each digit, drawn with ``seed``,
    are the queries (camera 0); the rest are the gallery (camera 1), so the re-ID
    protocol drops nothing. Features are the 64 raw pixel intensities.

    Returns:
        :class:`FeatureSet` with ``q = 10 * queries_per_class`` and ``g = 1797 - q``.
    """
    from sklearn.datasets import load_digits

    pixels, digit = load_digits(return_X_y=True)
    return _class_split(pixels.astype(np.float32), digit.astype(np.int64), queries_per_class, seed)


# Where Debian's package `dataset-fashion-mnist` puts the gzipped IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def _read_idx(path: str) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format): big-endian header, then uint8 data."""
    import gzip

    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {data.size} bytes")
    return data.reshape(shape)


def _fashion_mnist_part(directory: str | os.PathLike, prefix: str):
    """``(images [n, 784] float32, labels [n] int64)`` of the ``prefix`` ("train"/"t10k")
    files, with a clear error naming the Debian package when they are missing."""
    directory = os.fspath(directory)
    images_path = os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz")
    labels_path = os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz")
    for path in (images_path, labels_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Fashion-MNIST not found: {path} is missing; install Debian's package "
                f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
            )
    images = _read_idx(images_path)
    return images.reshape(len(images), -1).astype(np.float32), _read_idx(labels_path).astype(
        np.int64
    )


def load_fashion_mnist(directory: str | os.PathLike = FASHION_MNIST_DIR):
    """All 70,000 Fashion-MNIST images (training set, then test set).

    Returns:
        ``(images [70000, 784] float32 raw pixel intensities, labels [70000] int64)``.

    Raises:
        FileNotFoundError: the files are missing (the message names the package).
    """
    parts = [_fashion_mnist_part(directory, prefix) for prefix in ("train", "t10k")]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_fashion_mnist_split(
    directory: str | os.PathLike = FASHION_MNIST_DIR, queries_per_class: int = 50, seed: int = 0
) -> FeatureSet:
    """Fashion-MNIST's 10,000 real 28x28 test images as a retrieval task.

    Needs Debian's package ``dataset-fashion-mnist`` (or the same four ``*.gz`` IDX files
    in ``directory``). Class = identity; ``queries_per_class`` images of each class are
    the queries (camera 0), the rest the gallery (camera 1). Features are the 784 raw
    pixel intensities.

    Raises:
        FileNotFoundError: the files are missing (the message names the package).
    """
    images, labels = _fashion_mnist_part(directory, "t10k")
    return _class_split(images, labels, queries_per_class, seed)


def _class_split(
    features: np.ndarray, classes: np.ndarray, queries_per_class: int, seed: int
) -> FeatureSet:
    """``queries_per_class`` random items of each class as queries (camera 0), the rest as
    the gallery (camera 1).

    Raises:
        ValueError: ``queries_per_class`` below 1, or not leaving every class at least
            one gallery image.
    """
    smallest = int(np.unique(classes, return_counts=True)[1].min())
    if not 1 <= queries_per_class < smallest:
        raise ValueError(
            f"queries per class must be between 1 and {smallest - 1} (the "
            f"smallest class has {smallest} images and one must stay in the "
            f"gallery), got {queries_per_class}"
        )
    rng = np.random.default_rng(seed)
    query_idx = np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(classes == c), queries_per_class, replace=False)
                for c in np.unique(classes)
            ]
        )
    )
    gallery_idx = np.setdiff1d(np.arange(len(classes)), query_idx)
    return FeatureSet(
        features[query_idx],
        features[gallery_idx],
        classes[query_idx].astype(np.int64),
        classes[gallery_idx].astype(np.int64),
        np.zeros(len(query_idx), np.int64),
        np.ones(len(gallery_idx), np.int64),
    )
