"""The `triton-rerank` command, run as a real subprocess (and in-process through
``main``) on small real files."""

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import test_data as bad
from tests.test_tuning import single_shot_features
from triton_rerank.app.cli import main
from triton_rerank.app.data import load_digits_split
from triton_rerank.app.visual import picture_size

# the installed console script next to this interpreter (python -m triton_rerank if absent)
SCRIPT = Path(sys.executable).with_name("triton-rerank")
COMMAND = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "triton_rerank"]


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "triton_rerank", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def run_main(argv, capsys):
    """``main(argv)`` in this process: ``(exit status, stdout, stderr)``."""
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def save_features(path, data, **overrides):
    """A FeatureSet as an .npz of the pytorch_result keys (``overrides`` replace arrays)."""
    arrays = dict(
        query_f=data.query_features,
        gallery_f=data.gallery_features,
        query_label=data.query_pids,
        gallery_label=data.gallery_pids,
        query_cam=data.query_camids,
        gallery_cam=data.gallery_camids,
    )
    arrays.update(overrides)
    np.savez(path, **arrays)


def digits_file(path):
    """Real labelled features: the bundled digits, 5 queries per class (50 + 1747)."""
    save_features(path, load_digits_split(queries_per_class=5))


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
    result = run(
        "demo",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(tmp_path),
        "--queries-per-class",
        "3",
        "--picture",
        "",
    )
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
    assert methods == [
        "no re-ranking (cosine)",
        "GNN re-ranking (k1=26, k2=7)",
        "k-reciprocal (torchreid)",
    ]
    assert all(0 <= r["mAP"] <= 1 for r in report["results"])


@pytest.mark.parametrize(
    "make_file, args, message",
    [
        (None, [], "no such feature file"),
        (lambda p: np.savez(p, query_f=np.ones((2, 3))), [], "missing gallery_f"),
        (
            lambda p: np.savez(p, query_f=np.ones((2, 3)), gallery_f=np.ones((4, 3))),
            [],
            "no labels; evaluate needs query_label",
        ),
        ("pku", ["--k1", "0"], "k1 must be >= 1, got 0"),
        ("pku", ["--lamb", "2"], r"lamb must be in [0, 1], got 2.0"),
    ],
    ids=["missing", "layout", "labels", "k1", "lamb"],
)
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
    # PKU-Sketch is single-shot-like (a sketch query, two photos per identity): every grid
    # point loses to no re-ranking on the tune half (20.8% without, 18.1% at best)
    from triton_rerank.app.visual import heatmap_size

    heatmap = tmp_path / "heat.png"
    result = run(
        "tune",
        str(pku_path),
        "--k1",
        "10,26",
        "--k2",
        "1,3,7",
        "--lamb",
        "0,0.3",
        "--heatmap",
        str(heatmap),
    )
    assert result.returncode == 0, result.stderr
    assert "chose on 25 queries, measured on the other 25" in result.stdout
    assert re.search(
        r"best: no re-ranking -- re-ranking lowers mAP on this data \(tune half: "
        r"20\.8% without, 1\d\.\d% with the best grid setting k1=\d+ k2=\d ",
        result.stdout,
    ), result.stdout
    for line in (
        "held-out mAP, no re-ranking  22.6%",
        "held-out mAP, defaults",
        "held-out mAP, best           22.6% (no re-ranking)",
    ):
        assert line in result.stdout
    with Image.open(heatmap) as image:
        assert image.format == "PNG" and image.size == heatmap_size(2, 3)
    report = json.loads(
        run("tune", str(pku_path), "--k1", "10", "--k2", "3", "--json", "--heatmap", "").stdout
    )
    assert set(report) == {"best", "held_out_mAP", "grid", "no_rerank_tune_mAP", "best_grid"}
    assert report["best"] == {"rerank": False} and len(report["grid"]) == 4 * 2
    assert report["held_out_mAP"]["best"] == report["held_out_mAP"]["no re-ranking"]
    assert set(report["best_grid"]) == {"k1", "k2", "lamb", "iterations"}


