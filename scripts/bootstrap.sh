#!/usr/bin/env bash
# Creates .venv and installs wamfleet with every extra; cheap when nothing changed.
# torch comes first from constraints/cpu.txt so no later resolve pulls CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.wamfleet-installed
want=$(cat pyproject.toml constraints/cpu.txt scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "bootstrap: installing into .venv (first run takes a few minutes)" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip_install() {
  # This machine's pip config names optional local indexes; their "is ignored" notes are noise.
  .venv/bin/python -m pip install --quiet "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
pip_install --upgrade pip "setuptools>=77" wheel
pip_install -c constraints/cpu.txt "torch==2.13.0"
pip_install -c constraints/cpu.txt -e ".[all,dev]"
echo "$want" > "$stamp"
