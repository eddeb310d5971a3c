"""Feature-file loaders (.mat and .npz) and the bundled digits split."""

import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse

from triton_rerank.app.data import load_digits_split, load_features

REPO = Path(__file__).resolve().parents[1]


def test_loads_real_pku_sketch_mat(pku_path):
    data = load_features(pku_path)
    assert data.query_features.shape == (50, 512) and data.gallery_features.shape == (100, 512)
    assert data.query_features.dtype == np.float32
    assert data.has_labels
    q_pids, g_pids, q_cams, g_cams = data.labels()
    assert q_pids.shape == (50,) and g_pids.shape == (100,) and q_cams.shape == (50,)
    assert g_cams.shape == (100,) and q_pids.dtype == np.int64
    assert set(q_pids) <= set(g_pids)


def write_example(path, compress=False, **overrides):
    """A small valid feature file (3 queries, 5 gallery, dimension 4), with ``overrides``
    replacing arrays (None removes one); .mat or .npz by the name."""
    rng = np.random.default_rng(0)
    arrays = dict(
        query_f=rng.standard_normal((3, 4)),
        gallery_f=rng.standard_normal((5, 4)),
        query_label=np.array([[1, 2, 3]]),
        gallery_label=np.array([[1, 2, 3, 4, 5]]),
        query_cam=np.array([[0, 0, 1]]),
        gallery_cam=np.array([[1, 1, 0, 0, 1]]),
    )
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    if str(path).endswith(".mat"):
        scipy.io.savemat(path, arrays, do_compression=compress)
    else:
        (np.savez_compressed if compress else np.savez)(path, **arrays)
    return arrays


def cut_in_half(path):
    """Truncate a file to its first half, as an interrupted copy leaves it."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def garbage(path, seed=0):
    """300 random bytes that start with neither a zip nor a MATLAB header."""
    Path(path).write_bytes(b"\x01" + np.random.default_rng(seed).bytes(299))


def npy_renamed(path):
    """A single-array .npy file under the .npz name."""
    with open(path, "wb") as f:  # np.save would append .npy to the name
        np.save(f, np.ones((3, 4)))


def damaged_npz_member(path):
    """A compressed .npz whose zip directory is intact but whose query_f data is not."""
    write_example(path, compress=True)
    data = bytearray(Path(path).read_bytes())
    start = data.index(b"query_f.npy") + len("query_f.npy") + 5  # into the deflate stream
    data[start : start + 20] = bytes(b ^ 0xFF for b in data[start : start + 20])
    Path(path).write_bytes(bytes(data))


def matlab_v73(path):
    """The 128-byte header of a MATLAB v7.3 (HDF5) file."""
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116, b" ")
    Path(path).write_bytes(header + bytes(8) + b"\x00\x02IM" + bytes(384))


def mat_with_unknown_data_type(path):
    """A .mat whose query_f data element has type code 99, which crashes scipy's reader
    (segfault): the real part of a 3 x 4 double matrix is tagged (miDOUBLE=9, 96 bytes)."""
    write_example(path)
    data = bytearray(Path(path).read_bytes())
    data[data.index(struct.pack("<II", 9, 96))] = 99
    Path(path).write_bytes(bytes(data))


def mat_with_dimensionless_char(path):
    """A .mat whose query_label cellstr holds a char matrix with 0 dimensions (its
    dimensions element shortened to 2 bytes), which crashes scipy's reader (segfault)."""
    write_example(
        path,
        query_label=np.array(["a", "b", "c"], dtype=object),
        gallery_label=np.array(["a", "b", "c", "d", "e"]),
    )
    data = bytearray(Path(path).read_bytes())
    # array flags of a char matrix (class 4), then its dimensions tag (miINT32, 8 bytes)
    char_header = struct.pack("<IIII", 6, 8, 4, 0) + struct.pack("<II", 5, 8)
    at = data.index(char_header) + len(char_header) - 4
    data[at : at + 4] = struct.pack("<I", 2)
    Path(path).write_bytes(bytes(data))


