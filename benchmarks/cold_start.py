"""Cold start of the CPU path: the first calls of a fresh process with an empty kernel cache.

Each repeat runs a child process with ``NUMBA_CACHE_DIR`` set to a new empty
directory. numba takes the first writable location of ``NUMBA_CACHE_DIR`` (when set),
the in-tree ``__pycache__`` and the user's cache, so the in-tree ``__pycache__`` (the
usual location of an editable install) is neither read nor written: every kernel the
child calls is compiled, and saved into the empty directory as on a user's first run.
The child times:

* ``import``: ``triton_rerank.rerank`` and the FAISS adapter (torch, faiss, numba; no
  kernel is compiled at import),
* ``first gnn_rerank``: ``gnn_rerank(xq [5, 16], xg [40, 16], k1=10, k2=3)`` (numpy),
* ``first inductive search``: ``RerankedIndex(faiss.IndexFlatIP(32) holding 3,000
  clustered vectors, mode="inductive").search(xq [10, 32], 10)`` (graph build included),
* the same two calls again (warm: what is left once the kernels are compiled),

in wall-clock seconds and in CPU seconds of the process (compiling runs on one thread,
so CPU time is the work, whatever else shares the cores), and, through numba's
``numba:compile`` events, the CPU seconds each kernel took to compile (with the helpers
it calls, which compile inside it).

Run from the repository root (median of 3 cold processes per version)::

    .venv/bin/python benchmarks/cold_start.py --label after

measures the checkout. To compare versions under the same load, ``--rev REV`` (a git
revision: its ``triton_rerank/`` and ``integrations/``, extracted with ``git archive``)
and ``--tree DIR`` (a folder holding a ``triton_rerank`` package with ``integrations``
inside it) run the children on those copies, through ``PYTHONPATH``; both repeatable,
with ``--worktree`` to measure the checkout as well. The versions take turns, one
process each, so they see the same load. Each version gets a section "LABEL: version"
in benchmarks/results/cold_start.md (a section of the same title is replaced, the
others are kept)::

    .venv/bin/python benchmarks/cold_start.py --label cold --rev 13e0d3f --worktree
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "cold_start.md"
STEPS = (
    "import",
    "first gnn_rerank",
    "first inductive search",
    "warm gnn_rerank",
    "warm inductive search",
)
COLD = ("first gnn_rerank", "first inductive search")


class _CompileTimes:
    """A ``numba:compile`` listener: CPU seconds of the compiling thread per compiled
    (kernel, argument types).

    Helpers compile inside the kernel that calls them; ``top`` keeps the outermost
    compilations only (their sum is the whole compile time), ``nested`` all of them.
    """

    def __init__(self):
        self.stack = []
        self.top = defaultdict(float)
        self.nested = defaultdict(float)

    @staticmethod
    def _name(event):
        dispatcher = event.data["dispatcher"]
        module = dispatcher.py_func.__module__.rsplit(".", 1)[-1]
        args = ", ".join(str(a) for a in event.data["args"])
        return f"{module}.{dispatcher.py_func.__name__}({args})"

    def on_start(self, event):
        self.stack.append(time.thread_time())

    def on_end(self, event):
        seconds = time.thread_time() - self.stack.pop()
        name = self._name(event)
        self.nested[name] += seconds
        if not self.stack:
            self.top[name] += seconds


def _child() -> dict:
    """One cold process: wall and CPU seconds of :data:`STEPS`, and the compile times."""
    from numba.core import event

    times = _CompileTimes()
    listener = type(
        "Listener", (event.Listener,), {"on_start": times.on_start, "on_end": times.on_end}
    )()
    event.register("numba:compile", listener)
    wall, cpu = {}, {}

    def timed(step, call):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        result = call()
        wall[step] = time.perf_counter() - start_wall
        cpu[step] = time.process_time() - start_cpu
        return result

    def imports():
        import faiss

        from triton_rerank.integrations.faiss import RerankedIndex
        from triton_rerank.rerank import gnn_rerank

        return faiss, RerankedIndex, gnn_rerank

    faiss, RerankedIndex, gnn_rerank = timed("import", imports)
    from triton_rerank.app.synthetic import clustered_vectors

    rng = np.random.default_rng(0)
    xq, xg = rng.standard_normal((5, 16)), rng.standard_normal((40, 16))
    database, _ = clustered_vectors(3000, 32, 30, seed=0)
    queries, _ = clustered_vectors(10, 32, 30, seed=1)

    def search():
        index = faiss.IndexFlatIP(database.shape[1])
        index.add(database)
        return RerankedIndex(index, mode="inductive").search(queries, 10)

    for when in ("first", "warm"):
        timed(f"{when} gnn_rerank", lambda: gnn_rerank(xq, xg, k1=10, k2=3))
        timed(f"{when} inductive search", search)
    import numba

    import triton_rerank

    return {
        "wall": wall,
        "cpu": cpu,
        "compile": dict(times.top),
        "compile_nested": dict(times.nested),
        "threads": numba.get_num_threads(),
        "package": str(Path(triton_rerank.__file__).parent),
    }


def extract_revision(rev: str, into: Path) -> Path:
    """The package of git revision ``rev`` in ``into`` (``integrations/`` moved into
    ``triton_rerank/``, where the installed package maps it)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "triton_rerank", "integrations"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    shutil.move(into / "integrations", into / "triton_rerank" / "integrations")
    return into


