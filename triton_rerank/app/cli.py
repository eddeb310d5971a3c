"""The ``triton-rerank`` command.

    triton-rerank demo                     re-rank the bundled digits, print a table, draw
                                           rerank_demo.png
    triton-rerank demo --dataset fashion-mnist
    triton-rerank evaluate FILE [--json]   the same table for a pytorch_result.mat / .npz
    triton-rerank tune FILE                choose k1/k2/lamb/iterations on half the queries,
                                           report mAP on the other half, draw a heat-map
    triton-rerank bench                    time ours vs dense reference vs k-reciprocal
                                           over N, plot time and memory (log-log)
    triton-rerank cluster FILE [--json]    DBSCAN pseudo-labels by Jaccard, GNN and cosine
                                           distance: clusters, outliers, NMI, ARI, time

User errors (missing, damaged or malformed files, missing labels, out-of-range
options) print one line ``triton-rerank: error: <file>: <key>: <problem>`` (the file
and the key where they apply; for options, the option) to stderr and exit with
status 2, without a traceback. Everything is checked before any work starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np

from .cluster_command import add_cluster_command
from .data import FASHION_MNIST_DIR, unit_rows

EXIT_USAGE = 2


@dataclass
class Row:
    """One line of the results table."""

    method: str
    seconds: float | None
    mAP: float | None = None
    rank1: float | None = None
    rank5: float | None = None
    mINP: float | None = None
    note: str = ""


def _timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def _row(method: str, scores: np.ndarray, seconds: float, labels) -> Row:
    from ..evaluation.metrics import evaluate

    m = evaluate(scores, *labels)
    return Row(
        method, seconds, m.mAP, float(m.cmc[0]), float(m.cmc[min(4, len(m.cmc) - 1)]), m.mINP
    )


def _torchreid_available() -> bool:
    try:
        with warnings.catch_warnings():  # torchreid warns that its Cython evaluator is absent
            warnings.simplefilter("ignore")
            import torchreid  # noqa: F401
    except ImportError:
        return False
    return True


def _k_reciprocal_scores(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """torchreid's k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3) as similarities."""
    import torch

    from ..integrations.torchreid import k_reciprocal_distances

    return -k_reciprocal_distances(torch.from_numpy(query), torch.from_numpy(gallery))


def _check_gnn_options(*, k1, k2, lamb, iterations, n_images: int) -> None:
    """One-line errors, naming the option, for GNN settings out of range."""
    if k1 < 1:
        raise ValueError(f"--k1 must be >= 1, got {k1}")
    if k1 > n_images:
        raise ValueError(
            f"--k1={k1} is larger than {n_images}, the number of images (query + gallery)"
        )
    if not 1 <= k2 <= k1:
        raise ValueError(f"--k2 must be between 1 and --k1={k1}, got {k2}")
    if iterations < 0:
        raise ValueError(f"--iterations must be >= 0, got {iterations}")
    if not 0 <= lamb <= 1:
        raise ValueError(f"--lamb must be in [0, 1], got {lamb}")


def _warm_up(dim: int) -> None:
    """Compile the CPU kernels outside the timings, on a small random problem."""
    from ..evaluation.metrics import evaluate
    from ..rerank import gnn_rerank

    x = unit_rows(np.random.default_rng(0).standard_normal((32, dim)))
    query, gallery = x[:2], x[2:]
    evaluate(
        query @ gallery.T,
        np.arange(2),
        np.arange(30) % 2,
        np.zeros(2, np.int64),
        np.ones(30, np.int64),
    )
    gnn_rerank(query, gallery, k1=3, k2=2)  # k2 > 1: every kernel


