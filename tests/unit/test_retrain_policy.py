"""The retrain policy's rules, one at a time, on a fixed clock; and the KFP state mapping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from wamfleet.platform.retrains.launcher import kfp_status
from wamfleet.platform.retrains.policy import Decision, RetrainPolicy
from wamfleet.platform.settings import Settings, runner_env

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)


def decide(policy: RetrainPolicy, **facts: Any) -> Decision | None:
    args: dict[str, Any] = {
        "now": NOW,
        "last_snapshot_at": NOW - 2 * H,
        "newest_committed_at": NOW - 2 * H,
        "new_episodes": 0,
        "last_run_created_at": NOW - 2 * H,
        "active": False,
    }
    args.update(facts)
    return policy.decide(**args)


def test_disabled_when_all_rules_are_zero() -> None:
    policy = RetrainPolicy.from_settings(Settings())
    assert not policy.enabled
    assert "off" in policy.describe()
    assert decide(policy, new_episodes=10_000, last_snapshot_at=None, last_run_created_at=None) is None


def test_from_settings_reads_the_three_rules() -> None:
    settings = Settings(retrain_min_new_episodes=5, retrain_max_age_h=24, retrain_schedule_h=168)
    policy = RetrainPolicy.from_settings(settings)
    assert policy == RetrainPolicy(min_new_episodes=5, max_age_h=24.0, schedule_h=168.0)
    assert policy.describe() == (
        "retrain on >= 5 new episodes or snapshot older than 24 h with new episodes or every 168 h"
    )


def test_new_episodes_trigger_at_the_threshold_and_name_the_numbers() -> None:
    policy = RetrainPolicy(min_new_episodes=10)
    assert decide(policy, new_episodes=9) is None
    decision = decide(policy, new_episodes=12)
    assert decision is not None
    assert decision.trigger == "policy"
    assert "12 new episodes" in decision.reason
    assert "threshold 10" in decision.reason
    assert "2025-06-01T10:00:00" in decision.reason  # since the snapshot's newest episode


def test_new_episodes_without_any_snapshot_count_from_the_start() -> None:
    policy = RetrainPolicy(min_new_episodes=3)
    decision = decide(
        policy, new_episodes=3, last_snapshot_at=None, newest_committed_at=None, last_run_created_at=None
    )
    assert decision is not None
    assert decision.reason == "3 new episodes ever (no snapshot yet) (threshold 3)"


def test_counting_from_a_later_run_says_so() -> None:
    decision = decide(RetrainPolicy(min_new_episodes=1), new_episodes=1, last_run_created_at=NOW - H / 2)
    assert decision is not None
    assert "since the last run" in decision.reason


def test_stale_snapshot_triggers_only_with_new_episodes() -> None:
    policy = RetrainPolicy(max_age_h=24)
    old = {"last_snapshot_at": NOW - 30 * H, "last_run_created_at": NOW - 30 * H}
    assert decide(policy, new_episodes=0, **old) is None
    assert decide(policy, new_episodes=5, last_snapshot_at=NOW - 23 * H, last_run_created_at=None) is None
    decision = decide(policy, new_episodes=2, **old)
    assert decision is not None
    assert decision.trigger == "policy"
    assert "30.0 h old (max 24 h)" in decision.reason
    assert "2 new episodes" in decision.reason


def test_stale_rule_without_snapshot_triggers_on_any_episode() -> None:
    policy = RetrainPolicy(max_age_h=24)
    decision = decide(
        policy, new_episodes=1, last_snapshot_at=None, newest_committed_at=None, last_run_created_at=None
    )
    assert decision is not None
    assert "no snapshot yet and 1 episodes" in decision.reason


def test_a_recent_failed_run_holds_the_stale_rule_back() -> None:
    # The snapshot is old, but a run was tried an hour ago (and left no new snapshot).
    policy = RetrainPolicy(max_age_h=24)
    assert decide(policy, new_episodes=4, last_snapshot_at=NOW - 48 * H, last_run_created_at=NOW - H) is None
    decision = decide(policy, new_episodes=4, last_snapshot_at=NOW - 48 * H, last_run_created_at=NOW - 25 * H)
    assert decision is not None
    assert "last run is 25.0 h old" in decision.reason


def test_schedule_triggers_every_n_hours_since_the_last_run() -> None:
    policy = RetrainPolicy(schedule_h=6)
    assert decide(policy, last_run_created_at=NOW - 5 * H) is None
    decision = decide(policy, last_run_created_at=NOW - 6 * H)
    assert decision is not None
    assert decision.trigger == "schedule"
    assert "6.0 h ago (schedule every 6 h)" in decision.reason
    first = decide(policy, last_run_created_at=None)
    assert first is not None
    assert first.trigger == "schedule"
    assert "no retrain yet" in first.reason


def test_data_rules_win_over_the_schedule() -> None:
    policy = RetrainPolicy(min_new_episodes=2, schedule_h=1)
    decision = decide(policy, new_episodes=2, last_run_created_at=NOW - 10 * H)
    assert decision is not None
    assert decision.trigger == "policy"


@pytest.mark.parametrize(
    "facts",
    [
        {"new_episodes": 100},
        {"new_episodes": 1, "last_snapshot_at": NOW - 100 * H, "last_run_created_at": NOW - 100 * H},
        {"last_run_created_at": None},
    ],
)
def test_nothing_triggers_while_a_run_is_active(facts: dict[str, object]) -> None:
    policy = RetrainPolicy(min_new_episodes=1, max_age_h=1, schedule_h=1)
    assert decide(policy, **facts) is not None
    assert decide(policy, active=True, **facts) is None


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("PENDING", "queued"),
        ("RUNTIME_STATE_UNSPECIFIED", "queued"),
        (None, "queued"),
        ("RUNNING", "running"),
        ("CANCELING", "running"),
        ("SUCCEEDED", "succeeded"),
        ("FAILED", "failed"),
        ("CANCELED", "failed"),
        ("SKIPPED", "failed"),
        ("succeeded", "succeeded"),
        ("SOMETHING_NEW", None),
    ],
)
def test_kfp_states_map_to_retrain_statuses(state: str | None, status: str | None) -> None:
    assert kfp_status(state) == status


def test_runner_env_points_the_runner_at_the_platforms_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(
        data_dir=Path("data"),
        catalog_url="sqlite:///rel/catalog.db",
        storage_backend="s3",
        s3_secret_key="hunter2",  # type: ignore[arg-type]
        ray_address=None,
    )
    inherited = {
        "PATH": "/bin",
        "WAMFLEET_RAY_ADDRESS": "ray://elsewhere:10001",
        "WAMFLEET_KFP_HOST": "http://k",
    }
    env = runner_env(settings, inherited)
    assert env["PATH"] == "/bin"
    assert env["WAMFLEET_DATA_DIR"] == str(tmp_path / "data")  # the runner's cwd is the data dir
    assert env["WAMFLEET_CATALOG_URL"] == f"sqlite:///{tmp_path / 'rel' / 'catalog.db'}"
    assert env["WAMFLEET_MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}"
    assert (env["WAMFLEET_STORAGE_BACKEND"], env["WAMFLEET_S3_SECRET_KEY"]) == ("s3", "hunter2")
    assert "WAMFLEET_RAY_ADDRESS" not in env  # the platform's settings win over the inherited value
    assert "WAMFLEET_KFP_HOST" not in env  # a local runner never submits to KFP
    assert "WAMFLEET_S3_REGION" not in env
