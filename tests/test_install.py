"""Installs without a writable kernel cache (a system or container site-packages).

numba keeps compiled kernels in the first writable location among ``NUMBA_CACHE_DIR``,
the package's ``__pycache__`` and the user's cache (``~/.cache/numba``). Each test runs
a real child process on a copy of the package (``triton_rerank/`` with the top-level
``integrations/`` inside it, where the installed package maps ``triton_rerank.integrations``)
that imports that copy, with some of those locations read-only:

* not as root, file modes bind: the copy and HOME are made read-only with ``chmod``;
* as root, who ignores file modes: the child runs in a private mount namespace
  (``unshare --mount``) in which the folder holding the copy and HOME is a read-only
  bind mount, so every write there fails with EROFS, as on a read-only image.

Each child also tries to write into the package's ``__pycache__`` and HOME, and reports
whether it could: a test fails instead of passing vacuously if the setup did not take.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import triton_rerank

PACKAGE = Path(triton_rerank.__file__).resolve().parent
INTEGRATIONS = Path(
    importlib.util.find_spec("triton_rerank.integrations").submodule_search_locations[0]
).resolve()
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
WARNING_NAME = "NoKernelCacheWarning"

# The child: imports every kernel module (each decorator looks for a cache location),
# runs the work given as its argument, and prints one JSON line: what it imported, the
# kernel-cache warnings, whether the package's __pycache__ and HOME could be written,
# and the kernels it compiled (at import: none should be).
CHILD = """
import importlib, json, os, pkgutil, sys, warnings
from pathlib import Path
from numba.core import event

compiled = []
class Compiles(event.Listener):
    def on_start(self, e):
        compiled.append(e.data["dispatcher"].py_func.__name__)
    def on_end(self, e):
        pass
event.register("numba:compile", Compiles())

def writable(folder):
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "probe").write_text("x")
        (folder / "probe").unlink()
        return True
    except OSError:
        return False

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import numpy as np
    import triton_rerank, triton_rerank.cpu, triton_rerank.integrations
    for module in ["rerank", "database.inductive", "evaluation.metrics", "app.cli"]:
        importlib.import_module("triton_rerank." + module)
    for info in pkgutil.walk_packages(triton_rerank.cpu.__path__, "triton_rerank.cpu."):
        importlib.import_module(info.name)
    compiled_at_import = list(compiled)
    result = None
    exec(sys.argv[1])
