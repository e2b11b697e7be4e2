"""`run_local`'s environment: the steps get the platform's settings, the caller keeps its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from wamfleet.pipelines import pipeline
from wamfleet.pipelines.run import PipelineFailed, run_local
from wamfleet.pipelines.steps import ERROR_FILE_ENV
from wamfleet.platform.contracts.retrain import RetrainParams
from wamfleet.platform.settings import Settings

PRINT_ENV = "import json, os; print(json.dumps(dict(os.environ)))"


def child_environment() -> dict[str, str]:
    """What a step started now (a subprocess, as kfp.local starts them) finds in its environment."""
    out = subprocess.run([sys.executable, "-c", PRINT_ENV], capture_output=True, text=True, check=True)
    env: dict[str, str] = json.loads(out.stdout)
    return env


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    settings = Settings(data_dir=tmp_path / "data")
    monkeypatch.setenv("WAMFLEET_KFP_HOST", "http://kfp.example")  # a local runner must not submit
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(ERROR_FILE_ENV, raising=False)
    return settings


def test_steps_get_the_settings_and_the_caller_keeps_its_environment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, str] = {}

    def run(**_: object) -> SimpleNamespace:
        seen.update(child_environment())
        return SimpleNamespace(outputs={"version": "3", "candidate": True})

    monkeypatch.setattr(pipeline, "continuous_finetune", run)
    before = dict(os.environ)
    result = run_local(settings, RetrainParams())
    assert dict(os.environ) == before
    assert (result.version, result.candidate) == ("3", True)
    assert seen["WAMFLEET_DATA_DIR"] == str(settings.data_dir.resolve())
    assert "WAMFLEET_KFP_HOST" not in seen
    assert seen["OMP_NUM_THREADS"] == "1"
    assert seen[ERROR_FILE_ENV].endswith("errors.txt")


def test_a_failed_step_is_named_and_the_caller_keeps_its_environment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(**_: object) -> SimpleNamespace:
        Path(os.environ[ERROR_FILE_ENV]).write_text("curate: no episode passed curation\n")
        raise RuntimeError("Task curate finished with status FAILURE")

    monkeypatch.setattr(pipeline, "continuous_finetune", run)
    before = dict(os.environ)
    with pytest.raises(PipelineFailed, match=r"^curate: no episode passed curation$"):
        run_local(settings, RetrainParams())
    assert dict(os.environ) == before


def test_each_step_is_announced_as_kfp_local_starts_it(tmp_path: Path) -> None:
    from kfp import dsl, local

    from wamfleet.pipelines.run import step_announcements

    def first() -> str:
        return "a"

    def second(value: str) -> str:
        return value + "b"

    # kfp reads real types; this module's annotations are strings (from __future__ import annotations)
    first.__annotations__ = {"return": str}
    second.__annotations__ = {"value": str, "return": str}
    first_step, second_step = dsl.component(first), dsl.component(second)

    def pipeline_func() -> str:
        return second_step(value=first_step().output).output  # type: ignore[no-any-return]

    pipeline_func.__annotations__ = {"return": str}
    two_steps = dsl.pipeline(pipeline_func)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    heard: list[str] = []
    with step_announcements(heard.append):
        assert two_steps().output == "ab"
    assert heard == ["first", "second"]
    two_steps()  # the watcher is gone once the run ends
    assert heard == ["first", "second"]
