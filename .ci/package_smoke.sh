#!/usr/bin/env bash
# Packaging check: build the sdist and the wheel, check their metadata, install the
# wheel (not editable, with the [faiss] extra) into a fresh venv, and use it from
# outside the checkout: import every module, re-rank, run `triton-rerank demo`.
#
#   bash .ci/package_smoke.sh
#
# Run from the repository root after .ci/run has made .venv (build and twine are added
# to it when missing). Everything goes to a temporary directory, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
py=.venv/bin/python
if [[ ! -x $py ]]; then
    echo "package_smoke: $py not found: run .ci/run (or the set-up in CONTRIBUTING.md) first" >&2
    exit 1
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/triton-rerank-smoke.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
step() { printf '\n== package_smoke: %s (%d s)\n' "$1" "$SECONDS"; }

step "build and twine in .venv"
"$py" -c "import build, twine" 2>/dev/null || "$py" -m pip install -q build twine

step "copy the tree as a fresh clone would have it (with uncommitted changes)"
# Not the checkout itself: setuptools would read what earlier builds left there (build/lib
# goes into the wheel; an old *.egg-info/SOURCES.txt into the sdist, and from there into
# the wheel even for a subpackage the package list leaves out).
src=$tmp/src
mkdir "$src"
git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' file; do if [[ -e $file ]]; then printf '%s\0' "$file"; fi; done |
    tar --null -T - -cf - | tar -xf - -C "$src"

step "build the sdist, then the wheel from the sdist"
# (python -m build without --sdist/--wheel: a wheel built from the sdist proves that the
# sdist is complete)
"$py" -m build --outdir "$tmp/dist" "$src" >"$tmp/build.log" 2>&1 ||
    { cat "$tmp/build.log"; exit 1; }