def test_tune_chooses_re_ranking_where_it_helps(tmp_path, capsys):
    digits_file(tmp_path / "digits.npz")
    argv = [
        "tune",
        str(tmp_path / "digits.npz"),
        "--k1",
        "10,26",
        "--k2",
        "1,7",
        "--lamb",
        "0,0.3",
        "--iterations",
        "2",
        "--heatmap",
        "",
    ]
    status, out, err = run_main(argv, capsys)
    assert status == 0, err
    assert re.search(
        r"best: k1=\d+ k2=\d+ lamb=0\.\d iterations=2 \(tune half: \d+\.\d% mAP, "
        r"\d+\.\d% without re-ranking\)",
        out,
    ), out
    assert "(no re-ranking)" not in out
    status, out, err = run_main(argv + ["--json"], capsys)
    report = json.loads(out)
    assert report["best"] == {"rerank": True, **report["best_grid"]}
    assert report["held_out_mAP"]["best"] > report["held_out_mAP"]["no re-ranking"]


def test_tune_says_when_no_re_ranking_is_best(tmp_path, capsys):
    # one gallery match per query, and neighbours of neighbours mislead: re-ranking loses
    from triton_rerank.app.visual import heatmap_size

    save_features(tmp_path / "single.npz", single_shot_features())
    argv = [
        "tune",
        str(tmp_path / "single.npz"),
        "--k1",
        "10,20",
        "--k2",
        "1,3",
        "--lamb",
        "0,0.5,0.9",
        "--iterations",
        "1,2",
    ]
    status, out, err = run_main(argv + ["--heatmap", str(tmp_path / "heat.png")], capsys)
    assert status == 0, err
    assert re.search(
        r"best: no re-ranking -- re-ranking lowers mAP on this data \(tune half: "
        r"100\.0% without, \d\.\d% with the best grid setting k1=\d+ k2=\d "
        r"lamb=0\.\d iterations=\d\)\n",
        out,
    ), out
    assert "held-out mAP, no re-ranking  100.0%" in out
    assert "held-out mAP, best           100.0% (no re-ranking)" in out
    with Image.open(tmp_path / "heat.png") as image:
        assert image.size == heatmap_size(2, 2)
    status, out, err = run_main(argv + ["--heatmap", "", "--json"], capsys)
    report = json.loads(out)
    assert report["best"] == {"rerank": False} and report["no_rerank_tune_mAP"] == 1.0
    assert report["held_out_mAP"]["best"] == 1.0 and len(report["grid"]) == 2 * 2 * 3 * 2


def test_evaluate_maps_string_labels_like_integers(tmp_path, capsys):
    data = load_digits_split(queries_per_class=5)
    save_features(tmp_path / "ints.npz", data)
    save_features(
        tmp_path / "strings.npz",
        data,
        query_label=np.char.zfill(data.query_pids.astype(str), 4),
        gallery_label=np.char.zfill(data.gallery_pids.astype(str), 4),
        query_cam=np.full(len(data.query_pids), "cam-a"),
        gallery_cam=np.full(len(data.gallery_pids), "cam-b"),
    )
    reports = []
    for name in ("ints.npz", "strings.npz"):
        status, out, err = run_main(["evaluate", str(tmp_path / name), "--json"], capsys)
        assert status == 0, err
        reports.append([(r["method"], r["mAP"]) for r in json.loads(out)["results"][:2]])
    assert reports[0] == reports[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--k1", "0"], "--k1 values must be >= 1, got 0"),
        (["--lamb", "0.3,2"], "--lamb values must be in [0, 1]"),
        (["--k1", "5", "--k2", "7"], "no valid setting in the grid"),
    ],
    ids=["k1", "lamb", "empty-grid"],
)
def test_tune_errors_exit_2(pku_path, args, message):
    result = run("tune", str(pku_path), "--heatmap", "", *args)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_tune_rejects_a_malformed_list(pku_path):
    result = run("tune", str(pku_path), "--k1", "ten")
    assert result.returncode == 2 and "expected a comma-separated list" in result.stderr


