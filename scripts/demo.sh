#!/usr/bin/env bash
# Set up (if needed) and run `lana demo` end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/lana demo "$@"
