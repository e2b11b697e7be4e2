#!/usr/bin/env bash
# The main job: installs what it needs, then runs the whole flywheel on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/wamfleet demo "$@"