def compare_methods(
    data, *, k1: int, k2: int, lamb: float, iterations: int, backend: str, k_reciprocal: bool
) -> tuple[list[Row], dict]:
    """Evaluate no re-ranking, GNN re-ranking and (optionally) k-reciprocal on ``data``.

    The options, the backend and the features are checked before anything runs.

    Returns:
        The table rows, and the ``[q, g]`` scores by method name (for pictures).

    Raises:
        ValueError: no labels, an option out of range (the message names it), a backend
            that cannot run, or features that cannot be compared by cosine.
    """
    from tqdm import tqdm

    from ..rerank import gnn_rerank, resolve_backend

    labels = data.labels()
    n_images = len(data.query_features) + len(data.gallery_features)
    _check_gnn_options(k1=k1, k2=k2, lamb=lamb, iterations=iterations, n_images=n_images)
    resolve_backend(backend)
    query = unit_rows(data.query_features, "the query features")
    gallery = unit_rows(data.gallery_features, "the gallery features")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"the query features have dimension {query.shape[1]} but the gallery "
            f"features have dimension {gallery.shape[1]}"
        )
    _warm_up(query.shape[1])

    gnn_name = f"GNN re-ranking (k1={k1}, k2={k2})"
    k_reciprocal_name = "k-reciprocal (torchreid)"
    methods = {
        "plain": ("no re-ranking (cosine)", lambda: query @ gallery.T),
        "gnn": (
            gnn_name,
            lambda: gnn_rerank(
                query, gallery, k1=k1, k2=k2, lamb=lamb, iterations=iterations, backend=backend
            ),
        ),
    }
    skipped = None
    if not k_reciprocal:
        skipped = "not run (--k-reciprocal)"
    elif not _torchreid_available():
        skipped = "skipped: torchreid is not installed"
    else:
        methods["k-reciprocal"] = (k_reciprocal_name, lambda: _k_reciprocal_scores(query, gallery))
    rows, scores = [], {}
    # a bar per method (off when stderr is not a terminal): k-reciprocal can take minutes
    for key, (name, run) in tqdm(
        methods.items(), desc="methods", unit="method", disable=None, file=sys.stderr, leave=False
    ):
        scores[key], seconds = _timed(run)
        rows.append(_row(name, scores[key], seconds, labels))
    if skipped:
        rows.append(Row(k_reciprocal_name, None, note=skipped))
    return rows, scores


def format_table(rows: list[Row]) -> str:
    lines = [f"{'method':<30}{'mAP':>8}{'Rank-1':>9}{'Rank-5':>9}{'mINP':>8}{'time':>10}"]
    for r in rows:
        if r.mAP is None:
            lines.append(f"{r.method:<30}  {r.note}")
        else:
            lines.append(
                f"{r.method:<30}{100 * r.mAP:>7.1f}%{100 * r.rank1:>8.1f}%"
                f"{100 * r.rank5:>8.1f}%{100 * r.mINP:>7.1f}%{r.seconds:>9.3f}s"
            )
    return "\n".join(lines)


def _draw_picture(
    data, scores: dict, image_shape, path: str, n_queries: int = 4, k: int = 10
) -> None:
    """The queries whose top-k gained the most correct matches, before vs after GNN."""
    import torch

    from ..topk import topk_rows
    from .visual import ranking_picture

    k = min(k, data.gallery_features.shape[0])
    before = topk_rows(torch.from_numpy(scores["plain"]), k)[1].numpy()
    after = topk_rows(torch.from_numpy(scores["gnn"]), k)[1].numpy()
    q_pids, g_pids = data.query_pids, data.gallery_pids
    gain = (g_pids[after] == q_pids[:, None]).sum(1) - (g_pids[before] == q_pids[:, None]).sum(1)
    shown = np.argsort(-gain, kind="stable")[:n_queries]
    ranking_picture(
        data.query_features[shown].reshape(-1, *image_shape),
        data.gallery_features.reshape(-1, *image_shape),
        before[shown],
        after[shown],
        q_pids[shown],
        g_pids,
        path,
    )