package = Path(triton_rerank.__file__).parent
print(json.dumps({
    "package": str(package),
    "integrations": triton_rerank.integrations.__path__[0],
    "warnings": [str(w.message) for w in caught if w.category.__name__ == "WARNING_NAME"],
    "package_writable": writable(package / "cpu" / "__pycache__"),
    "home_writable": writable(Path.home() / ".cache" / "numba"),
    "compiled_at_import": compiled_at_import,
    "compiled": compiled,
    "result": result,
}))
""".replace("WARNING_NAME", WARNING_NAME)

# Work for the child: a small re-ranking (as the README's example) and one evaluation.
RERANK = """
from triton_rerank import evaluate, gnn_rerank
rng = np.random.default_rng(0)
xq, xg = rng.standard_normal((5, 16)), rng.standard_normal((40, 16))
scores = gnn_rerank(xq, xg, k1=10, k2=3)
metrics = evaluate(scores, [0, 1, 2, 3, 4], np.arange(40) % 5, [0] * 5, [1] * 40)
result = {"scores": scores.tolist(), "mAP": metrics.mAP}
"""
# Cheaper work, to see where compiled kernels go: one kernel (the evaluation's).
EVALUATE = """
from triton_rerank import evaluate
result = evaluate(np.eye(3, 4), [0, 1, 2], [0, 1, 2, 3], [0, 0, 0], [1, 1, 1, 1]).mAP
"""


@functools.cache
def read_only_mode() -> str | None:
    """How a child can be given read-only folders here: "permissions" (not root),
    "mount" (root, with mount namespaces), or None (also on Windows, where folders
    cannot be made read-only with file modes)."""
    if sys.platform == "win32":
        return None
    if not IS_ROOT:
        return "permissions"
    if shutil.which("unshare") is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        probe = subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && ! touch "$1/probe"',
                "sh",
                folder,
            ],
            capture_output=True,
        )
        return "mount" if probe.returncode == 0 else None


def _set_modes(root: Path, *, writable: bool) -> None:
    """chmod a tree: read-only (dirs 555, files 444) or back to writable (755 / 644)."""
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o755 if writable else 0o555)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644 if writable else 0o444)


class Install:
    """A copy of the package in ``root/site`` (importable through PYTHONPATH), and a home
    folder ``root/home``; ``run`` starts a child with ``root`` read-only or not."""

    def __init__(self, root: Path):
        self.root = root
        self.site = root / "site"
        self.home = root / "home"
        shutil.copytree(
            PACKAGE, self.site / "triton_rerank", ignore=shutil.ignore_patterns("__pycache__")
        )
        if not (self.site / "triton_rerank" / "integrations").exists():
            shutil.copytree(
                INTEGRATIONS,
                self.site / "triton_rerank" / "integrations",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        self.home.mkdir()
        self.cpu_cache = self.site / "triton_rerank" / "cpu" / "kernels" / "__pycache__"

    def run(
        self, command: list[str], *, read_only: bool, cwd: Path, env: dict | None = None
    ) -> subprocess.CompletedProcess:
        """Run ``python COMMAND`` on the copy; HOME is ``root/home`` unless ``env`` sets
        it, and neither NUMBA_CACHE_DIR nor XDG_CACHE_HOME is set unless ``env`` sets them."""
        child_env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH")
        }
        child_env.update({"HOME": str(self.home), "PYTHONPATH": str(self.site), **(env or {})})
        argv = [sys.executable, *command]
        mode = read_only_mode() if read_only else None
        if mode == "mount":
            argv = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"',
                "sh",
                str(self.root),
                *argv,
            ]
        elif mode == "permissions":
            _set_modes(self.root, writable=False)
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, cwd=cwd, env=child_env, timeout=900
            )
        finally:
            if mode == "permissions":
                _set_modes(self.root, writable=True)

    def report(self, work: str, *, read_only: bool, cwd: Path, env: dict | None = None) -> dict:
        """Run the CHILD script with ``work``; its JSON report."""
        proc = self.run(["-c", CHILD, work], read_only=read_only, cwd=cwd, env=env)
        assert proc.returncode == 0, proc.stderr[-4000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        # the child imported this copy, integrations included; importing compiled nothing
        assert report["package"] == str(self.site / "triton_rerank")
        assert report["integrations"] == str(self.site / "triton_rerank" / "integrations")
        assert report["compiled_at_import"] == []
        return report


@pytest.fixture
def install(tmp_path):
    return Install(tmp_path / "install")


@pytest.fixture
def needs_read_only():
    if read_only_mode() is None:
        pytest.skip(
            "cannot make a folder read-only for a child process here: Windows, or "
            "running as root (who ignores file modes) without mount namespaces "
            "(unshare --mount)"
        )


def nbi_files(folder: Path) -> list[Path]:
    """numba's cache index files under ``folder``."""
    return sorted(folder.rglob("*.nbi")) if folder.exists() else []


def test_read_only_install_reranks_without_a_cache_and_warns_once(
    install, tmp_path, needs_read_only
):
    report = install.report(RERANK, read_only=True, cwd=tmp_path)
    assert not report["package_writable"] and not report["home_writable"]
    # numba found no cache location: one warning for all the kernels, naming numba's error
    assert len(report["warnings"]) == 1, report["warnings"]
    assert "no locator available" in report["warnings"][0]
    assert "NUMBA_CACHE_DIR" in report["warnings"][0]
    # the kernels compiled and computed what the normal install computes
    from triton_rerank import evaluate, gnn_rerank

    rng = np.random.default_rng(0)
    xq, xg = rng.standard_normal((5, 16)), rng.standard_normal((40, 16))
    expected = gnn_rerank(xq, xg, k1=10, k2=3)
    np.testing.assert_array_equal(np.array(report["result"]["scores"], np.float32), expected)
    assert (
        report["result"]["mAP"]
        == evaluate(expected, [0, 1, 2, 3, 4], np.arange(40) % 5, [0] * 5, [1] * 40).mAP
    )
    assert report["compiled"]
    assert not nbi_files(install.root)