def test_bench_table_json_and_plot(tmp_path):
    from triton_rerank.app.visual import PLOT_SIZE

    plot = tmp_path / "bench.png"
    result = run("bench", "--sizes", "150,300", "--dim", "16", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:] if line[:1] == " "]
    assert {(r[0], r[1]) for r in rows} == {
        (n, m) for n in ("150", "300") for m in ("ours", "reference", "k-reciprocal")
    }
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size == (2 * PLOT_SIZE[0], PLOT_SIZE[1])
    report = json.loads(
        run(
            "bench", "--sizes", "100", "--dim", "8", "--methods", "ours", "--json", "--plot", ""
        ).stdout
    )
    assert [(r["method"], r["n"]) for r in report] == [("ours", 100)]
    assert report[0]["seconds"] > 0 and report[0]["peak_rss_mb"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "ours,faiss"], "--methods must be among ours, reference, k-reciprocal"),
        (["--sizes", "1"], "--sizes must be >= 26 (every method uses k1 = 26 neighbours), got 1"),
    ],
    ids=["method", "size"],
)
def test_bench_errors_exit_2(args, message):
    result = run("bench", "--plot", "", *args)
    assert result.returncode == 2 and message in result.stderr


def labelled(**overrides):
    """Make the real digits file with ``overrides`` replacing arrays."""

    def make(path):
        data = load_digits_split(queries_per_class=5)
        save_features(
            path, data, **{k: v(data) if callable(v) else v for k, v in overrides.items()}
        )

    return make


def nan_feature_rows(data):
    x = data.query_features.copy()
    x[[7, 12], 3] = np.nan
    return x


def truncated(make):
    return lambda path: (make(path), bad.cut_in_half(path))


