#!/usr/bin/env bash
# Set up (if needed) and run the test suite and the linter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# A headless browser for the report test (tests/test_report.py opens the HTML report).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium
fi
.venv/bin/ruff check lana tests benchmarks
OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests
