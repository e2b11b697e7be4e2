#!/usr/bin/env bash
# Refreshes constraints/lock.txt (every package of the CPU environment, exact versions and sha256
# hashes) from pyproject.toml, then docker/constraints.txt from the lock. Without arguments it
# keeps every pin that still fits pyproject.toml; pass pip-compile options to move pins:
#   bash scripts/lock.sh                          # after editing pyproject.toml's dependencies
#   bash scripts/lock.sh --upgrade-package ray    # take a newer release of one package
#   bash scripts/lock.sh --upgrade                # take the newest releases of everything
# torch is held at constraints/cpu.txt's version, CPU build. Takes about 5 minutes (hashes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh"
.venv/bin/pip-compile pyproject.toml \
  --extra sim --extra model --extra platform --extra train --extra serve --extra dev \
  --constraint constraints/cpu.txt \
  --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
  --output-file constraints/lock.txt "$@"
.venv/bin/python docker/update_constraints.py
