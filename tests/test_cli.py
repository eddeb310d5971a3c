"""The `triton-rerank` command, run as a real subprocess on small real files."""

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from triton_rerank.visual import picture_size


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "triton_rerank", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_demo_prints_the_table_and_draws_the_picture(tmp_path):
    picture = tmp_path / "demo.png"
    result = run("demo", "--picture", str(picture))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "200 queries, 1597 gallery images" in out
    plain = float(out.split("no re-ranking (cosine)")[1].split("%")[0])
    gnn = float(out.split("GNN re-ranking (k1=26, k2=7)")[1].split("%")[0])
    assert gnn > plain + 10  # measured: 65.0% -> 81.5%
    assert "k-reciprocal (torchreid)" in out
    with Image.open(picture) as image:
        assert image.format == "PNG" and image.size == picture_size(4, 10)


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_demo_reads_fashion_mnist_idx_files(tmp_path):
    # real images in the package's format: digits upscaled to 28x28, 3 per class as queries
    from sklearn.datasets import load_digits

    pixels, digits = load_digits(return_X_y=True)
    images = np.stack([np.kron(p.reshape(8, 8), np.ones((3, 3)))[:28, :28] for p in pixels[:300]])
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))[:, :28, :28] * 15
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", digits[:300])
    result = run("demo", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path),
                 "--queries-per-class", "3", "--picture", "")
    assert result.returncode == 0, result.stderr
    assert "30 queries, 270 gallery images" in result.stdout


def test_demo_names_the_debian_package_when_fashion_mnist_is_missing(tmp_path):
    result = run("demo", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "install Debian's package dataset-fashion-mnist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_evaluate_table_and_json(pku_path):
    table = run("evaluate", str(pku_path), "--k1", "20", "--k2", "5")
    assert table.returncode == 0, table.stderr
    assert "50 queries, 100 gallery" in table.stdout and "not run (--k-reciprocal)" in table.stdout
    result = run("evaluate", str(pku_path), "--json", "--k-reciprocal")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["queries"] == 50 and report["gallery"] == 100
    methods = [r["method"] for r in report["results"]]
    assert methods == ["no re-ranking (cosine)", "GNN re-ranking (k1=26, k2=7)",
                       "k-reciprocal (torchreid)"]
    assert all(0 <= r["mAP"] <= 1 for r in report["results"])


@pytest.mark.parametrize("make_file, args, message", [
    (None, [], "no such feature file"),
    (lambda p: np.savez(p, query_f=np.ones((2, 3))), [], "missing gallery_f"),
    (lambda p: np.savez(p, query_f=np.ones((2, 3)), gallery_f=np.ones((4, 3))), [],
     "no labels; evaluate needs query_label"),
    ("pku", ["--k1", "0"], "k1 must be >= 1, got 0"),
    ("pku", ["--lamb", "2"], r"lamb must be in [0, 1], got 2.0"),
], ids=["missing", "layout", "labels", "k1", "lamb"])
def test_evaluate_errors_exit_2_with_one_line(tmp_path, pku_path, make_file, args, message):
    path = tmp_path / "features.npz"
    if make_file == "pku":
        path = pku_path
    elif make_file is not None:
        make_file(path)
    result = run("evaluate", str(path), *args)
    assert result.returncode == 2
    assert result.stderr.startswith("triton-rerank: error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_and_usage_errors():
    result = run("--help")
    assert result.returncode == 0 and "demo" in result.stdout and "evaluate" in result.stdout
    evaluate_help = run("evaluate", "--help").stdout
    assert "GNN re-ranking:" in evaluate_help and "--k-reciprocal" in evaluate_help
    assert run("frobnicate").returncode == 2


def test_tune_reports_held_out_map_and_draws_the_heatmap(tmp_path, pku_path):
    from triton_rerank.visual import heatmap_size

    heatmap = tmp_path / "heat.png"
    result = run("tune", str(pku_path), "--k1", "10,26", "--k2", "1,3,7", "--lamb", "0,0.3",
                 "--heatmap", str(heatmap))
    assert result.returncode == 0, result.stderr
    assert "chose on 25 queries, measured on the other 25" in result.stdout
    for line in ("best: k1=", "held-out mAP, no re-ranking", "held-out mAP, defaults",
                 "held-out mAP, best"):
        assert line in result.stdout
    with Image.open(heatmap) as image:
        assert image.format == "PNG" and image.size == heatmap_size(2, 3)
    report = json.loads(run("tune", str(pku_path), "--k1", "10", "--k2", "3", "--json",
                            "--heatmap", "").stdout)
    assert set(report) == {"best", "held_out_mAP", "grid"} and len(report["grid"]) == 4 * 2


@pytest.mark.parametrize("args, message", [
    (["--k1", "0"], "--k1 values must be >= 1, got 0"),
    (["--lamb", "0.3,2"], "--lamb values must be in [0, 1]"),
    (["--k1", "5", "--k2", "7"], "no valid setting in the grid"),
], ids=["k1", "lamb", "empty-grid"])
def test_tune_errors_exit_2(pku_path, args, message):
    result = run("tune", str(pku_path), "--heatmap", "", *args)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_tune_rejects_a_malformed_list(pku_path):
    result = run("tune", str(pku_path), "--k1", "ten")
    assert result.returncode == 2 and "expected a comma-separated list" in result.stderr


def test_bench_table_json_and_plot(tmp_path):
    from triton_rerank.visual import PLOT_SIZE

    plot = tmp_path / "bench.png"
    result = run("bench", "--sizes", "150,300", "--dim", "16", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:] if line[:1] == " "]
    assert {(r[0], r[1]) for r in rows} == {(n, m) for n in ("150", "300")
                                            for m in ("ours", "reference", "k-reciprocal")}
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size == (2 * PLOT_SIZE[0], PLOT_SIZE[1])
    report = json.loads(run("bench", "--sizes", "100", "--dim", "8", "--methods", "ours",
                            "--json", "--plot", "").stdout)
    assert [(r["method"], r["n"]) for r in report] == [("ours", 100)]
    assert report[0]["seconds"] > 0 and report[0]["peak_rss_mb"] > 0


@pytest.mark.parametrize("args, message", [
    (["--methods", "ours,faiss"], "--methods must be among ours, reference, k-reciprocal"),
    (["--sizes", "1"], "--sizes must be >= 2, got 1"),
], ids=["method", "size"])
def test_bench_errors_exit_2(args, message):
    result = run("bench", "--plot", "", *args)
    assert result.returncode == 2 and message in result.stderr