# id: (file name, how to make it (None: no file), arguments with {file}, the message after
# "triton-rerank: error: " as a regular expression with {file})
USER_ERRORS = {
    # files
    "missing-file": ("f.npz", None, ["evaluate"], r"{file}: no such feature file$"),
    "empty-mat": (
        "f.mat",
        lambda p: p.write_bytes(b""),
        ["evaluate"],
        r"{file}: the file is empty \(0 bytes\)$",
    ),
    "truncated-mat": (
        "f.mat",
        truncated(bad.write_example),
        ["evaluate"],
        r"{file}: corrupt or truncated \.mat file \(the variable at byte \d+ has",
    ),
    "truncated-npz": (
        "f.npz",
        truncated(digits_file),
        ["tune"],
        r"{file}: damaged or truncated \.npz archive \(zipfile\.BadZipFile: ",
    ),
    "garbage-npz": (
        "f.npz",
        bad.garbage,
        ["evaluate"],
        r"{file}: not an \.npz archive \(it does not start with a zip header\)$",
    ),
    "npy-renamed-npz": (
        "f.npz",
        bad.npy_renamed,
        ["evaluate"],
        r"{file}: is a \.npy file \(a single array\), not an \.npz archive",
    ),
    "missing-key": (
        "f.npz",
        bad.with_array(gallery_f=None),
        ["evaluate"],
        r"{file}: missing gallery_f; found keys \['gallery_cam', ",
    ),
    "no-labels": (
        "f.npz",
        bad.with_array(query_label=None, gallery_label=None, query_cam=None, gallery_cam=None),
        ["tune"],
        r"{file}: no labels; tune needs query_label, gallery_label, query_cam and",
    ),
    "complex-features": (
        "f.npz",
        labelled(gallery_f=lambda d: d.gallery_features * 1j),
        ["evaluate"],
        r"{file}: gallery_f: must hold numbers, got complex "
        r"numbers \(dtype complex64\); features must be real",
    ),
    "object-labels": (
        "f.npz",
        bad.with_array(gallery_cam=np.array([1, "a", 2, 3, None], dtype=object)),
        ["evaluate"],
        r"{file}: gallery_cam: holds Python objects \(dtype obj",
    ),
    "nan-features": (
        "f.npz",
        labelled(query_f=nan_feature_rows),
        ["evaluate"],
        r"{file}: query_f: 2 NaN values in 2 rows, the first is row 7; features "
        r"must be finite$",
    ),
    "dim-mismatch": (
        "f.npz",
        labelled(gallery_f=lambda d: d.gallery_features[:, :63]),
        ["evaluate"],
        r"{file}: gallery_f: has dimension 63 but query_f has "
        r"dimension 64 \(shapes \(1747, 63\) and \(50, 64\)\)",
    ),
    "empty-query-set": (
        "f.npz",
        labelled(query_f=np.zeros((0, 64)), query_label=np.zeros(0), query_cam=np.zeros(0)),
        ["evaluate"],
        r"{file}: query_f: has no rows \(shape \(0, 64\)\): the query set is "
        r"empty$",
    ),
    "zero-dim": (
        "f.npz",
        labelled(query_f=np.zeros((50, 0)), gallery_f=np.zeros((1747, 0))),
        ["evaluate"],
        r"{file}: query_f: has feature dimension 0 \(shape \(50, 0\)\)$",
    ),
    "strings-vs-numbers": (
        "f.npz",
        labelled(query_label=lambda d: d.query_pids.astype(str)),
        ["evaluate"],
        r"{file}: gallery_label: holds numbers but "
        r"query_label holds strings; store both as integers",
    ),
    "nan-label": (
        "f.npz",
        labelled(gallery_label=lambda d: np.where(np.arange(1747) == 9, np.nan, d.gallery_pids)),
        ["evaluate"],
        r"{file}: gallery_label: entry 9 is nan, NaN; labels must be integers",
    ),
    "no-valid-match": (
        "f.npz",
        labelled(
            gallery_cam=lambda d: np.zeros(1747, np.int64),
            query_cam=lambda d: np.zeros(50, np.int64),
        ),
        ["evaluate"],
        r"{file}: query_label: no query has a correct match in the "
        r"gallery .* so mAP is undefined$",
    ),
    "one-query": (
        "f.npz",
        labelled(
            query_f=lambda d: d.query_features[:1],
            query_label=lambda d: d.query_pids[:1],
            query_cam=lambda d: d.query_camids[:1],
        ),
        ["tune"],
        r"{file}: query_f: has 1 row; tune needs at least 2 queries",
    ),
    # evaluate options (checked before any work)
    "evaluate-k1": (
        "f.npz",
        digits_file,
        ["evaluate", "{file}", "--k1", "0"],
        r"--k1 must be >= 1, got 0$",
    ),
    "evaluate-k1-too-large": (
        "f.npz",
        digits_file,
        ["evaluate", "{file}", "--k1", "5000"],
        r"--k1=5000 is larger than 1797, the number of images",
    ),
    "evaluate-k2": (
        "f.npz",
        digits_file,
        ["evaluate", "{file}", "--k2", "27"],
        r"--k2 must be between 1 and --k1=26, got 27$",
    ),
    "evaluate-iterations": (
        "f.npz",
        digits_file,
        ["evaluate", "{file}", "--iterations", "-1"],
        r"--iterations must be >= 0, got -1$",
    ),
    "evaluate-lamb-nan": (
        "f.npz",
        digits_file,
        ["evaluate", "{file}", "--lamb", "nan"],
        r"--lamb must be in \[0, 1\], got nan$",
    ),
    "demo-picture-directory": (
        None,
        None,
        ["demo", "--picture", "{tmp}/absent/demo.png"],
        r"--picture {tmp}/absent/demo\.png: no such directory "
        r"{tmp}/absent$",
    ),
    "demo-queries-per-class": (
        None,
        None,
        ["demo", "--dataset", "fashion-mnist", "--queries-per-class", "0", "--picture", ""],
        r"--queries-per-class must be >= 1, got 0$",
    ),
    # tune options
    "tune-seed": (
        "f.npz",
        digits_file,
        ["tune", "{file}", "--seed", "-1"],
        r"--seed must be >= 0, got -1$",
    ),
    "tune-empty-grid": (
        "f.npz",
        digits_file,
        ["tune", "{file}", "--k1", "5", "--k2", "7"],
        r"--k1, --k2: no valid setting in the grid \(need k2 <= k1 <= 1797, ",
    ),
    "tune-heatmap-directory": (
        "f.npz",
        digits_file,
        ["tune", "{file}", "--heatmap", "{tmp}"],
        r"--heatmap {tmp}: is a directory$",
    ),
    "tune-malformed-list": (
        "f.npz",
        digits_file,
        ["tune", "{file}", "--k1", "ten"],
        r"argument --k1: expected a comma-separated list, got 'ten' \(see "
        r"'triton-rerank tune --help'\)$",
    ),
    # bench options
    "bench-dim": (None, None, ["bench", "--dim", "0"], r"--dim must be >= 1, got 0$"),
    "bench-sizes": (
        None,
        None,
        ["bench", "--sizes", "1000,20"],
        r"--sizes must be >= 26 \(every method uses k1 = 26 neighbours\), got 20$",
    ),
    "bench-max-baseline": (
        None,
        None,
        ["bench", "--max-baseline", "-1"],
        r"--max-baseline must be >= 0, got -1$",
    ),
    "bench-methods": (
        None,
        None,
        ["bench", "--methods", "ours,faiss"],
        r"--methods must be among ours, reference, k-reciprocal; got ours,faiss$",
    ),
    "bench-plot-directory": (
        None,
        None,
        ["bench", "--plot", "{tmp}/absent/p.png"],
        r"--plot {tmp}/absent/p\.png: no such directory {tmp}/absent$",
    ),
}


