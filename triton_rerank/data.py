"""Feature-file loaders and the embedded default dataset.

``load_features`` reads the ``pytorch_result.mat`` layout that most re-ID training
code writes (``query_f``, ``gallery_f`` as ``[n, d]`` float arrays; ``query_label``,
``gallery_label``, ``query_cam``, ``gallery_cam`` as ``1 x n`` arrays), and ``.npz``
files with the same keys. ``load_digits_split`` builds a small real retrieval task
from scikit-learn's bundled 8x8 digits (no download).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

FEATURE_KEYS = ("query_f", "gallery_f")
LABEL_KEYS = ("query_label", "gallery_label", "query_cam", "gallery_cam")


@dataclass(frozen=True)
class FeatureSet:
    """Query and gallery features with optional identity and camera labels.

    Attributes:
        query_features: ``[q, d]`` float32.
        gallery_features: ``[g, d]`` float32.
        query_pids, gallery_pids: ``[q]`` / ``[g]`` int64 identities, or None.
        query_camids, gallery_camids: ``[q]`` / ``[g]`` int64 cameras, or None.
    """

    query_features: np.ndarray
    gallery_features: np.ndarray
    query_pids: np.ndarray | None = None
    gallery_pids: np.ndarray | None = None
    query_camids: np.ndarray | None = None
    gallery_camids: np.ndarray | None = None

    @property
    def has_labels(self) -> bool:
        return all(x is not None for x in (self.query_pids, self.gallery_pids,
                                           self.query_camids, self.gallery_camids))

    def labels(self):
        """``(q_pids, g_pids, q_camids, g_camids)``, the argument order of ``evaluate``."""
        if not self.has_labels:
            raise ValueError("this feature set has no identity/camera labels")
        return self.query_pids, self.gallery_pids, self.query_camids, self.gallery_camids


def unit_rows(features: np.ndarray, name: str = "features") -> np.ndarray:
    """``[n, d]`` features with every row scaled to L2 norm 1, as float32.

    Raises:
        ValueError: a row of norm 0 (it has no direction to compare by cosine).
    """
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"{name} have rows of norm 0, which cannot be compared by cosine")
    return (features / norms).astype(np.float32)


def _read_mat(path: str) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(path)
    except NotImplementedError as err:  # MATLAB v7.3 files are HDF5
        raise ValueError(
            f"{path}: MATLAB v7.3 (HDF5) files are not supported; save with "
            f"scipy.io.savemat or MATLAB's -v7 flag, or as .npz with the same keys"
        ) from err


def load_features(path: str | os.PathLike) -> FeatureSet:
    """Load query/gallery features (and labels when present) from ``.mat`` or ``.npz``.

    Args:
        path: a ``pytorch_result.mat``-style file or an ``.npz`` with the same keys.

    Returns:
        :class:`FeatureSet`; labels are None when the file has none of them.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown extension, missing feature keys, only some label keys,
            or arrays whose shapes do not fit together.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such feature file: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".mat":
        raw = _read_mat(path)
    elif ext == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            raw = {key: npz[key] for key in npz.files}
    else:
        raise ValueError(f"{path}: unsupported file type {ext!r}; expected .mat or .npz")

    missing = [key for key in FEATURE_KEYS if key not in raw]
    if missing:
        found = sorted(k for k in raw if not k.startswith("__"))
        raise ValueError(f"{path}: missing {', '.join(missing)}; found keys {found}")
    features = []
    for key in FEATURE_KEYS:
        x = np.asarray(raw[key])
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"{path}: {key} must be a 2-D numeric array, got shape {x.shape} "
                             f"and dtype {x.dtype}")
        features.append(x.astype(np.float32, copy=False))
    query, gallery = features

    present = [key for key in LABEL_KEYS if key in raw]
    if not present:
        return FeatureSet(query, gallery)
    if len(present) != len(LABEL_KEYS):
        absent = [key for key in LABEL_KEYS if key not in raw]
        raise ValueError(f"{path}: has {', '.join(present)} but not {', '.join(absent)}")
    labels = []
    sizes = (len(query), len(gallery), len(query), len(gallery))
    for key, n in zip(LABEL_KEYS, sizes, strict=True):
        x = np.asarray(raw[key]).reshape(-1)
        if x.shape[0] != n:
            raise ValueError(f"{path}: {key} has {x.shape[0]} entries but there are {n} "
                             f"{key.split('_')[0]} features")
        labels.append(x.astype(np.int64))
    return FeatureSet(query, gallery, *labels)


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
    return _class_split(pixels.astype(np.float32), digit.astype(np.int64), queries_per_class,
                        seed)


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
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
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
                f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    images = _read_idx(images_path)
    return images.reshape(len(images), -1).astype(np.float32), \
        _read_idx(labels_path).astype(np.int64)


def load_fashion_mnist(directory: str | os.PathLike = FASHION_MNIST_DIR):
    """All 70,000 Fashion-MNIST images (training set, then test set).

    Returns:
        ``(images [70000, 784] float32 raw pixel intensities, labels [70000] int64)``.

    Raises:
        FileNotFoundError: the files are missing (the message names the package).
    """
    parts = [_fashion_mnist_part(directory, prefix) for prefix in ("train", "t10k")]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_fashion_mnist_split(directory: str | os.PathLike = FASHION_MNIST_DIR,
                             queries_per_class: int = 50, seed: int = 0) -> FeatureSet:
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


def _class_split(features: np.ndarray, classes: np.ndarray, queries_per_class: int,
                 seed: int) -> FeatureSet:
    """``queries_per_class`` random items of each class as queries (camera 0), the rest as
    the gallery (camera 1)."""
    rng = np.random.default_rng(seed)
    query_idx = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(classes == c), queries_per_class, replace=False)
        for c in np.unique(classes)]))
    gallery_idx = np.setdiff1d(np.arange(len(classes)), query_idx)
    return FeatureSet(
        features[query_idx], features[gallery_idx],
        classes[query_idx].astype(np.int64), classes[gallery_idx].astype(np.int64),
        np.zeros(len(query_idx), np.int64), np.ones(len(gallery_idx), np.int64),
    )