def _demo(args) -> None:
    from .data import load_digits_split, load_fashion_mnist_split

    _check_output(args.picture, "--picture")
    if args.dataset == "digits":
        data, shape, what = load_digits_split(), (8, 8), "sklearn digits (8x8)"
    else:
        if args.queries_per_class < 1:
            raise ValueError(f"--queries-per-class must be >= 1, got {args.queries_per_class}")
        data = load_fashion_mnist_split(args.data_dir, queries_per_class=args.queries_per_class)
        shape, what = (28, 28), "Fashion-MNIST test (28x28)"
    rows, scores = compare_methods(
        data,
        k1=args.k1,
        k2=args.k2,
        lamb=args.lamb,
        iterations=args.iterations,
        backend=args.backend,
        k_reciprocal=True,
    )
    print(
        f"{what}: {len(data.query_features)} queries, {len(data.gallery_features)} gallery "
        f"images, raw pixels as features, class = identity"
    )
    print(format_table(rows))
    if args.picture:
        _draw_picture(data, scores, shape, args.picture)
        print(f"picture: {args.picture} (top-10 before/after for the 4 queries GNN helped most)")


def _check_output(path: str, option: str) -> None:
    """A one-line error now, rather than after the work, for an output file that cannot
    be written ('' means no file)."""
    if not path:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{option} {path}: is a directory")
    if not os.path.isdir(directory):
        raise ValueError(f"{option} {path}: no such directory {directory}")
    if not os.access(directory, os.W_OK):
        raise ValueError(f"{option} {path}: the directory {directory} is not writable")


def _valid_queries(q_pids, g_pids, q_cams, g_cams) -> np.ndarray:
    """Which queries have a correct match under the re-ID protocol: a gallery item with
    the same identity and another camera."""
    pairs = np.unique(np.stack([g_pids, g_cams], axis=1), axis=0)  # sorted by identity
    pids, first, n_cams = np.unique(pairs[:, 0], return_index=True, return_counts=True)
    at = np.minimum(np.searchsorted(pids, q_pids), len(pids) - 1)
    known = pids[at] == q_pids
    return known & ((n_cams[at] > 1) | (pairs[first[at], 1] != q_cams))


def _load_labelled(path: str, command: str):
    """A feature file that has identity and camera labels and at least one query with a
    correct match (else a one-line error)."""
    from .data import load_features

    data = load_features(path)
    if not data.has_labels:
        raise ValueError(
            f"{path}: no labels; {command} needs query_label, gallery_label, "
            "query_cam and gallery_cam"
        )
    if not _valid_queries(*data.labels()).any():
        raise ValueError(
            f"{path}: query_label: no query has a correct match in the gallery "
            "(an entry of gallery_label with its identity and a gallery_cam other "
            "than its query_cam), so mAP is undefined"
        )
    return data


def _evaluate(args) -> None:
    data = _load_labelled(args.file, "evaluate")
    rows, _ = compare_methods(
        data,
        k1=args.k1,
        k2=args.k2,
        lamb=args.lamb,
        iterations=args.iterations,
        backend=args.backend,
        k_reciprocal=args.k_reciprocal,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "file": args.file,
                    "queries": len(data.query_features),
                    "gallery": len(data.gallery_features),
                    "results": [vars(r) for r in rows],
                },
                indent=2,
            )
        )
    else:
        print(
            f"{args.file}: {len(data.query_features)} queries, {len(data.gallery_features)} gallery"
        )
        print(format_table(rows))


def _number_list(kind):
    """argparse type: a comma-separated list of ``kind``."""

    def parse(text: str):
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list, got {text!r}"
            ) from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values

    return parse


def _unique(values: list) -> list:
    """``values`` without repeats, in their order."""
    return list(dict.fromkeys(values))