def user_error_argv(tmp_path, name, make, args):
    """Make the case's file in ``tmp_path``; its argv and the values of the placeholders."""
    path = tmp_path / (name or "unused")
    if make is not None:
        make(path)
    if "{file}" not in args and name is not None:
        args = [args[0], "{file}", *args[1:]]
    fill = {"file": str(path), "tmp": str(tmp_path)}
    return [a.format(**fill) for a in args], {k: re.escape(v) for k, v in fill.items()}


@pytest.mark.parametrize("name, make, args, message", USER_ERRORS.values(), ids=USER_ERRORS.keys())
def test_user_errors_print_one_line_and_exit_2(tmp_path, capsys, name, make, args, message):
    argv, fill = user_error_argv(tmp_path, name, make, args)
    status, out, err = run_main(argv, capsys)
    assert status == 2, (out, err)
    assert err.startswith("triton-rerank: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and out == ""
    assert re.search(message.format(**fill), err[len("triton-rerank: error: ") : -1]), err


@pytest.mark.parametrize(
    "name, make, args, message",
    [
        ("f.mat", truncated(bad.write_example), ["evaluate"], "corrupt or truncated .mat file"),
        # scipy.io.loadmat segfaults on these two; the loader refuses them first
        (
            "f.mat",
            bad.mat_with_unknown_data_type,
            ["evaluate"],
            "corrupt or truncated .mat file (query_f: unknown data type code 99)",
        ),
        (
            "f.mat",
            bad.mat_with_dimensionless_char,
            ["tune"],
            "corrupt or truncated .mat file (a matrix with 0 dimensions)",
        ),
        ("f.npz", bad.garbage, ["evaluate", "{file}", "--json"], "not an .npz archive"),
        (None, None, ["bench", "--dim", "0"], "--dim must be >= 1, got 0"),
    ],
    ids=[
        "truncated-mat",
        "mat-unknown-data-type",
        "mat-char-without-dimensions",
        "garbage-npz",
        "bench-dim",
    ],
)
def test_user_errors_through_the_installed_command(tmp_path, name, make, args, message):
    argv, _ = user_error_argv(tmp_path, name, make, args)
    result = subprocess.run([*COMMAND, *argv], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("triton-rerank: error: ") and message in lines[0]
    assert result.stdout == ""
