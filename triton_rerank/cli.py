"""The ``triton-rerank`` command.

    triton-rerank demo                     re-rank the bundled digits, print a table, draw
                                           rerank_demo.png
    triton-rerank demo --dataset fashion-mnist
    triton-rerank evaluate FILE [--json]   the same table for a pytorch_result.mat / .npz
    triton-rerank tune FILE                choose k1/k2/lamb/iterations on half the queries,
                                           report mAP on the other half, draw a heat-map
    triton-rerank bench                    time ours vs dense reference vs k-reciprocal
                                           over N, plot time and memory (log-log)

User errors (missing files, wrong layouts, missing labels, bad options) print one
line ``triton-rerank: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np

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
    from .metrics import evaluate

    m = evaluate(scores, *labels)
    return Row(method, seconds, m.mAP, float(m.cmc[0]), float(m.cmc[min(4, len(m.cmc) - 1)]),
               m.mINP)


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

    from .integrations.torchreid import torchreid_module

    distance = torchreid_module("metrics").compute_distance_matrix
    re_ranking = torchreid_module("utils.rerank").re_ranking
    tq, tg = torch.from_numpy(query), torch.from_numpy(gallery)
    return -re_ranking(distance(tq, tg).numpy(), distance(tq, tq).numpy(),
                       distance(tg, tg).numpy())


def compare_methods(data, *, k1: int, k2: int, lamb: float, iterations: int, backend: str,
                    k_reciprocal: bool) -> tuple[list[Row], dict]:
    """Evaluate no re-ranking, GNN re-ranking and (optionally) k-reciprocal on ``data``.

    Returns:
        The table rows, and the ``[q, g]`` scores by method name (for pictures).
    """
    from tqdm import tqdm

    from .metrics import evaluate
    from .rerank import gnn_rerank

    labels = data.labels()
    query = unit_rows(data.query_features, "the query features")
    gallery = unit_rows(data.gallery_features, "the gallery features")
    # compile the CPU kernels outside the timings
    evaluate(query[:2] @ gallery.T, labels[0][:2], labels[1], labels[2][:2], labels[3])
    warm_q, warm_g = query[:2], gallery[:30]
    warm_k1 = min(3, len(warm_q) + len(warm_g))
    gnn_rerank(warm_q, warm_g, k1=warm_k1, k2=min(2, warm_k1))  # k2 > 1: every kernel

    gnn_name = f"GNN re-ranking (k1={k1}, k2={k2})"
    k_reciprocal_name = "k-reciprocal (torchreid)"
    methods = {
        "plain": ("no re-ranking (cosine)", lambda: query @ gallery.T),
        "gnn": (gnn_name, lambda: gnn_rerank(query, gallery, k1=k1, k2=k2, lamb=lamb,
                                             iterations=iterations, backend=backend)),
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
    for key, (name, run) in tqdm(methods.items(), desc="methods", unit="method", disable=None,
                                 file=sys.stderr, leave=False):
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
            lines.append(f"{r.method:<30}{100 * r.mAP:>7.1f}%{100 * r.rank1:>8.1f}%"
                         f"{100 * r.rank5:>8.1f}%{100 * r.mINP:>7.1f}%{r.seconds:>9.3f}s")
    return "\n".join(lines)


def _draw_picture(data, scores: dict, image_shape, path: str, n_queries: int = 4,
                  k: int = 10) -> None:
    """The queries whose top-k gained the most correct matches, before vs after GNN."""
    import torch

    from .topk import topk_rows
    from .visual import ranking_picture

    k = min(k, data.gallery_features.shape[0])
    before = topk_rows(torch.from_numpy(scores["plain"]), k)[1].numpy()
    after = topk_rows(torch.from_numpy(scores["gnn"]), k)[1].numpy()
    q_pids, g_pids = data.query_pids, data.gallery_pids
    gain = ((g_pids[after] == q_pids[:, None]).sum(1) - (g_pids[before] == q_pids[:, None]).sum(1))
    shown = np.argsort(-gain, kind="stable")[:n_queries]
    ranking_picture(data.query_features[shown].reshape(-1, *image_shape),
                    data.gallery_features.reshape(-1, *image_shape), before[shown],
                    after[shown], q_pids[shown], g_pids, path)


def _demo(args) -> None:
    from .data import load_digits_split, load_fashion_mnist_split

    if args.dataset == "digits":
        data, shape, what = load_digits_split(), (8, 8), "sklearn digits (8x8)"
    else:
        data = load_fashion_mnist_split(args.data_dir, queries_per_class=args.queries_per_class)
        shape, what = (28, 28), "Fashion-MNIST test (28x28)"
    rows, scores = compare_methods(data, k1=args.k1, k2=args.k2, lamb=args.lamb,
                                   iterations=args.iterations, backend=args.backend,
                                   k_reciprocal=True)
    print(f"{what}: {len(data.query_features)} queries, {len(data.gallery_features)} gallery "
          f"images, raw pixels as features, class = identity")
    print(format_table(rows))
    if args.picture:
        _draw_picture(data, scores, shape, args.picture)
        print(f"picture: {args.picture} (top-10 before/after for the 4 queries GNN helped most)")


def _load_labelled(path: str, command: str):
    """A feature file that has identity and camera labels (else a one-line error)."""
    from .data import load_features

    data = load_features(path)
    if not data.has_labels:
        raise ValueError(f"{path}: no labels; {command} needs query_label, gallery_label, "
                         "query_cam and gallery_cam")
    return data


def _evaluate(args) -> None:
    data = _load_labelled(args.file, "evaluate")
    rows, _ = compare_methods(data, k1=args.k1, k2=args.k2, lamb=args.lamb,
                              iterations=args.iterations, backend=args.backend,
                              k_reciprocal=args.k_reciprocal)
    if args.json:
        print(json.dumps({"file": args.file, "queries": len(data.query_features),
                          "gallery": len(data.gallery_features),
                          "results": [vars(r) for r in rows]}, indent=2))
    else:
        print(f"{args.file}: {len(data.query_features)} queries, "
              f"{len(data.gallery_features)} gallery")
        print(format_table(rows))


def _number_list(kind):
    """argparse type: a comma-separated list of ``kind``."""
    def parse(text: str):
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values
    return parse


def _tune(args) -> None:
    from tqdm import tqdm

    from .tuning import tune
    from .visual import heatmap_picture

    data = _load_labelled(args.file, "tune")
    for name, values, low in (("k1", args.k1, 1), ("k2", args.k2, 1), ("iterations",
                                                                        args.iterations, 0)):
        if min(values) < low:
            raise ValueError(f"--{name} values must be >= {low}, got {min(values)}")
    if not all(0 <= v <= 1 for v in args.lamb):
        raise ValueError(f"--lamb values must be in [0, 1], got {args.lamb}")
    result = tune(data, k1s=args.k1, k2s=args.k2, lambs=args.lamb,
                  iterations_list=args.iterations, seed=args.seed,
                  progress=lambda it: tqdm(it, desc="settings", unit="setting", disable=None,
                                           file=sys.stderr))
    if args.heatmap:
        best = result.best
        heatmap_picture(result.heatmap, [f"k1={v}" for v in args.k1],
                        [f"k2={v}" for v in args.k2],
                        f"tune-half mAP (%), lamb={best['lamb']}, "
                        f"iterations={best['iterations']}", args.heatmap)
    if args.json:
        print(json.dumps({"best": result.best, "held_out_mAP": result.held_out,
                          "grid": result.grid}, indent=2))
        return
    best = result.best
    print(f"{args.file}: chose on {len(data.query_features) // 2} queries, measured on the "
          f"other {len(data.query_features) - len(data.query_features) // 2}")
    print(f"best: k1={best['k1']} k2={best['k2']} lamb={best['lamb']} "
          f"iterations={best['iterations']}")
    for name, value in result.held_out.items():
        shown = "n/a (k1=26 exceeds the images)" if value is None else f"{100 * value:.1f}%"
        print(f"held-out mAP, {name:<14} {shown}")
    if args.heatmap:
        print(f"heat-map: {args.heatmap}")


def _bench(args) -> None:
    from tqdm import tqdm

    from .benchmarking import measure
    from .visual import loglog_picture

    if min(args.sizes) < 2:
        raise ValueError(f"--sizes must be >= 2, got {min(args.sizes)}")
    if not set(args.methods) <= {"ours", "reference", "k-reciprocal"}:
        raise ValueError(f"--methods must be among ours, reference, k-reciprocal; got "
                         f"{','.join(args.methods)}")
    if "k-reciprocal" in args.methods and not _torchreid_available():
        print("k-reciprocal skipped: torchreid is not installed", file=sys.stderr)
        args.methods = [m for m in args.methods if m != "k-reciprocal"]
    runs = [(m, n) for n in sorted(args.sizes) for m in args.methods
            if m == "ours" or n <= args.max_baseline]
    results = [measure(m, n, args.dim) for m, n in tqdm(runs, desc="runs", unit="run",
                                                           disable=None, file=sys.stderr)]
    if args.json:
        print(json.dumps([vars(r) for r in results], indent=2))
    else:
        print(f"{'N':>8}  {'method':<14}{'time (s)':>10}{'peak RSS (MB)':>15}")
        for r in results:
            print(f"{r.n:>8}  {r.method:<14}{r.seconds:>10.3f}{r.peak_rss_mb:>15.0f}")
    if args.plot:
        by_method = {m: [r for r in results if r.method == m] for m in args.methods}
        time_series = {m: ([r.n for r in rs], [r.seconds for r in rs])
                       for m, rs in by_method.items() if rs}
        memory_series = {m: ([r.n for r in rs], [r.peak_rss_mb for r in rs])
                         for m, rs in by_method.items() if rs}
        loglog_picture([(time_series, "N (query + gallery)", "time (s)"),
                        (memory_series, "N (query + gallery)", "peak RSS (MB)")], args.plot)
        if not args.json:
            print(f"plot: {args.plot}")


def _add_gnn_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("GNN re-ranking")
    group.add_argument("--k1", type=int, default=26, help="kNN graph size (default 26)")
    group.add_argument("--k2", type=int, default=7,
                       help="neighbours aggregated per round (default 7; 1 skips propagation)")
    group.add_argument("--lamb", type=float, default=0.3,
                       help="weight of the original similarity (default 0.3)")
    group.add_argument("--iterations", type=int, default=2, help="propagation rounds (default 2)")
    group.add_argument("--backend", default="auto", choices=("auto", "torch", "triton"),
                       help="compute backend (default auto)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triton-rerank",
        description="Fast GNN re-ranking for image retrieval: demos and evaluation.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="re-rank a bundled real dataset and show the gain",
        description="Re-rank a real image dataset (class = identity) and print mAP / Rank-k "
                    "/ time for no re-ranking, GNN re-ranking and k-reciprocal; draw the "
                    "top-10 before and after.")
    demo.add_argument("--dataset", choices=("digits", "fashion-mnist"), default="digits",
                      help="digits: scikit-learn's 1,797 8x8 digits (default); fashion-mnist: "
                           "10,000 test images from Debian's dataset-fashion-mnist package")
    demo.add_argument("--data-dir", default=FASHION_MNIST_DIR, metavar="DIR",
                      help=f"Fashion-MNIST's IDX files (default {FASHION_MNIST_DIR})")
    demo.add_argument("--queries-per-class", type=int, default=50, metavar="N",
                      help="Fashion-MNIST queries per class (default 50)")
    demo.add_argument("--picture", default="rerank_demo.png", metavar="PNG",
                      help="where to draw the ranking picture ('' for none; default "
                           "rerank_demo.png)")
    _add_gnn_options(demo)
    demo.set_defaults(run=_demo)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate re-ranking on a labelled feature file",
        description="mAP / Rank-1 / Rank-5 / mINP / time without and with GNN re-ranking "
                    "for a pytorch_result.mat or .npz feature file (query_f, gallery_f, "
                    "query_label, gallery_label, query_cam, gallery_cam).")
    evaluate.add_argument("file", metavar="FILE", help="feature file (.mat or .npz)")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument("--k-reciprocal", action="store_true",
                          help="also run torchreid's k-reciprocal re-ranking (slow on large "
                               "galleries)")
    _add_gnn_options(evaluate)
    evaluate.set_defaults(run=_evaluate)

    tune = commands.add_parser(
        "tune", help="grid-search k1, k2, lamb, iterations on a labelled feature file",
        description="Choose GNN settings on one random half of the queries and report mAP "
                    "on the other half (so the gain is not over-fitted), with a heat-map of "
                    "mAP over k1 x k2.")
    tune.add_argument("file", metavar="FILE", help="feature file (.mat or .npz) with labels")
    tune.add_argument("--k1", type=_number_list(int), default=[10, 15, 20, 26, 40, 60],
                      metavar="LIST", help="k1 values (default 10,15,20,26,40,60)")
    tune.add_argument("--k2", type=_number_list(int), default=[1, 3, 5, 7, 10],
                      metavar="LIST", help="k2 values (default 1,3,5,7,10)")
    tune.add_argument("--lamb", type=_number_list(float), default=[0.0, 0.1, 0.3, 0.5],
                      metavar="LIST", help="lamb values (default 0,0.1,0.3,0.5)")
    tune.add_argument("--iterations", type=_number_list(int), default=[1, 2],
                      metavar="LIST", help="iterations values (default 1,2)")
    tune.add_argument("--seed", type=int, default=0, help="query split seed (default 0)")
    tune.add_argument("--heatmap", default="tune_heatmap.png", metavar="PNG",
                      help="where to draw the heat-map ('' for none; default tune_heatmap.png)")
    tune.add_argument("--json", action="store_true", help="print JSON instead of text")
    tune.set_defaults(run=_tune)

    bench = commands.add_parser(
        "bench", help="time ours vs the dense reference vs k-reciprocal over a range of N",
        description="Market-1501-shaped synthetic features at each N; every (method, N) runs "
                    "in its own process; prints time and peak RSS and plots both against N "
                    "(log-log).")
    bench.add_argument("--sizes", type=_number_list(int), default=[1000, 2000, 4000, 8000],
                       metavar="LIST", help="N values (default 1000,2000,4000,8000)")
    bench.add_argument("--methods", type=_number_list(str),
                       default=["ours", "reference", "k-reciprocal"], metavar="LIST",
                       help="among ours, reference, k-reciprocal (default all)")
    bench.add_argument("--dim", type=int, default=256, help="feature dimension (default 256)")
    bench.add_argument("--max-baseline", type=int, default=8000, metavar="N",
                       help="largest N for the dense reference and k-reciprocal (default 8000)")
    bench.add_argument("--plot", default="rerank_bench.png", metavar="PNG",
                       help="where to draw the plot ('' for none; default rerank_bench.png)")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"triton-rerank: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
