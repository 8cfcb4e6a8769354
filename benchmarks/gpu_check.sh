#!/usr/bin/env bash
# One-shot GPU check of the kernels (see benchmarks/gpu_check.py and benchmarks/README.md); ≤ 8 minutes.
#   bash benchmarks/gpu_check.sh [--out DIR] [--skip tests bench copy wmss summary]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
exec "$PY" benchmarks/gpu_check.py "$@"
