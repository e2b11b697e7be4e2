"""The demo report's arithmetic and page, on hand-made numbers (the e2e test runs the real demo)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from rich.console import Console

from wamfleet.platform.cli.demo_cmd import ProfileName, choose_profile
from wamfleet.platform.cli.demo_report import (
    DecisionRow,
    DemoReport,
    FunnelRow,
    RolloutRow,
    VersionRow,
    funnel,
    render_html,
)
from wamfleet.platform.contracts.curation import CurationReport


def test_funnel_subtracts_each_step_in_order() -> None:
    report = CurationReport(
        episodes_in=20,
        not_validated=2,
        dropped={"black_frames": 1, "too_short": 2},
        duplicates_removed=3,
        capped_per_environment=1,
        capped_per_task=1,
        kept=10,
        train=9,
        holdout=1,
    )
    assert funnel(report) == [
        ("in snapshot", 20),
        ("validated", 18),
        ("passed quality filters", 15),
        ("after near-duplicate removal", 12),
        ("kept after diversity caps", 10),
        ("train", 9),
        ("holdout", 1),
    ]


def _report() -> DemoReport:
    return DemoReport(
        profile="quick",
        created_at=datetime(2026, 11, 21, tzinfo=UTC),
        model_name="wamfleet-policy",
        dashboard_url="http://127.0.0.1:1/dashboard",
        mlflow_url="http://127.0.0.1:2",
        episodes=9,
        autonomous_episodes=3,
        episodes_by_task_and_robot={"reach-v3": {"sim-1": 5}, "push-v3": {"sim-1": 2, "sim-2": 2}},
        versions=[
            VersionRow(
                version="1",
                parent="none",
                eval_success_rate=0.6,
                eval_successes=6,
                eval_episodes=10,
                fleet_episodes=2,
                fleet_successes=1,
                fleet_success_rate=0.5,
            ),
            VersionRow(
                version="2",
                parent="1",
                eval_success_rate=0.0,
                fleet_episodes=1,
                fleet_successes=0,
                fleet_success_rate=0.0,
            ),
        ],
        rollouts=[
            RolloutRow(
                rollout_id="r-1",
                candidate_version="2",
                champion_version="1",
                final_stage="rolled_back",
                decisions=[
                    DecisionRow(
                        action="rollback",
                        from_stage="canary",
                        to_stage="rolled_back",
                        reason="success upper bound <script>alert(1)</script> < -margin",
                        actor="controller",
                    )
                ],
            )
        ],
        curation=[FunnelRow(retrain_run_id="x", model_version="1", steps=[("in snapshot", 6), ("train", 5)])],
    )


def test_page_names_versions_success_and_decisions_and_escapes_text() -> None:
    page = render_html(_report(), {"1": [2.0, 1.0], "2": [1.0, 0.8]}, {"1": [100.0, 120.0], "2": []})
    assert "wamfleet-policy/1" in page and "wamfleet-policy/2" in page
    assert "50% (1/2)" in page and "0% (0/1)" in page
    assert "6/10 = 0.60 [0.31, 0.83]" in page  # the evaluation's count, rate and 95% Wilson interval
    assert "<td>0.00</td>" in page  # a version evaluated before counts were logged: its rate alone
    assert 'data-testid="rollout-stage">rolled_back<' in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{100,}"', page)) == 5


def test_quick_flag_and_explicit_profiles_win_over_auto() -> None:
    console = Console(quiet=True)
    assert choose_profile(ProfileName.gpu, quick=True, console=console).name == "quick"
    assert choose_profile(ProfileName.gpu, quick=False, console=console).name == "gpu"
    assert choose_profile(ProfileName.quick, quick=False, console=console).name == "quick"
