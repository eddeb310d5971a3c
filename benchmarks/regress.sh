#!/usr/bin/env bash
# Time the pytest-benchmark suites and fail on a median regression of more than 15%
# against the committed baseline for this machine class (benchmarks/baselines/).
#
#   benchmarks/regress.sh            compare against the baseline (saves one if none exists)
#   benchmarks/regress.sh --refresh  replace the baseline with a new run (commit the result)
#
# Run from the repository root after the README's set-up (.venv). Close other work first:
# timings on a loaded 2-core machine are noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
storage=benchmarks/baselines
run=("$python" -m pytest benchmarks -q --benchmark-enable --benchmark-only
     --benchmark-storage="file://$storage" --benchmark-min-rounds=3 --benchmark-warmup=on
     --benchmark-columns=min,median,max,rounds --benchmark-sort=name)

if [[ "${1:-}" == "--refresh" ]]; then
    rm -rf "$storage"
    "${run[@]}" --benchmark-save=baseline
    echo "new baseline saved under $storage/; commit it"
elif ! ls "$storage"/*/*.json >/dev/null 2>&1; then
    "${run[@]}" --benchmark-save=baseline
    echo "no baseline existed for this machine: saved this run under $storage/ as the baseline"
else
    "${run[@]}" --benchmark-compare --benchmark-compare-fail=median:15%
fi
