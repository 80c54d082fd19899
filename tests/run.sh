#!/usr/bin/env bash
# The test command: sets up .venv if needed, then lint and the offline test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash export/setup_env.sh
export HF_HUB_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