def _tune(args) -> None:
    from tqdm import tqdm

    from ..evaluation.tuning import tune
    from .visual import heatmap_picture

    for name, values, low in (
        ("k1", args.k1, 1),
        ("k2", args.k2, 1),
        ("iterations", args.iterations, 0),
    ):
        if min(values) < low:
            raise ValueError(f"--{name} values must be >= {low}, got {min(values)}")
    if not all(0 <= v <= 1 for v in args.lamb):
        raise ValueError(f"--lamb values must be in [0, 1], got {args.lamb}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    _check_output(args.heatmap, "--heatmap")
    k1s, k2s, lambs, iterations = (
        _unique(v) for v in (args.k1, args.k2, args.lamb, args.iterations)
    )
    data = _load_labelled(args.file, "tune")
    n_query, n_images = (
        len(data.query_features),
        len(data.query_features) + len(data.gallery_features),
    )
    if n_query < 2:
        raise ValueError(
            f"{args.file}: query_f: has {n_query} row; tune needs at least 2 "
            "queries (they are split into two halves)"
        )
    if not any(k2 <= k1 <= n_images for k1 in k1s for k2 in k2s):
        raise ValueError(
            f"--k1, --k2: no valid setting in the grid (need k2 <= k1 <= "
            f"{n_images}, the number of images in {args.file})"
        )
    try:
        result = tune(
            data,
            k1s=k1s,
            k2s=k2s,
            lambs=lambs,
            iterations_list=iterations,
            seed=args.seed,
            progress=lambda it: tqdm(
                it, desc="settings", unit="setting", disable=None, file=sys.stderr
            ),
        )
    except ValueError as err:  # a half of the queries without a correct match
        raise ValueError(f"{args.file}: {err} (try another --seed)") from err
    grid_best, no_rerank = result.best_grid, result.no_rerank_tune_mAP
    if args.heatmap:
        title = f"tune-half mAP (%), lamb={grid_best['lamb']}, iterations={grid_best['iterations']}"
        if not result.best["rerank"]:
            title += f"\nno re-ranking: {100 * no_rerank:.1f} (chosen)"
        heatmap_picture(
            result.heatmap, [f"k1={v}" for v in k1s], [f"k2={v}" for v in k2s], title, args.heatmap
        )
    if args.json:
        print(
            json.dumps(
                {
                    "best": result.best,
                    "held_out_mAP": result.held_out,
                    "grid": result.grid,
                    "no_rerank_tune_mAP": no_rerank,
                    "best_grid": grid_best,
                },
                indent=2,
            )
        )
        return
    print(
        f"{args.file}: chose on {n_query // 2} queries, measured on the other "
        f"{n_query - n_query // 2}"
    )
    grid_text = " ".join(f"{k}={grid_best[k]}" for k in ("k1", "k2", "lamb", "iterations"))
    grid_map = max(r["tune_mAP"] for r in result.grid)
    if result.best["rerank"]:
        print(
            f"best: {grid_text} (tune half: {100 * grid_map:.1f}% mAP, "
            f"{100 * no_rerank:.1f}% without re-ranking)"
        )
    else:
        print(
            f"best: no re-ranking -- re-ranking lowers mAP on this data (tune half: "
            f"{100 * no_rerank:.1f}% without, {100 * grid_map:.1f}% with the best grid "
            f"setting {grid_text})"
        )
    for name, value in result.held_out.items():
        shown = "n/a (k1=26 exceeds the images)" if value is None else f"{100 * value:.1f}%"
        if name == "best" and not result.best["rerank"]:
            shown += " (no re-ranking)"
        print(f"held-out mAP, {name:<14} {shown}")
    if args.heatmap:
        print(f"heat-map: {args.heatmap}")


def _bench(args) -> None:
    from tqdm import tqdm

    from .benchmarking import METHODS, MIN_IMAGES, measure
    from .visual import loglog_picture

    if min(args.sizes) < MIN_IMAGES:
        raise ValueError(
            f"--sizes must be >= {MIN_IMAGES} (every method uses k1 = 26 "
            f"neighbours), got {min(args.sizes)}"
        )
    if args.dim < 1:
        raise ValueError(f"--dim must be >= 1, got {args.dim}")
    if args.max_baseline < 0:
        raise ValueError(f"--max-baseline must be >= 0, got {args.max_baseline}")
    if not set(args.methods) <= set(METHODS):
        raise ValueError(
            f"--methods must be among {', '.join(METHODS)}; got {','.join(args.methods)}"
        )
    _check_output(args.plot, "--plot")
    args.sizes, args.methods = sorted(set(args.sizes)), _unique(args.methods)
    if "k-reciprocal" in args.methods and not _torchreid_available():
        print("k-reciprocal skipped: torchreid is not installed", file=sys.stderr)
        args.methods = [m for m in args.methods if m != "k-reciprocal"]
    if not args.methods:
        raise ValueError("--methods: nothing left to run (torchreid is not installed)")
    runs = [
        (m, n) for n in args.sizes for m in args.methods if m == "ours" or n <= args.max_baseline
    ]
    results = [
        measure(m, n, args.dim)
        for m, n in tqdm(runs, desc="runs", unit="run", disable=None, file=sys.stderr)
    ]
    if args.json:
        print(json.dumps([vars(r) for r in results], indent=2))
    else:
        print(f"{'N':>8}  {'method':<14}{'time (s)':>10}{'peak RSS (MB)':>15}")
        for r in results:
            print(f"{r.n:>8}  {r.method:<14}{r.seconds:>10.3f}{r.peak_rss_mb:>15.0f}")
    if args.plot:
        by_method = {m: [r for r in results if r.method == m] for m in args.methods}
        time_series = {
            m: ([r.n for r in rs], [r.seconds for r in rs]) for m, rs in by_method.items() if rs
        }
        memory_series = {
            m: ([r.n for r in rs], [r.peak_rss_mb for r in rs]) for m, rs in by_method.items() if rs
        }
        loglog_picture(
            [
                (time_series, "N (query + gallery)", "time (s)"),
                (memory_series, "N (query + gallery)", "peak RSS (MB)"),
            ],
            args.plot,
        )
        if not args.json:
            print(f"plot: {args.plot}")


def _add_gnn_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("GNN re-ranking")
    group.add_argument("--k1", type=int, default=26, help="kNN graph size (default 26)")
    group.add_argument(
        "--k2",
        type=int,
        default=7,
        help="neighbours aggregated per round (default 7; 1 skips propagation)",
    )
    group.add_argument(
        "--lamb", type=float, default=0.3, help="weight of the original similarity (default 0.3)"
    )
    group.add_argument("--iterations", type=int, default=2, help="propagation rounds (default 2)")
    group.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "cpu", "torch", "triton"),
        help="compute backend (default auto; torch: deprecated name of cpu)",
    )


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, in the same form as the other errors."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"triton-rerank: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="triton-rerank",
        description="Fast GNN re-ranking for image retrieval: demos and evaluation.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="re-rank a bundled real dataset and show the gain",
        description="Re-rank a real image dataset (class = identity) and print mAP / Rank-k "
        "/ time for no re-ranking, GNN re-ranking and k-reciprocal; draw the "
        "top-10 before and after.",
    )
    demo.add_argument(
        "--dataset",
        choices=("digits", "fashion-mnist"),
        default="digits",
        help="digits: scikit-learn's 1,797 8x8 digits (default); fashion-mnist: "
        "10,000 test images from Debian's dataset-fashion-mnist package",
    )
    demo.add_argument(
        "--data-dir",
        default=FASHION_MNIST_DIR,
        metavar="DIR",
        help=f"Fashion-MNIST's IDX files (default {FASHION_MNIST_DIR})",
    )
    demo.add_argument(
        "--queries-per-class",
        type=int,
        default=50,
        metavar="N",
        help="Fashion-MNIST queries per class (default 50)",
    )
    demo.add_argument(
        "--picture",
        default="rerank_demo.png",
        metavar="PNG",
        help="where to draw the ranking picture ('' for none; default rerank_demo.png)",
    )
    _add_gnn_options(demo)
    demo.set_defaults(run=_demo)

    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate re-ranking on a labelled feature file",
        description="mAP / Rank-1 / Rank-5 / mINP / time without and with GNN re-ranking "
        "for a pytorch_result.mat or .npz feature file (query_f, gallery_f, "
        "query_label, gallery_label, query_cam, gallery_cam).",
    )
    evaluate.add_argument("file", metavar="FILE", help="feature file (.mat or .npz)")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument(
        "--k-reciprocal",
        action="store_true",
        help="also run torchreid's k-reciprocal re-ranking (slow on large galleries)",
    )
    _add_gnn_options(evaluate)
    evaluate.set_defaults(run=_evaluate)

    tune = commands.add_parser(
        "tune",
        help="grid-search k1, k2, lamb, iterations on a labelled feature file",
        description="Choose GNN settings on one random half of the queries and report mAP "
        "on the other half (so the gain is not over-fitted), with a heat-map of "
        "mAP over k1 x k2.",
    )
    tune.add_argument("file", metavar="FILE", help="feature file (.mat or .npz) with labels")
    tune.add_argument(
        "--k1",
        type=_number_list(int),
        default=[10, 15, 20, 26, 40, 60],
        metavar="LIST",
        help="k1 values (default 10,15,20,26,40,60)",
    )
    tune.add_argument(
        "--k2",
        type=_number_list(int),
        default=[1, 3, 5, 7, 10],
        metavar="LIST",
        help="k2 values (default 1,3,5,7,10)",
    )
    tune.add_argument(
        "--lamb",
        type=_number_list(float),
        default=[0.0, 0.1, 0.3, 0.5],
        metavar="LIST",
        help="lamb values (default 0,0.1,0.3,0.5)",
    )
    tune.add_argument(
        "--iterations",
        type=_number_list(int),
        default=[1, 2],
        metavar="LIST",
        help="iterations values (default 1,2)",
    )
    tune.add_argument("--seed", type=int, default=0, help="query split seed (default 0)")
    tune.add_argument(
        "--heatmap",
        default="tune_heatmap.png",
        metavar="PNG",
        help="where to draw the heat-map ('' for none; default tune_heatmap.png)",
    )
    tune.add_argument("--json", action="store_true", help="print JSON instead of text")
    tune.set_defaults(run=_tune)

    bench = commands.add_parser(
        "bench",
        help="time ours vs the dense reference vs k-reciprocal over a range of N",
        description="Market-1501-shaped synthetic features at each N; every (method, N) runs "
        "in its own process; prints time and peak RSS and plots both against N "
        "(log-log).",
    )
    bench.add_argument(
        "--sizes",
        type=_number_list(int),
        default=[1000, 2000, 4000, 8000],
        metavar="LIST",
        help="N values (default 1000,2000,4000,8000)",
    )
    bench.add_argument(
        "--methods",
        type=_number_list(str),
        default=["ours", "reference", "k-reciprocal"],
        metavar="LIST",
        help="among ours, reference, k-reciprocal (default all)",
    )
    bench.add_argument("--dim", type=int, default=256, help="feature dimension (default 256)")
    bench.add_argument(
        "--max-baseline",
        type=int,
        default=8000,
        metavar="N",
        help="largest N for the dense reference and k-reciprocal (default 8000)",
    )
    bench.add_argument(
        "--plot",
        default="rerank_bench.png",
        metavar="PNG",
        help="where to draw the plot ('' for none; default rerank_bench.png)",
    )
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.set_defaults(run=_bench)

    add_cluster_command(commands, _add_gnn_options)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status
    (0, or 2 after printing a one-line error)."""
    from .benchmarking import MeasurementError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (FileNotFoundError, ValueError, TypeError, MeasurementError) as err:
        message = " ".join(str(err).splitlines())
        print(f"triton-rerank: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
