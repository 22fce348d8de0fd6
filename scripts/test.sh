#!/usr/bin/env bash
# Set up (if needed) and run the test suite and the linter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check lana tests benchmarks
OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests
