"""Helpers shared by the benchmark scripts: child processes, peak RSS, machine facts."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB: Linux's ``VmHWM`` (reset by
    ``exec``, so a child started from a large parent reports its own peak), else
    ``ru_maxrss`` (which a child inherits from its parent's peak on Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(script: str, args: list[str], source: str | None = None) -> dict:
    """Run ``script`` in a fresh Python process; its last stdout line is a JSON report.
    With ``source`` (a checkout of another version of the project) the child imports
    ``triton_rerank`` from there instead."""
    env = None
    if source is not None:
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([os.path.join(source, "integrations"), source])
        )
    proc = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, env=env, cwd=source
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def save_feature_set(path: str, data) -> None:
    """Write a FeatureSet in the ``pytorch_result`` layout as ``.npz``."""
    np.savez(
        path,
        query_f=data.query_features,
        gallery_f=data.gallery_features,
        query_label=data.query_pids,
        gallery_label=data.gallery_pids,
        query_cam=data.query_camids,
        gallery_cam=data.gallery_camids,
    )


def top_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Fraction of rows whose first ``k`` entries are identical (order included)."""
    return float((a[:, :k] == b[:, :k]).all(axis=1).mean())


def machine() -> dict:
    import numba
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numba": numba.__version__,
        "numpy": np.__version__,
    }


def benchmark_parser(description: str, methods) -> argparse.ArgumentParser:
    """The options every benchmark script takes: ``--quick``, plus hidden child-process ones."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small shape, for a smoke test")
    parser.add_argument("--child", choices=methods, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    return parser


def median_report(reports: list[dict]) -> dict:
    """One report for repeated runs: median time (all kept), worst peak RSS."""
    seconds = [r["seconds"] for r in reports]
    return dict(
        reports[0],
        all_seconds=seconds,
        seconds=float(np.median(seconds)),
        peak_rss_mb=max(r["peak_rss_mb"] for r in reports),
    )


RESULTS = Path(__file__).resolve().parent / "results"


def publish(name: str, table: str, payload: dict, *, save: bool) -> None:
    """Print ``table``; when ``save``, write it to results/NAME.md and ``payload`` (plus
    the machine facts) to results/NAME.json."""
    print(table)
    if save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{name}.md").write_text(table)
        payload = {"machine": machine(), **payload}
        (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
