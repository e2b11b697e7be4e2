#!/usr/bin/env bash
# The test command: lint, type-check, then the test suite. Fails on any of them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .
mypy
pytest "$@"
