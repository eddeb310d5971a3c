#!/usr/bin/env bash
# Regenerate every picture README.md shows, into docs/:
#
#   docs/rerank_demo.png   `triton-rerank demo`: top-10 before/after GNN re-ranking on
#                          scikit-learn's digits (deterministic: the same picture on
#                          every machine)
#   docs/rerank_bench.png  `triton-rerank bench`: time and peak RSS against N, ours vs
#                          the dense reference vs k-reciprocal (measured here: the
#                          figures depend on the machine and on its load)
#
# Run from the repository root with the project's venv (installed with the
# `torchreid` extra, for the k-reciprocal rows):
#
#   bash docs/pictures.sh
#
# PYTHON=/path/to/python overrides the interpreter. About 2 minutes on 2 cores.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-.venv/bin/python}
# `python -m triton_rerank` is the `triton-rerank` command; unlike the
# .venv/bin/triton-rerank script it does not need a re-install when the entry point moves.
cli=("$python" -m triton_rerank)

"${cli[@]}" demo --picture docs/rerank_demo.png

# The sizes of benchmarks/results/cli_bench.md, so that the plot and that table show the
# same runs: the baselines (dense reference, k-reciprocal) stop at N = 8,000 (about 10 s
# each there, 2.5 GB), ours goes on to 16,000. Each (method, N) runs in its own process.
"${cli[@]}" bench --sizes 1000,2000,4000,8000,16000 --max-baseline 8000 \
    --plot docs/rerank_bench.png
