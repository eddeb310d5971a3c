"""Every script in examples/ runs to completion (exit status 0) as a user would run it:
a fresh interpreter, started outside the checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))
# optional libraries an example needs, by the prefix of its file name
REQUIRES = {"torchreid": "torchreid", "faiss": "faiss"}
TIMEOUT_S = 120


def test_examples_are_found():
    names = {script.stem for script in SCRIPTS}
    assert {"quickstart", "torchreid_evaluation", "faiss_exact", "faiss_inductive"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=[script.stem for script in SCRIPTS])
def test_example_runs(script, tmp_path):
    for prefix, module in REQUIRES.items():
        if script.stem.startswith(prefix):
            pytest.importorskip(module, reason=f"{script.name} needs {module}")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, (
        f"{script.name} exited with status {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
    )
    assert "OK" in result.stdout.splitlines()[-1:], f"{script.name} did not print OK last"
