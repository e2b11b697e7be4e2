"""The demo's terminal shows progress, decisions and results; log records go to its log file."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from wamfleet.platform.cli.demo_flywheel import logs_in_file


def test_log_records_and_warnings_go_to_the_file_while_the_demo_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    terminal = logging.StreamHandler()  # what the CLI's basicConfig installs: stderr
    root.addHandler(terminal)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        before = root.handlers[:]
        log = tmp_path / "logs" / "demo.log"
        with logs_in_file(log):
            logging.getLogger("wamfleet.tests.migration").info("Running upgrade 0001 -> 0002")
            logging.getLogger("wamfleet.platform.rollouts.controller").info("rollout r1 advanced")
            warnings.warn("a library's warning", UserWarning, stacklevel=1)
        assert root.handlers == before
        logging.getLogger("after").info("back on the terminal")
    finally:
        root.removeHandler(terminal)
        root.setLevel(level)
    text = log.read_text()
    assert "Running upgrade 0001 -> 0002" in text and "rollout r1 advanced" in text
    assert "a library's warning" in text
    err = capsys.readouterr().err
    assert "Running upgrade" not in err and "rollout r1" not in err and "a library's warning" not in err
    assert "back on the terminal" in err