grep -E "^Successfully built" "$tmp/build.log"
shopt -s nullglob
sdists=("$tmp"/dist/*.tar.gz) wheels=("$tmp"/dist/*.whl)
shopt -u nullglob
if (( ${#sdists[@]} != 1 || ${#wheels[@]} != 1 )); then
    echo "package_smoke: expected one sdist and one wheel, got: $(ls "$tmp/dist")" >&2
    exit 1
fi
sdist=${sdists[0]} wheel=${wheels[0]}

step "twine check --strict"
"$py" -m twine check --strict "$tmp"/dist/*

step "contents of the sdist and the wheel"
# Every .py file of the package in the tree (triton_rerank/ and integrations/, which
# installs as triton_rerank.integrations) must be in the wheel, and nothing else: a subpackage the
# package list leaves out, or a module the wheel has but the tree does not, fails here.
"$py" - "$src" "$sdist" "$wheel" <<'EOF'
import sys
import tarfile
import zipfile
from pathlib import Path

root, sdist, wheel = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
with tarfile.open(sdist) as tar:
    sdist_files = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
if "LICENSE" not in sdist_files:
    sys.exit(f"package_smoke: the sdist has no LICENSE: {sorted(sdist_files)}")
with zipfile.ZipFile(wheel) as whl:
    wheel_py = {name for name in whl.namelist() if name.endswith(".py")}
if "triton_rerank/integrations/faiss.py" not in wheel_py:
    sys.exit("package_smoke: the wheel has no triton_rerank/integrations/faiss.py")


def sources(folder: str, package: str) -> set[str]:
    return {f"{package}/{p.relative_to(root / folder).as_posix()}"
            for p in (root / folder).rglob("*.py") if "__pycache__" not in p.parts}


tree_py = sources("triton_rerank", "triton_rerank") | sources(
    "integrations", "triton_rerank/integrations")
missing, extra = sorted(tree_py - wheel_py), sorted(wheel_py - tree_py)
if missing or extra:
    sys.exit("package_smoke: the wheel does not match the source tree "
             "(pyproject's package list?)\n"
             f"  in the tree, not in the wheel: {missing}\n"
             f"  in the wheel, not in the tree: {extra}")
print(f"sdist: {len(sdist_files)} files, LICENSE included; "
      f"wheel: {len(wheel_py)} modules, the same as the source tree")
EOF

step "fresh venv, the wheel with [faiss] (not editable)"
"$py" -m venv "$tmp/venv"
vpy=$tmp/venv/bin/python
"$vpy" -m pip install -q "$wheel[faiss]"

step "smoke test from outside the checkout"
cd "$tmp"
# -I: neither PYTHONPATH nor the current directory can supply triton_rerank
SMOKE_VENV="$tmp/venv" "$vpy" -I - <<'EOF'
import importlib
import os
import pkgutil
import sys

import numpy as np

import triton_rerank

venv = os.path.realpath(os.environ["SMOKE_VENV"])
where = os.path.realpath(triton_rerank.__file__)
if not where.startswith(venv + os.sep):
    sys.exit(f"package_smoke: triton_rerank imported from {where}, not from the wheel "
             f"installed in {venv}")
print(f"triton_rerank {triton_rerank.__version__} from {where}")

# Optional dependencies a module may need at import: a module is skipped only when its
# ImportError names one of these; every other module must import.
OPTIONAL = {"triton": "GPU kernels", "torchreid": "torchreid extra"}
names = [m.name for m in pkgutil.walk_packages(triton_rerank.__path__, "triton_rerank.",
                                               onerror=lambda name: None)]
names += ["triton_rerank.integrations.faiss", "triton_rerank.integrations.torchreid"]
imported, skipped, failed = [], [], []
for name in dict.fromkeys(names):
    if name.rsplit(".", 1)[-1] == "__main__":  # runs the command line: checked below
        skipped.append(f"{name} (python -m: run below)")
        continue
    try:
        importlib.import_module(name)
    except ImportError as err:
        missing = (err.name or "").split(".")[0]
        if missing in OPTIONAL and not name.startswith("triton_rerank.integrations."):
            skipped.append(f"{name} (needs {err.name}: {OPTIONAL[missing]})")
        else:
            failed.append(f"{name}: {type(err).__name__}: {err}")
    except Exception as err:  # noqa: BLE001 - report every failure, then fail
        failed.append(f"{name}: {type(err).__name__}: {err}")
    else:
        imported.append(name)
print(f"imported {len(imported)} modules")
for line in skipped:
    print(f"skipped {line}")
if failed:
    sys.exit("package_smoke: modules that do not import:\n  " + "\n  ".join(failed))
if "triton_rerank.integrations" not in imported:
    sys.exit("package_smoke: pkgutil found no triton_rerank.integrations")

from triton_rerank import gnn_rerank  # noqa: E402

rng = np.random.default_rng(0)
xq = rng.standard_normal((5, 16)).astype(np.float32)
xb = rng.standard_normal((40, 16)).astype(np.float32)
D, I = gnn_rerank(xq, xb, k1=10, k2=3, topk=5)
assert D.shape == I.shape == (5, 5) and I.dtype == np.int64, (D.shape, I.dtype)
assert np.isfinite(D).all() and (np.diff(D, axis=1) <= 0).all(), D
print("gnn_rerank: top-5 of 5 queries in 40 gallery items")

import faiss  # noqa: E402

from triton_rerank.integrations.faiss import RerankedIndex  # noqa: E402

index = faiss.IndexFlatIP(16)
index.add(xb)  # the adapter normalises what it reads back, as gnn_rerank does
FD, FI = RerankedIndex(index, k1=10, k2=3).search(xq, 5)
np.testing.assert_array_equal(FI, I)
print(f"faiss {faiss.__version__}: RerankedIndex.search equals gnn_rerank")
EOF

step "python -m triton_rerank --help; triton-rerank demo (in $tmp)"
"$vpy" -I -m triton_rerank --help >/dev/null
"$tmp/venv/bin/triton-rerank" demo
[[ -s rerank_demo.png ]] || { echo "package_smoke: the demo drew no rerank_demo.png" >&2; exit 1; }

cd "$root"
rm -rf "$tmp"  # (the venv is several GB: its removal is part of the time below)
echo
echo "package_smoke: OK in ${SECONDS} s: $(basename "$sdist") and $(basename "$wheel") pass" \
     "twine check --strict; the wheel installed in a fresh venv imports, re-ranks (numpy," \
     "FAISS) and runs the demo"
