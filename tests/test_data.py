"""Feature-file loaders (.mat and .npz) and the bundled digits split."""

import numpy as np
import pytest
import scipy.io

from triton_rerank.data import load_digits_split, load_features


def test_loads_real_pku_sketch_mat(pku_path):
    data = load_features(pku_path)
    assert data.query_features.shape == (50, 512) and data.gallery_features.shape == (100, 512)
    assert data.query_features.dtype == np.float32
    assert data.has_labels
    q_pids, g_pids, q_cams, g_cams = data.labels()
    assert q_pids.shape == (50,) and g_pids.shape == (100,) and q_cams.shape == (50,)
    assert g_cams.shape == (100,) and q_pids.dtype == np.int64
    assert set(q_pids) <= set(g_pids)


def write_example(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = dict(query_f=rng.standard_normal((3, 4)), gallery_f=rng.standard_normal((5, 4)),
                  query_label=np.array([[1, 2, 3]]), gallery_label=np.array([[1, 2, 3, 4, 5]]),
                  query_cam=np.array([[0, 0, 1]]), gallery_cam=np.array([[1, 1, 0, 0, 1]]))
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    if str(path).endswith(".mat"):
        scipy.io.savemat(path, arrays)
    else:
        np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize("name", ["features.mat", "features.npz"])
def test_round_trip(tmp_path, name):
    arrays = write_example(tmp_path / name)
    data = load_features(tmp_path / name)
    np.testing.assert_allclose(data.query_features, arrays["query_f"], rtol=1e-6)
    np.testing.assert_array_equal(data.gallery_camids, [1, 1, 0, 0, 1])


def test_labels_are_optional(tmp_path):
    write_example(tmp_path / "f.npz", query_label=None, gallery_label=None, query_cam=None,
                  gallery_cam=None)
    data = load_features(tmp_path / "f.npz")
    assert not data.has_labels
    with pytest.raises(ValueError, match="no identity/camera labels"):
        data.labels()


@pytest.mark.parametrize("overrides, pattern", [
    ({"gallery_f": None}, r"missing gallery_f; found keys \["),
    ({"query_cam": None}, r"has query_label, gallery_label, gallery_cam but not query_cam"),
    ({"gallery_label": np.array([[1, 2]])}, r"gallery_label has 2 entries but there are 5 "
                                            r"gallery features"),
    ({"query_f": np.zeros(3)}, r"query_f must be a 2-D numeric array"),
])
def test_bad_files(tmp_path, overrides, pattern):
    write_example(tmp_path / "bad.npz", **overrides)
    with pytest.raises(ValueError, match=pattern):
        load_features(tmp_path / "bad.npz")


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such feature file"):
        load_features(tmp_path / "absent.mat")
    (tmp_path / "f.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"unsupported file type '.csv'"):
        load_features(tmp_path / "f.csv")


def test_digits_split():
    data = load_digits_split(queries_per_class=3, seed=1)
    assert data.query_features.shape == (30, 64) and data.gallery_features.shape == (1767, 64)
    assert np.bincount(data.query_pids).tolist() == [3] * 10
    assert set(data.query_camids) == {0} and set(data.gallery_camids) == {1}


def test_unit_rows_scales_and_rejects_zero_rows():
    from triton_rerank.data import unit_rows

    x = unit_rows(np.array([[3.0, 4.0], [0.0, 2.0]]))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [[0.6, 0.8], [0.0, 1.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="the query features have rows of norm 0"):
        unit_rows(np.zeros((2, 3)), "the query features")


def test_load_fashion_mnist_reads_train_then_test(tmp_path):
    from tests.test_cli import write_idx
    from triton_rerank.data import load_fashion_mnist

    rng = np.random.default_rng(0)
    parts = {"train": (rng.integers(0, 256, (6, 28, 28)), np.arange(6) % 10),
             "t10k": (rng.integers(0, 256, (4, 28, 28)), np.arange(4) + 3)}
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