def with_array(**overrides):
    """Make :func:`write_example` with ``overrides``."""
    return lambda path: write_example(path, **overrides)


def nan_at(*cells, value=np.nan, key="query_f", shape=(3, 4)):
    """Make the example with ``value`` at ``cells`` of the features ``key``."""
    x = np.random.default_rng(1).standard_normal(shape)
    for cell in cells:
        x[cell] = value
    return with_array(**{key: x})


def labels_of(**labels):
    """Make the example with these label arrays."""
    return with_array(**{k: np.asarray(v) for k, v in labels.items()})


# (file name, how to make it, the message after "<file>: ") for every user error
BAD_FILES = [
    pytest.param(
        "f.mat", lambda p: p.write_bytes(b""), r"the file is empty \(0 bytes\)", id="empty-mat"
    ),
    pytest.param(
        "f.npz", lambda p: p.write_bytes(b""), r"the file is empty \(0 bytes\)", id="empty-npz"
    ),
    pytest.param(
        "f.mat",
        lambda p: (write_example(p), cut_in_half(p)),
        r"corrupt or truncated \.mat file \(the variable at byte \d+ has",
        id="truncated-mat",
    ),
    pytest.param(
        "f.mat",
        lambda p: (write_example(p, compress=True), cut_in_half(p)),
        r"corrupt or truncated \.mat file",
        id="truncated-compressed-mat",
    ),
    pytest.param(
        "f.npz",
        lambda p: (write_example(p), cut_in_half(p)),
        r"damaged or truncated \.npz archive \(zipfile.BadZipFile",
        id="truncated-npz",
    ),
    pytest.param(
        "f.npz",
        damaged_npz_member,
        r"query_f: cannot be read, the archive is damaged \(zlib.error",
        id="damaged-npz-member",
    ),
    pytest.param(
        "f.npz",
        garbage,
        r"not an \.npz archive \(it does not start with a zip header",
        id="garbage-npz",
    ),
    pytest.param(
        "f.mat", garbage, r"not a readable \.mat file, or a damaged one", id="garbage-mat"
    ),
    pytest.param(
        "f.npz",
        npy_renamed,
        r"is a \.npy file \(a single array\), not an \.npz",
        id="npy-renamed-npz",
    ),
    pytest.param(
        "f.mat", matlab_v73, r"MATLAB v7\.3 \(HDF5\) files are not supported", id="matlab-v7.3"
    ),
    pytest.param(
        "f.npz", with_array(gallery_f=None), r"missing gallery_f; found keys \[", id="missing-key"
    ),
    pytest.param(
        "f.mat",
        with_array(gallery_f=None),
        r"missing gallery_f; found keys \['gal",
        id="missing-key-mat",
    ),
    pytest.param(
        "f.npz",
        with_array(query_cam=None),
        r"has query_label, gallery_label, gallery_cam but not query_cam",
        id="some-labels",
    ),
    pytest.param(
        "f.npz",
        with_array(query_f=np.zeros(4)),
        r"query_f: must be a 2-D \[n, d\] array, got shape \(4,\)",
        id="1-d-features",
    ),
    pytest.param(
        "f.npz",
        with_array(query_f=np.ones((3, 4)) + 1j),
        r"query_f: must hold numbers, got complex numbers \(dtype complex128\)",
        id="complex-features",
    ),
    pytest.param(
        "f.npz",
        with_array(gallery_f=np.full((5, 4), "0.5")),
        r"gallery_f: must hold numbers, got strings",
        id="string-features",
    ),
    pytest.param(
        "f.npz",
        with_array(query_label=np.array([1, "a", None], dtype=object)),
        r"query_label: holds Python objects \(dtype object\), which are not loaded",
        id="object-npz",
    ),
    pytest.param(
        "f.mat", with_array(query_f={"a": 1}), r"query_f: is a MATLAB struct", id="mat-struct"
    ),
    pytest.param(
        "f.mat",
        with_array(query_f=scipy.sparse.csr_matrix(np.eye(3, 4))),
        r"query_f: is a MATLAB sparse matrix",
        id="mat-sparse",
    ),
    pytest.param(
        "f.mat",
        with_array(query_label=np.array([1, np.ones(2), 3], dtype=object)),
        r"query_label: holds Python objects .* cell array of strings",
        id="mat-cell",
    ),
    pytest.param(
        "f.npz",
        with_array(query_f=np.zeros((0, 4)), query_label=np.zeros(0), query_cam=np.zeros(0)),
        r"query_f: has no rows \(shape \(0, 4\)\): the query set is empty",
        id="empty-query-set",
    ),
    pytest.param(
        "f.npz",
        with_array(query_f=np.zeros((3, 0)), gallery_f=np.zeros((5, 0))),
        r"query_f: has feature dimension 0 \(shape \(3, 0\)\)",
        id="zero-dim",
    ),
    pytest.param(
        "f.npz",
        with_array(gallery_f=np.ones((5, 3))),
        r"gallery_f: has dimension 3 but query_f has dimension 4",
        id="dim-mismatch",
    ),
    pytest.param(
        "f.npz",
        nan_at((1, 2), (1, 3)),
        r"query_f: 2 NaN values in 1 row, the first is row 1; features must be finite",
        id="nan-features",
    ),
    pytest.param(
        "f.npz",
        nan_at((4, 0), (2, 1), value=np.inf, key="gallery_f", shape=(5, 4)),
        r"gallery_f: 2 inf values in 2 rows, the first is row 2",
        id="inf-features",
    ),
    pytest.param(
        "f.npz",
        nan_at((2, 1), value=1e300, key="gallery_f", shape=(5, 4)),
        r"gallery_f: values beyond float32's range \(largest magnitude 1e\+300\) in "
        r"1 row, the first is row 2",
        id="float32-overflow",
    ),
    pytest.param(
        "f.npz",
        nan_at((2, slice(None)), value=0),
        r"query_f: all-zero features in 1 row, the first is row 2",
        id="zero-row",
    ),
    pytest.param(
        "f.npz",
        with_array(gallery_label=np.array([[1, 2]])),
        r"gallery_label: has 2 entries but gallery_f has 5 rows",
        id="label-length",
    ),
    pytest.param(
        "f.npz",
        with_array(gallery_cam=np.ones((5, 2))),
        r"gallery_cam: must be a vector of labels .* got shape \(5, 2\)",
        id="label-matrix",
    ),
    pytest.param(
        "f.npz",
        labels_of(query_label=[1, np.nan, 3]),
        r"query_label: entry 1 is nan, NaN",
        id="nan-label",
    ),
    pytest.param(
        "f.mat",
        labels_of(gallery_label=[[1, 2.5, 3, 4.5, 5]]),
        r"gallery_label: entry 1 is 2\.5, not a whole number \(2 entries\)",
        id="fractional-label",
    ),
    pytest.param(
        "f.npz",
        labels_of(query_cam=[0, 1j, 1]),
        r"query_cam: must hold integers or strings, got complex numbers",
        id="complex-label",
    ),
    pytest.param(
        "f.npz",
        labels_of(query_label=["0001", "0002", "0003"]),
        r"gallery_label: holds numbers but query_label holds strings",
        id="strings-vs-numbers",
    ),
]