@pytest.mark.slow
def test_read_only_install_runs_the_demo(install, tmp_path, needs_read_only):
    proc = install.run(
        ["-W", "always", "-m", "triton_rerank", "demo", "--picture", ""],
        read_only=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count(f"{WARNING_NAME}:") == 1, proc.stderr[-4000:]
    assert "no locator available" in proc.stderr
    plain = float(proc.stdout.split("no re-ranking (cosine)")[1].split("%")[0])
    gnn = float(proc.stdout.split("GNN re-ranking (k1=26, k2=7)")[1].split("%")[0])
    assert gnn > plain + 10  # the demo's measured 65.0% -> 81.5%
    assert not nbi_files(install.root)


def test_writable_install_caches_next_to_the_package_without_warning(install, tmp_path):
    report = install.report(EVALUATE, read_only=False, cwd=tmp_path)
    assert report["package_writable"]
    assert report["warnings"] == []
    assert report["compiled"] and report["result"] == 1.0
    assert nbi_files(install.cpu_cache)
    assert not nbi_files(install.home)


@pytest.mark.parametrize("where", ["NUMBA_CACHE_DIR", "HOME"])
def test_read_only_install_caches_in_the_writable_location(
    install, tmp_path, where, needs_read_only
):
    cache = tmp_path / "writable"
    cache.mkdir()
    env = {where: str(cache)}
    first = install.report(EVALUATE, read_only=True, cwd=tmp_path, env=env)
    assert not first["package_writable"]
    assert first["warnings"] == []
    assert first["compiled"] and first["result"] == 1.0
    assert nbi_files(cache)
    assert not nbi_files(install.root)
    # a second process loads the kernels from there instead of compiling them
    second = install.report(EVALUATE, read_only=True, cwd=tmp_path, env=env)
    assert second["warnings"] == [] and second["result"] == 1.0
    assert second["compiled"] == []


# -- parallel_chunks (cpu/kernels/jit.py): the kernels' threads, without numba's parallel=True


def test_parallel_chunks_cover_the_items_once_in_contiguous_chunks():
    import threading

    import numba

    from triton_rerank.cpu.kernels.jit import parallel_chunks

    calls, threads = [], set()

    def kernel(start, stop, out):
        calls.append((start, stop))
        threads.add(threading.get_ident())
        out[start:stop] += 1

    for n_items, options in [
        (1000, {}),
        (1000, {"min_size": 300}),
        (7, {"max_chunks": 2}),
        (1, {}),
    ]:
        runs, calls[:] = np.zeros(n_items, np.int64), []
        parallel_chunks(kernel, n_items, runs, **options)
        assert (runs == 1).all()
        sizes = [stop - start for start, stop in calls]
        assert min(sizes) >= min(options.get("min_size", 1), n_items)
        assert max(sizes) - min(sizes) <= 1
        assert len(calls) <= options.get("max_chunks", len(calls))
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        threads.clear()
        calls[:] = []
        parallel_chunks(kernel, 1000, np.zeros(1000, np.int64))
        assert calls == [(0, 1000)] and threads == {threading.get_ident()}
    finally:
        numba.set_num_threads(previous)
    parallel_chunks(kernel, 0, np.zeros(0, np.int64))  # no items: no call
    assert calls == [(0, 1000)]


def test_parallel_chunks_run_on_every_thread():
    import threading
    import time

    import numba

    from triton_rerank.cpu.kernels.jit import parallel_chunks

    threads = set()

    def kernel(start, stop):
        threads.add(threading.get_ident())
        time.sleep(0.001)  # long enough for every thread to take some chunks

    parallel_chunks(kernel, 1000)
    assert len(threads) == numba.get_num_threads()


def test_parallel_chunks_pass_each_thread_its_own_worker_index():
    import threading
    import time

    import numba

    from triton_rerank.cpu.kernels.jit import parallel_chunks, worker_count

    n_workers = worker_count(1000)
    assert n_workers == min(numba.get_num_threads(), 1000) and worker_count(0) == 0
    busy = [threading.Lock() for _ in range(n_workers)]
    owner, runs = {}, np.zeros(1000, np.int64)

    def kernel(worker, start, stop, out):
        # two chunks never hold one worker's scratch at once, and a worker is one thread
        assert busy[worker].acquire(blocking=False), f"worker {worker} used twice at once"
        try:
            assert owner.setdefault(worker, threading.get_ident()) == threading.get_ident()
            out[start:stop] += 1
            time.sleep(0.001)
        finally:
            busy[worker].release()

    parallel_chunks(kernel, 1000, runs, pass_worker=True)
    assert (runs == 1).all() and set(owner) <= set(range(n_workers))
    if n_workers > 1:
        assert len(owner) == n_workers


def test_parallel_chunks_reraise_and_stop_at_the_first_error():
    from triton_rerank.cpu.kernels.jit import parallel_chunks

    runs = np.zeros(1000, np.int64)

    def kernel(start, stop, out):
        if start <= 3 < stop:
            raise ValueError("chunk of item 3 failed")
        out[start:stop] += 1

    with pytest.raises(ValueError, match="chunk of item 3 failed"):
        parallel_chunks(kernel, 1000, runs, max_chunks=1000)
    assert runs.max() == 1 and runs.sum() < 1000