def run_cold(tree: str) -> dict:
    """Run :func:`_child` in a fresh process with an empty ``NUMBA_CACHE_DIR``, on the
    ``triton_rerank`` package in the folder ``tree``."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(tree).resolve()), env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
        proc = subprocess.run(
            [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"cold-start child failed:\n{proc.stderr[-3000:]}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        report["cache_files"] = sum(len(files) for _, _, files in os.walk(cache))
    return report


def _runs(values) -> str:
    return f"{np.median(values):.2f} ({', '.join(f'{v:.2f}' for v in values)})"


def table(reports: list[dict], label: str, command: str) -> str:
    """The markdown section of one measured tree (medians over ``reports``)."""
    lines = [
        f"## {label}",
        "",
        f"Command: `{command}`",
        "",
        f"{len(reports)} cold processes, {reports[0]['threads']} numba threads. Seconds: "
        f"median (every run).",
        "",
        "| step | wall-clock | CPU (process) |",
        "|---|---:|---:|",
    ]
    for step in STEPS:
        lines.append(
            f"| {step} | {_runs([r['wall'][step] for r in reports])} | "
            f"{_runs([r['cpu'][step] for r in reports])} |"
        )
    lines.append(
        "| **cold start: first gnn_rerank + first inductive search** | **"
        + _runs([sum(r["wall"][s] for s in COLD) for r in reports])
        + "** | **"
        + _runs([sum(r["cpu"][s] for s in COLD) for r in reports])
        + "** |"
    )
    total = [sum(r["compile"].values()) for r in reports]
    lines += [
        "",
        f"Compile time (CPU seconds of the compiling thread), outermost kernels "
        f"(their helpers compile inside them): total {_runs(total)}; "
        f"{reports[0]['cache_files']} cache files written.",
        "",
        "| kernel (argument types) | CPU seconds |",
        "|---|---:|",
    ]
    names = {name for r in reports for name in r["compile"]}
    medians = {name: np.median([r["compile"].get(name, 0.0) for r in reports]) for name in names}
    for name in sorted(names, key=lambda n: -medians[n]):
        lines.append(f"| `{_short(name)}` | {medians[name]:.2f} |")
    return "\n".join(lines) + "\n"


def _short(name: str) -> str:
    """Argument types without numba's layout details."""
    name = re.sub(r"array\((\w+), (\d)d, C\)", r"\1[\2d]", name)
    return re.sub(r"array\((\w+), (\d)d, A\)", r"\1[\2d, strided]", name)


def write_section(path: Path, label: str, section: str) -> None:
    """Put ``section`` into ``path`` in place of the section with the same label."""
    text = (
        path.read_text()
        if path.exists()
        else (
            "# Cold start of the CPU path\n\nThe first calls of a fresh process with an empty "
            "numba cache; see `benchmarks/cold_start.py` for the steps.\n\n"
        )
    )
    parts = re.split(r"(?m)^(?=## )", text)
    head, sections = parts[0], {p.splitlines()[0][3:]: p for p in parts[1:]}
    sections[label] = section
    path.write_text("\n\n".join(part.strip("\n") for part in [head, *sections.values()]) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="cold processes per version")
    parser.add_argument("--label", default="current", help="section of the results file")
    parser.add_argument(
        "--rev",
        action="append",
        default=[],
        help="measure this git revision's package (repeatable)",
    )
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        help="measure the triton_rerank package in this folder (repeatable)",
    )
    parser.add_argument(
        "--worktree",
        action="store_true",
        help="measure the checkout too (the default without --rev/--tree)",
    )
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child()))
        return
    with tempfile.TemporaryDirectory() as scratch:
        versions = {
            f"rev {rev}": str(extract_revision(rev, Path(scratch) / f"rev{i}"))
            for i, rev in enumerate(args.rev)
        }
        versions.update({f"tree {tree}": tree for tree in args.tree})
        if args.worktree or not versions:
            versions["worktree"] = str(ROOT)
        reports = {name: [] for name in versions}
        for _ in range(args.repeats):
            for name, tree in versions.items():  # in turn: every version sees the same load
                reports[name].append(run_cold(tree))
                print(name, json.dumps(reports[name][-1]["wall"]), file=sys.stderr)
    command = shlex.join([".venv/bin/python", "benchmarks/cold_start.py", *sys.argv[1:]])
    for name in versions:
        section = table(reports[name], f"{args.label}: {name}", command)
        print(section)
        if not args.no_save:
            write_section(RESULTS, f"{args.label}: {name}", section)


if __name__ == "__main__":
    main()
