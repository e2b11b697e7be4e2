"""How to run the `wamfleet` command as a child process: the one spelling of its argv prefix.

The local retrain launcher, the local serving backend, the tests and the benchmarks start
`wamfleet ...` with this Python (`[*WAMFLEET_CLI, "serve", ...]`) rather than the console
script, so a child runs in the same environment as its parent whether or not the venv's bin/
is on PATH. It names the CLI's module as a string: importing this imports nothing of wamfleet,
so any layer may use it (the CLI itself is imported by nothing; see docs/architecture.md).
"""

from __future__ import annotations

import sys

WAMFLEET_CLI: tuple[str, ...] = (sys.executable, "-m", "wamfleet.platform.cli")
