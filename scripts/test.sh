#!/usr/bin/env bash
# Set up (if needed) and run the test suite and the linter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# A headless browser for the report test (tests/report/test_report.py opens the HTML report).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium
fi
.venv/bin/ruff check lana tests benchmarks
# Two worker processes (pytest-xdist), one per core of the 2-core reference machine: every
# test runs single-threaded, so one process leaves a core idle. LANA_TEST_WORKERS=0 runs
# the suite in this process.
OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -n "${LANA_TEST_WORKERS:-2}" tests
