#!/usr/bin/env bash
# Creates .venv and installs exactly constraints/lock.txt (every package, sha256-checked), then
# wamfleet itself; cheap when nothing changed. The lock pins torch's CPU build: pip takes it from
# the machine's wheel directory where there is one, else from PyTorch's CPU index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.wamfleet-installed
want=$(cat pyproject.toml constraints/lock.txt scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "bootstrap: installing constraints/lock.txt into .venv (first run takes a few minutes)" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() {
  # This machine's pip config names optional local indexes; their "is ignored" notes are noise.
  .venv/bin/python -m pip --quiet "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
torch_pin=$(grep -o '^torch==[^ ]*' constraints/lock.txt)
torch_index=()
if ! pip install --dry-run --no-index --no-deps "$torch_pin" >/dev/null 2>&1; then
  torch_index=(--extra-index-url https://download.pytorch.org/whl/cpu)  # no local CPU wheel
fi
pip install --require-hashes --no-deps "${torch_index[@]}" -r constraints/lock.txt
pip install --no-deps --no-build-isolation -e .
pip check >&2
echo "$want" > "$stamp"
