"""A sharded graph on disk: one graph file per shard plus a manifest.

Each shard file has the format, version and integrity checks of the single-host graph
file (:mod:`triton_rerank.database.graph_file`, members ``SHARD_MEMBERS``): its rows are
the shard's nodes, its column ids global positions. ``sharded_graph.json`` lists the
files in shard order with their offsets. :func:`open_sharded_graph` validates every file
and what only the whole set can show: the shards tile ``0 .. database_size - 1`` in
order, share the parameters, and each node's reverse list holds every top-k2 list that
names it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..database.graph_file import GraphFileError, read_graph_shard_file

MANIFEST = "sharded_graph.json"


def shard_file_name(shard: int, count: int) -> str:
    return f"graph-shard-{shard:04d}-of-{count:04d}.npz"


@dataclass(frozen=True)
class ShardedGraph:
    """Where a sharded graph lies and what it was built with.

    Attributes:
        folder: the folder holding the manifest and the shard files.
        files: the shard files, in shard order.
        offsets: ``[T + 1]`` shard boundaries in global positions.
        k1, k2, iterations, row_budget: the graph's parameters.
    """

    folder: Path
    files: tuple[Path, ...]
    offsets: tuple[int, ...]
    k1: int
    k2: int
    iterations: int
    row_budget: int

    @property
    def size(self) -> int:
        return self.offsets[-1]

    def write_manifest(self) -> None:
        manifest = {
            "files": [f.name for f in self.files],
            "offsets": list(self.offsets),
            "k1": self.k1,
            "k2": self.k2,
            "iterations": self.iterations,
            "row_budget": self.row_budget,
        }
        (self.folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def open_sharded_graph(folder, *, validate: bool = True) -> ShardedGraph:
    """The sharded graph in ``folder`` (its manifest), every shard file validated when
    ``validate`` (each with ``read_graph_shard_file``, then the set together).

    Raises:
        FileNotFoundError: no manifest or a missing shard file.
        GraphFileError: a damaged file, or files that do not form one graph.
    """
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    graph = ShardedGraph(
        folder,
        tuple(folder / name for name in manifest["files"]),
        tuple(int(o) for o in manifest["offsets"]),
        int(manifest["k1"]),
        int(manifest["k2"]),
        int(manifest["iterations"]),
        int(manifest["row_budget"]),
    )
    if validate:
        check_shard_set(graph)
    return graph


def check_shard_set(graph: ShardedGraph) -> None:
    """Validate every shard file and the set (see the module doc)."""
    lists_naming = np.zeros(graph.size, dtype=np.int64)
    halves = np.zeros((2, max(graph.iterations, 0)), dtype=np.int64)
    reverse_counts = []
    for t, path in enumerate(graph.files):
        m = read_graph_shard_file(path)
        g = m["vectors"].shape[0]
        expected = {
            "shard_index": t,
            "shard_count": len(graph.files),
            "shard_offset": graph.offsets[t],
            "database_size": graph.size,
            "k1": graph.k1,
            "k2": graph.k2,
            "iterations": graph.iterations,
            "row_budget": graph.row_budget,
        }
        for name, value in expected.items():
            if int(m[name]) != value:
                raise GraphFileError(
                    path, f"member {name!r} is {int(m[name])}, the set needs {value}"
                )
        if g != graph.offsets[t + 1] - graph.offsets[t]:
            raise GraphFileError(path, f"holds {g} rows, the manifest says otherwise")
        own = graph.offsets[t] + np.arange(g, dtype=np.int64)
        idx = m["knn_indices"][:, : graph.k2]
        w_idx = np.where(idx >= 0, idx, own[:, None])  # as top_k2_weights
        lists_naming += np.bincount(w_idx.ravel(), minlength=graph.size)
        reverse_counts.append(np.diff(m["rev_indptr"]))
        indptr = m["m_indptr"]
        halves[:, : indptr.shape[0]] += [
            indptr[:, g] - indptr[:, 0],
            indptr[:, 2 * g] - indptr[:, g],
        ]
    if halves[0].tolist() != halves[1].tolist():
        raise GraphFileError(
            graph.folder,
            "the shards' A_r rows and A_r.T rows hold different numbers of entries",
        )
    if not np.array_equal(np.concatenate(reverse_counts), lists_naming):
        raise GraphFileError(
            graph.folder,
            "the shards' reverse lists do not match their top-k2 lists: row n must list "
            "every node whose top-k2 holds n",
        )