@pytest.mark.parametrize("name, make, message", BAD_FILES)
def test_bad_files_name_the_file_the_key_and_the_problem(tmp_path, name, make, message):
    path = tmp_path / name
    make(path)
    with pytest.raises(ValueError) as caught:
        load_features(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert re.search(message, text[len(f"{path}: ") :]), text


@pytest.mark.parametrize("name", ["features.mat", "features.npz"])
def test_round_trip(tmp_path, name):
    arrays = write_example(tmp_path / name)
    data = load_features(tmp_path / name)
    np.testing.assert_allclose(data.query_features, arrays["query_f"], rtol=1e-6)
    np.testing.assert_array_equal(data.gallery_camids, [1, 1, 0, 0, 1])


def test_labels_are_optional(tmp_path):
    write_example(
        tmp_path / "f.npz", query_label=None, gallery_label=None, query_cam=None, gallery_cam=None
    )
    data = load_features(tmp_path / "f.npz")
    assert not data.has_labels
    with pytest.raises(ValueError, match="no identity/camera labels"):
        data.labels()


def test_missing_file_directory_and_unknown_extension(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.mat: no such feature file"):
        load_features(tmp_path / "absent.mat")
    (tmp_path / "f.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"unsupported file type '.csv'"):
        load_features(tmp_path / "f.csv")
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(ValueError, match=r"folder\.npz: not a regular file"):
        load_features(tmp_path / "folder.npz")


@pytest.mark.parametrize(
    "name, cellstr",
    [("f.npz", False), ("f.mat", False), ("f.mat", True)],
    ids=["npz", "mat-char", "mat-cellstr"],
)
def test_string_labels_map_to_integers_jointly(tmp_path, name, cellstr):
    as_labels = (lambda v: np.array(v, dtype=object)) if cellstr else np.array
    write_example(
        tmp_path / name,
        query_label=as_labels(["0003", "0001", "0002"]),
        gallery_label=as_labels(["0002", "0001", "0003 ", "0004", "0005"]),
        query_cam=as_labels(["c2", "c2", "c1"]),
        gallery_cam=as_labels(["c1", "c3", "c1", "c2", "c1"]),
    )
    data = load_features(tmp_path / name)
    # sorted order over query and gallery together; surrounding spaces do not count
    np.testing.assert_array_equal(data.query_pids, [2, 0, 1])
    np.testing.assert_array_equal(data.gallery_pids, [1, 0, 2, 3, 4])
    np.testing.assert_array_equal(data.query_camids, [1, 1, 0])
    np.testing.assert_array_equal(data.gallery_camids, [0, 2, 0, 1, 0])
    assert data.query_pids.dtype == np.int64 and data.gallery_camids.dtype == np.int64


def test_whole_number_float_labels_and_integer_features_are_accepted(tmp_path):
    write_example(
        tmp_path / "f.mat",
        query_label=np.array([[1.0, 2.0, -1.0]]),
        gallery_f=np.arange(1, 21, dtype=np.int16).reshape(5, 4),
    )
    data = load_features(tmp_path / "f.mat")
    np.testing.assert_array_equal(data.query_pids, [1, 2, -1])
    assert data.gallery_features.dtype == np.float32 and data.gallery_features[4, 3] == 20


@pytest.mark.parametrize(
    "make",
    [mat_with_unknown_data_type, mat_with_dimensionless_char],
    ids=["unknown-data-type", "char-without-dimensions"],
)
def test_mat_files_that_crash_scipy_give_a_value_error(tmp_path, make):
    # in a child process: without the check, scipy.io.loadmat segfaults on these files
    path = tmp_path / "f.mat"
    make(path)
    code = (
        "import sys\nfrom triton_rerank.app.data import load_features\ntry:\n"
        "    load_features(sys.argv[1])\nexcept ValueError as err:\n    print(err)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, f"exit status {result.returncode}: {result.stderr[-500:]}"
    assert result.stdout.startswith(f"{path}: corrupt or truncated .mat file (")


def damaged_copies(path, n_random, seed):
    """Every 1/40th truncation of the file at ``path`` and ``n_random`` copies with 1 to 5
    bytes overwritten (random values, or small ones that look like type codes and sizes)."""
    blob = path.read_bytes()
    rng = np.random.default_rng(seed)
    yield from (blob[:i] for i in range(0, len(blob), max(1, len(blob) // 40)))
    for _ in range(n_random):
        copy = bytearray(blob)
        for i in rng.integers(0, len(blob), rng.integers(1, 6)):
            copy[i] = rng.integers(256) if rng.random() < 0.5 else rng.integers(20)
        yield bytes(copy)


def load_damaged_copies(directory: str, n_random: int = 150) -> None:
    """Load damaged copies of valid files; print what is not a ValueError (run in a child
    process, so that a crash is seen as its exit status)."""
    directory = Path(directory)
    for name, compress in (
        ("v5.mat", False),
        ("v5z.mat", True),
        ("v.npz", False),
        ("vz.npz", True),
    ):
        source = directory / name
        write_example(
            source,
            compress=compress,
            query_label=np.array(["a", "b", "c"], dtype=object),
            gallery_label=np.array(["a", "b", "c", "d", "e"]),
        )
        target = directory / f"damaged{source.suffix}"
        for i, data in enumerate(damaged_copies(source, n_random, seed=len(name))):
            target.write_bytes(data)
            try:
                load_features(target)
            except ValueError as err:
                assert str(err).startswith(f"{target}: ") and "\n" not in str(err)
            except Exception as err:  # noqa: BLE001 - reporting it is the point
                print(f"{name} copy {i}: {type(err).__name__}: {err}")


def test_damaged_files_give_one_line_value_errors(tmp_path):
    code = (
        f"from tests.test_data import load_damaged_copies\nload_damaged_copies({str(tmp_path)!r})"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert result.returncode == 0 and result.stdout == "", (
        f"exit status {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    )


def test_digits_split():
    data = load_digits_split(queries_per_class=3, seed=1)
    assert data.query_features.shape == (30, 64) and data.gallery_features.shape == (1767, 64)
    assert np.bincount(data.query_pids).tolist() == [3] * 10
    assert set(data.query_camids) == {0} and set(data.gallery_camids) == {1}
    for bad_count in (0, 174):  # the smallest class (digit 8) has 174 images
        message = rf"between 1 and 173 \(the smallest class has 174 images .*got {bad_count}$"
        with pytest.raises(ValueError, match=message):
            load_digits_split(queries_per_class=bad_count)


def test_unit_rows_scales_and_rejects_zero_rows():
    from triton_rerank.app.data import unit_rows

    x = unit_rows(np.array([[3.0, 4.0], [0.0, 2.0]]))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [[0.6, 0.8], [0.0, 1.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="the query features have rows of norm 0"):
        unit_rows(np.zeros((2, 3)), "the query features")
    # float32 squares of these overflow / underflow; the rows still come out unit
    big_and_tiny = unit_rows(np.array([[3e30, 4e30], [3e-30, 4e-30]], dtype=np.float32))
    np.testing.assert_allclose(big_and_tiny, [[0.6, 0.8], [0.6, 0.8]], rtol=1e-6)
    with pytest.raises(ValueError, match=r"x have NaN or inf in 1 row, the first is row 1"):
        unit_rows(np.array([[1.0, 0.0], [np.nan, 1.0]]), "x")


def test_load_fashion_mnist_reads_train_then_test(tmp_path):
    from tests.test_cli import write_idx
    from triton_rerank.app.data import load_fashion_mnist

    rng = np.random.default_rng(0)
    parts = {
        "train": (rng.integers(0, 256, (6, 28, 28)), np.arange(6) % 10),
        "t10k": (rng.integers(0, 256, (4, 28, 28)), np.arange(4) + 3),
    }
    for prefix, (images, labels) in parts.items():
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    images, labels = load_fashion_mnist(tmp_path)
    assert images.shape == (10, 784) and images.dtype == np.float32
    np.testing.assert_array_equal(images[6:], parts["t10k"][0].reshape(4, -1))
    np.testing.assert_array_equal(labels, np.concatenate([parts["train"][1], parts["t10k"][1]]))
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)
