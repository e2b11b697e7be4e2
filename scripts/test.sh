#!/usr/bin/env bash
# The test command: lint, type-check, the layer contracts, then the test suite. Fails on any of them.
#   bash scripts/test.sh            everything (what CI runs)
#   bash scripts/test.sh --fast     the inner loop: the same checks, without tests/e2e and `slow` tests
# Other arguments go to pytest: bash scripts/test.sh --fast -k lerobot
# pytest runs on WAMFLEET_TEST_WORKERS xdist workers (default 2, one per core of the CI machine),
# a module per worker at a time, handed out in collection order (tests/conftest.py puts the longest
# first); WAMFLEET_TEST_WORKERS=0 runs it in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
selection=()
if [ "${1:-}" = "--fast" ]; then
  shift
  selection=(--ignore=tests/e2e -m "not slow")
fi
bash scripts/bootstrap.sh
# The dashboard's browser test drives Debian's chromium (no browser is downloaded by playwright).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "test: installing Debian's chromium for the dashboard browser test" >&2
  { apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; }; } \
    || echo "test: could not install chromium; the browser test will say so" >&2
fi
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .
mypy
lint-imports
pytest -n "${WAMFLEET_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "${selection[@]}" "$@"
