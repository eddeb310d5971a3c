"""``triton-rerank cluster``: DBSCAN pseudo-labels by each distance, scored against the
true labels.

    triton-rerank cluster FILE [--json]          a labelled feature file (as for
                                                 evaluate; query and gallery together)
    triton-rerank cluster --dataset fashion-mnist

For each method (``jaccard``: the projects' k-reciprocal Jaccard distance, ``gnn``: the
GNN re-ranked distance, ``cosine``: no re-ranking) it runs
:func:`triton_rerank.clustering.pseudo_labels` and reports the clusters, the outliers
(DBSCAN's noise), NMI and ARI against the identities (outliers count as one group, as
a training loop that drops them would not see them) and the time.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import numpy as np

from .data import FASHION_MNIST_DIR

METHODS = ("jaccard", "gnn", "cosine")


@dataclass
class ClusterRow:
    """One line of the results table."""

    method: str
    eps: float
    clusters: int
    outliers: int
    nmi: float
    ari: float
    seconds: float
    stored_pairs: int


def _features_and_labels(args) -> tuple[str, np.ndarray, np.ndarray]:
    """``(name, features [N, d] float32, identities [N] int64)`` of the input."""
    from .data import load_digits_split, load_fashion_mnist, load_features

    if args.dataset == "fashion-mnist":
        images, labels = load_fashion_mnist(args.data_dir)
        return "Fashion-MNIST (70,000 images)", images.astype(np.float32), labels
    if args.dataset == "digits":
        data = load_digits_split()
    else:
        data = load_features(args.file)
        if not data.has_labels:
            raise ValueError(f"{args.file}: no labels; cluster needs query_label and gallery_label")
    features = np.concatenate([data.query_features, data.gallery_features])
    q_pids, g_pids, _, _ = data.labels()
    name = args.file or "scikit-learn digits"
    return name, features.astype(np.float32), np.concatenate([q_pids, g_pids])


def _options(args, method: str) -> dict:
    if method == "jaccard":
        return {"k1": args.jaccard_k1, "k2": args.jaccard_k2, "backend": args.backend}
    if method == "gnn":
        return {
            "k1": args.k1,
            "k2": args.k2,
            "iterations": args.iterations,
            "lamb": args.lamb,
            "backend": args.backend,
        }
    return {}


def cluster_methods(features, identities, args) -> list[ClusterRow]:
    """Run every method of ``args.methods`` and score it."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from ..clustering.pseudo_labels import cluster

    rows = []
    for method in args.methods:
        eps = getattr(args, f"eps_{method}")
        rho = None if eps is not None else args.rho  # neither: the method's default
        start = time.perf_counter()
        found = cluster(
            features,
            method=method,
            eps=eps,
            rho=rho,
            min_samples=args.min_samples,
            **_options(args, method),
        )
        seconds = time.perf_counter() - start
        labels = found.labels
        rows.append(
            ClusterRow(
                method=method,
                eps=found.eps,
                clusters=int(labels.max() + 1),
                outliers=int((labels == -1).sum()),
                nmi=float(normalized_mutual_info_score(identities, labels)),
                ari=float(adjusted_rand_score(identities, labels)),
                seconds=seconds,
                stored_pairs=found.stored_pairs,
            )
        )
    return rows


def format_cluster_table(rows: list[ClusterRow]) -> str:
    lines = [
        f"{'method':<10}{'eps':>9}{'clusters':>10}{'outliers':>10}{'NMI':>8}{'ARI':>8}{'time':>10}"
    ]
    for r in rows:
        lines.append(
            f"{r.method:<10}{r.eps:>9.4f}{r.clusters:>10,}{r.outliers:>10,}"
            f"{r.nmi:>8.3f}{r.ari:>8.3f}{r.seconds:>9.2f}s"
        )
    return "\n".join(lines)


def _methods(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"methods must be a comma-separated list of {', '.join(METHODS)}, got {text!r}"
        )
    return list(dict.fromkeys(names))


def run_cluster(args) -> None:
    if (args.file is None) == (args.dataset is None):
        raise ValueError("cluster needs a FILE or --dataset (not both)")
    name, features, identities = _features_and_labels(args)
    rows = cluster_methods(features, identities, args)
    if args.json:
        result = {"data": name, "images": len(features), "identities": len(np.unique(identities))}
        print(json.dumps({**result, "results": [asdict(r) for r in rows]}, indent=2))
    else:
        print(f"{name}: {len(features):,} images, {len(np.unique(identities)):,} identities")
        print(format_cluster_table(rows))


def add_cluster_command(commands, add_gnn_options) -> None:
    """The ``cluster`` sub-command of ``commands`` (argparse sub-parsers)."""
    parser = commands.add_parser(
        "cluster",
        help="DBSCAN pseudo-labels by Jaccard, GNN and cosine distance, scored by NMI / ARI",
        description="Cluster labelled features with DBSCAN on the k-reciprocal Jaccard "
        "distance, the GNN re-ranked distance and the plain cosine distance (all sparse, "
        "exact); print clusters, outliers, NMI, ARI and time per method. Query and "
        "gallery of a feature file are clustered together; identities are the labels.",
    )
    parser.add_argument("file", nargs="?", metavar="FILE", help="labelled feature file (.mat/.npz)")
    parser.add_argument(
        "--dataset",
        choices=("digits", "fashion-mnist"),
        help="a built-in dataset instead of FILE (fashion-mnist: all 70,000 images of "
        "Debian's dataset-fashion-mnist)",
    )
    parser.add_argument(
        "--data-dir", default=FASHION_MNIST_DIR, metavar="DIR", help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--methods",
        type=_methods,
        default=list(METHODS),
        metavar="LIST",
        help="among jaccard, gnn, cosine (default all)",
    )
    parser.add_argument(
        "--rho",
        type=float,
        default=None,
        help="radius by the rho rule (share of the closest pairs; the projects use "
        "1.6e-3) for every method without its own --eps-*; default: eps 0.6 for "
        "jaccard, 0.1 for gnn, rho 1.6e-3 for cosine",
    )
    for method in METHODS:
        parser.add_argument(
            f"--eps-{method}", type=float, default=None, metavar="EPS", help=f"{method} radius"
        )
    parser.add_argument("--min-samples", type=int, default=4, help="DBSCAN min_samples (4)")
    parser.add_argument("--jaccard-k1", type=int, default=30, help="Jaccard k1 (default 30)")
    parser.add_argument("--jaccard-k2", type=int, default=6, help="Jaccard k2 (default 6)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_gnn_options(parser)
    parser.set_defaults(run=run_cluster)
