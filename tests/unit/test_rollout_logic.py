"""Staged rollouts, the pure part: cohorts, the gate statistics and the state machine (no I/O)."""

from __future__ import annotations

import itertools
import math
import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from wamfleet.platform.contracts.rollout import (
    ArmEvidence,
    Evidence,
    RolloutConfig,
    ShadowEvidence,
    Stage,
)
from wamfleet.platform.rollouts.cohort import Assignment, assign, canary_floor, cohort_draw, in_scope
from wamfleet.platform.rollouts.gates import (
    diff_interval,
    guardrail_check,
    promotion_check,
    wilson_interval,
    wilson_interval95,
    z_value,
)
from wamfleet.platform.rollouts.stages import (
    RolloutState,
    apply_manual,
    decide,
    first_stage,
    manual,
    start,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
ROBOTS = [f"robot-{i:04d}" for i in range(1000)]


def arm(
    successes: int,
    episodes: int,
    *,
    requests: int | None = None,
    errors: int = 0,
    p95: float | None = 420.0,
    version: str | None = "2",
) -> ArmEvidence:
    requests = episodes * 10 if requests is None else requests
    return ArmEvidence(
        version=version,
        episodes=episodes,
        successes=successes,
        requests=requests,
        errors=errors,
        latency_p95_ms=p95 if episodes else None,
    )


def evidence(
    stage: Stage = "canary",
    cand: ArmEvidence | None = None,
    champ: ArmEvidence | None = None,
    shadow: ShadowEvidence | None = None,
    seconds: float = 0.0,
) -> Evidence:
    return Evidence(
        stage=stage,
        stage_seconds=seconds,
        candidate=cand or arm(0, 0),
        champion=champ or arm(0, 0, version="1"),
        shadow=shadow or ShadowEvidence(),
    )


def good_shadow(episodes: int = 5) -> ShadowEvidence:
    return ShadowEvidence(episodes=episodes, requests=episodes * 10, action_mse=0.05, latency_p95_ms=300.0)


def cfg(**overrides: Any) -> RolloutConfig:
    return RolloutConfig(**overrides)


# --- cohorts --------------------------------------------------------------------------------------------


def test_draw_is_stable_uniform_and_per_rollout() -> None:
    draws = [cohort_draw("r-1", r) for r in ROBOTS]
    assert draws == [cohort_draw("r-1", r) for r in ROBOTS]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert abs(statistics.fmean(draws) - 0.5) < 0.03
    other = [cohort_draw("r-2", r) for r in ROBOTS]
    assert abs(statistics.correlation(draws, other)) < 0.1  # independent across rollouts
    # The separator keeps ("ab", "c") and ("a", "bc") apart.
    assert cohort_draw("ab", "c") != cohort_draw("a", "bc")


def test_canary_share_is_about_the_percentage() -> None:
    c = cfg(canary_percent=25)
    n = sum(assign("canary", c, "r-1", r, None, "arm") == ("candidate", False) for r in ROBOTS)
    assert 210 <= n <= 290  # 25% +- 4%
    # Another rollout draws a different, independent cohort: overlap about 25% * 25%.
    first = {r for r in ROBOTS if assign("canary", c, "r-1", r, None, "arm").cohort == "candidate"}
    second = {r for r in ROBOTS if assign("canary", c, "r-2", r, None, "arm").cohort == "candidate"}
    assert first != second
    assert 30 <= len(first & second) <= 100


def test_canary_cohort_is_sticky_and_grows_by_adding() -> None:
    cohorts = []
    for percent in (5, 10, 25, 50, 100):
        c = cfg(canary_percent=percent)
        cohorts.append({r for r in ROBOTS if assign("canary", c, "r-1", r, "lab", "arm")[0] == "candidate"})
    for smaller, larger in itertools.pairwise(cohorts):
        assert smaller < larger
    assert cohorts[-1] == set(ROBOTS)


def test_in_scope_filters() -> None:
    assert in_scope(cfg(), None, None)
    scoped = cfg(sites=["lab-a", "lab-b"], embodiments=["sawyer"])
    assert in_scope(scoped, "lab-a", "sawyer")
    assert not in_scope(scoped, "lab-c", "sawyer")
    assert not in_scope(scoped, None, "sawyer")  # no site: not in a site-filtered rollout
    assert not in_scope(scoped, "lab-b", "franka")
    assert in_scope(cfg(embodiments=["sawyer"]), None, "sawyer")


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        ("canary", ("candidate", False)),
        ("full", ("candidate", False)),
        ("completed", ("candidate", False)),
        ("rolled_back", ("champion", False)),
        ("aborted", ("champion", False)),
        ("shadow", ("champion", True)),
    ],
)
def test_assignment_per_stage(stage: Stage, expected: tuple[str, bool]) -> None:
    c = cfg(canary_percent=100, shadow_percent=100)
    assert assign(stage, c, "r-1", "robot-1", "lab-a", "arm") == expected


def test_assignment_out_of_scope_is_champion_everywhere() -> None:
    c = cfg(canary_percent=100, sites=["lab-a"])
    for stage in ("shadow", "canary", "full", "completed", "rolled_back", "aborted"):
        assert assign(stage, c, "r-1", "robot-1", "lab-b", "arm") == Assignment("champion", False)


def test_shadow_and_canary_partitions() -> None:
    c = cfg(canary_percent=20, shadow_percent=50)
    shadowed = {r for r in ROBOTS if assign("shadow", c, "r-1", r, None, "arm").shadow}
    canary = {r for r in ROBOTS if assign("canary", c, "r-1", r, None, "arm").cohort == "candidate"}
    assert all(assign("shadow", c, "r-1", r, None, "arm").cohort == "champion" for r in ROBOTS)
    assert 450 <= len(shadowed) <= 550
    assert canary < shadowed  # same draw: the canary robots have all mirrored to the candidate
    assert not any(assign("canary", c, "r-1", r, None, "arm").shadow for r in ROBOTS)


# --- statistics --------------------------------------------------------------------------------------------


def test_z_value() -> None:
    assert z_value(0.9) == pytest.approx(1.28155, abs=1e-5)
    assert z_value(0.975) == pytest.approx(1.95996, abs=1e-5)
    with pytest.raises(ValueError, match="confidence"):
        z_value(1.0)


def test_wilson_interval95_is_the_two_sided_95_percent_interval() -> None:
    low, high = wilson_interval95(6, 10)
    assert (low, high) == pytest.approx((0.3127, 0.8318), abs=1e-4)
    assert (low, high) == wilson_interval(6, 10, z_value(0.975))


@pytest.mark.parametrize(
    ("successes", "n", "lower", "upper"),
    [  # Newcombe (1998a), Statistics in Medicine 17:857, Table II, method 3 (score), 95%.
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_textbook_values(successes: int, n: int, lower: float, upper: float) -> None:
    lo, hi = wilson_interval(successes, n, z_value(0.975))
    assert lo == pytest.approx(lower, abs=5e-5)
    assert hi == pytest.approx(upper, abs=5e-5)


def test_wilson_edges() -> None:
    assert wilson_interval(0, 0, 1.28) == (0.0, 1.0)
    lo, hi = wilson_interval(10, 10, 1.28)
    assert hi == 1.0
    assert lo == pytest.approx(10 / (10 + 1.28**2))  # s = n: n / (n + z^2)
    assert wilson_interval(0, 3, 1.28)[1] == pytest.approx(1.28**2 / (3 + 1.28**2))
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4, 1.28)


@pytest.mark.parametrize(
    ("a", "m", "b", "n", "lower", "upper"),
    [  # Newcombe (1998b), Statistics in Medicine 17:873, Table II, method 10, 95% two-sided.
        (56, 70, 48, 80, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.1705, 0.8090),
        (5, 56, 0, 29, -0.0381, 0.1926),
        (0, 10, 0, 20, -0.1611, 0.2775),
        (10, 10, 0, 20, 0.6791, 1.0),
    ],
)
def test_newcombe_textbook_values(a: int, m: int, b: int, n: int, lower: float, upper: float) -> None:
    # A 95% two-sided interval is the pair of one-sided bounds at 97.5%.
    bounds = diff_interval(arm(a, m), arm(b, n), 0.975)
    assert bounds is not None
    assert bounds[0] == pytest.approx(lower, abs=5e-5)
    assert bounds[1] == pytest.approx(upper, abs=5e-5)


def test_diff_interval_needs_both_arms() -> None:
    assert diff_interval(arm(5, 10), arm(0, 0), 0.9) is None
    assert diff_interval(arm(0, 0), arm(5, 10), 0.9) is None


# --- promotion gate -------------------------------------------------------------------------------------


def test_promotion_passes_equal_arms_with_enough_episodes() -> None:
    # The worked example of the notes: 34/40 vs 170/200 at 90%: lower bound -0.091 > -0.100.
    result = promotion_check("canary", cfg(), evidence(cand=arm(34, 40), champ=arm(170, 200)))
    assert result.passed
    assert not result.awaiting_approval
    assert result.reason == (
        "success lower bound -0.091 > -margin -0.100 at 90% confidence (34/40 vs champion 170/200); "
        "40 canary episodes >= 10; latency p95 420 ms <= 1000 ms; errors 0.0% (0/400 requests) <= 5.0%; "
        "0 s in canary >= 0 s"
    )


def test_promotion_confidence_matters() -> None:
    # The same evidence is not enough at 97.5%: the bound widens to -0.147.
    result = promotion_check("canary", cfg(confidence=0.975), evidence(cand=arm(34, 40), champ=arm(170, 200)))
    assert not result.passed
    assert result.reason.startswith("success lower bound -0.147 <= -margin -0.100 at 97.5% confidence")


def test_promotion_fails_below_min_episodes() -> None:
    result = promotion_check(
        "canary", cfg(canary_min_episodes=50), evidence(cand=arm(40, 40), champ=arm(80, 100))
    )
    assert not result.passed
    assert result.reason == "40 canary episodes < 50"


def test_promotion_fails_on_latency_and_errors() -> None:
    ev = evidence(cand=arm(40, 40, p95=1200.0, errors=30, requests=500), champ=arm(80, 100))
    result = promotion_check("canary", cfg(), ev)
    assert not result.passed
    assert result.reason == "latency p95 1200 ms > 1000 ms; errors 6.0% (30/500 requests) > 5.0%"
    unreported = promotion_check("canary", cfg(), evidence(cand=arm(40, 40, p95=None), champ=arm(80, 100)))
    assert unreported.reason == "latency p95 not reported"


def test_promotion_waits_for_duration() -> None:
    ev = evidence(cand=arm(40, 40), champ=arm(80, 100), seconds=120)
    result = promotion_check("canary", cfg(canary_min_duration_s=600), ev)
    assert not result.passed
    assert result.reason == "120 s in canary < 600 s"


def test_promotion_without_champion_uses_min_success() -> None:
    c = cfg(min_success=0.7)
    ok = promotion_check("canary", c, evidence(cand=arm(45, 50)))
    assert ok.passed
    assert ok.reason.startswith("success lower bound 0.832 >= min_success 0.700 at 90% confidence (45/50")
    low = promotion_check("canary", c, evidence(cand=arm(36, 50)))
    assert not low.passed
    assert "< min_success 0.700" in low.reason


def test_promotion_with_required_approval() -> None:
    c = cfg(require_approval=True)
    ev = evidence(cand=arm(34, 40), champ=arm(170, 200))
    result = promotion_check("canary", c, ev)
    assert result.passed
    assert result.awaiting_approval
    assert result.reason.endswith("; awaiting manual approve")
    assert promotion_check("canary", c, ev, awaiting_approval=True).reason.endswith(
        "still awaiting manual approve"
    )


def test_shadow_and_full_gates() -> None:
    c = cfg(shadow_min_episodes=3)
    assert promotion_check("shadow", c, evidence("shadow", shadow=good_shadow(3))).passed
    no_mse = ShadowEvidence(episodes=3, requests=30, latency_p95_ms=300.0)
    assert promotion_check("shadow", c, evidence("shadow", shadow=no_mse)).reason == (
        "shadow action MSE not reported"
    )
    assert promotion_check("shadow", c, evidence("shadow", shadow=good_shadow(2))).reason == (
        "2 shadow episodes < 3"
    )
    assert not promotion_check("full", cfg(full_min_episodes=10), evidence("full", cand=arm(9, 9))).passed
    assert promotion_check("full", cfg(full_min_episodes=10), evidence("full", cand=arm(9, 10))).passed
    with pytest.raises(ValueError, match="completed"):
        promotion_check("completed", c, evidence("completed"))


# --- guardrails ---------------------------------------------------------------------------------------------


def first_breach(rate: float, champ: ArmEvidence, margin: float = 0.1, confidence: float = 0.9) -> int:
    """Smallest n where a candidate with ceil(rate * n) successes is confidently worse than the champion."""
    for n in range(1, 5000):
        bounds = diff_interval(arm(math.ceil(rate * n), n), champ, confidence)
        assert bounds is not None
        if bounds[1] < -margin:
            return n
    raise AssertionError("never")


def test_zero_success_candidate_rolls_back_within_guardrail_min_episodes() -> None:
    champ = arm(90, 100)  # a 90% champion
    # The bound alone would fire after the first failed episode: upper = -0.9 + sqrt(u1^2 + (0.9 - l2)^2).
    assert first_breach(0.0, champ) == 1
    c = cfg()  # guardrail_min_episodes 3
    assert guardrail_check("canary", c, evidence(cand=arm(0, 2), champ=champ)) is None
    breach = guardrail_check("canary", c, evidence(cand=arm(0, 3), champ=champ))
    assert breach is not None
    assert breach.reason == (
        "guardrail breach in canary after 3 candidate episodes: success upper bound -0.543 < -margin -0.100 "
        "at 90% confidence (0/3 vs champion 90/100): confidently worse"
    )
    # Bounds for partial failures (episodes until the breach, with the candidate's successes rounded up).
    assert first_breach(0.5, champ) <= 5
    assert first_breach(0.6, champ) <= 12
    assert first_breach(0.7, champ) <= 40  # a 20-point gap: within the default canary_max_episodes (60)


def test_guardrails_error_rate_and_latency() -> None:
    c = cfg()
    all_errors = evidence(cand=arm(2, 2, errors=20, requests=20))
    assert guardrail_check("canary", c, all_errors) is None  # fewer than guardrail_min_episodes (3)
    breach = guardrail_check("full", c, evidence("full", cand=arm(3, 3, errors=3, requests=30, p95=1500.0)))
    assert breach is not None
    assert breach.reason == (
        "guardrail breach in full after 3 candidate episodes: errors 10.0% (3/30 requests) > 5.0%; "
        "latency p95 1500 ms > 1000 ms"
    )
    assert guardrail_check("canary", c, evidence(cand=arm(3, 3), champ=arm(9, 10))) is None


def test_guardrail_without_champion_uses_min_success() -> None:
    assert guardrail_check("canary", cfg(), evidence(cand=arm(0, 20))) is None  # min_success 0: no floor
    breach = guardrail_check("canary", cfg(min_success=0.5), evidence(cand=arm(0, 3)))
    assert breach is not None
    assert "success upper bound 0.354 < min_success 0.500" in breach.reason


def test_shadow_guardrails() -> None:
    c = cfg()
    assert guardrail_check("shadow", c, evidence("shadow", shadow=good_shadow(5))) is None
    bad = ShadowEvidence(episodes=3, requests=30, errors=6, action_mse=2.5, latency_p95_ms=1400.0)
    breach = guardrail_check("shadow", c, evidence("shadow", shadow=bad))
    assert breach is not None
    assert breach.reason == (
        "guardrail breach in shadow after 3 shadowed episodes: shadow errors 20.0% (6/30 requests) > 5.0%; "
        "shadow latency p95 1400 ms > 1000 ms; shadow action MSE 2.5 > 1"
    )
    early = ShadowEvidence(episodes=2, requests=20, errors=20, action_mse=9.0)
    assert guardrail_check("shadow", c, evidence("shadow", shadow=early)) is None


def test_inconclusive_canary_rolls_back_at_max_episodes() -> None:
    c = cfg(canary_max_episodes=60)
    champ = arm(800, 1000)
    # 70% vs 80%: neither non-inferior (lower < -0.1) nor confidently worse (upper > -0.1).
    assert guardrail_check("canary", c, evidence(cand=arm(41, 59), champ=champ)) is None
    breach = guardrail_check("canary", c, evidence(cand=arm(42, 60), champ=champ))
    assert breach is not None
    assert breach.reason == (
        "inconclusive after 60 canary episodes (canary_max_episodes 60): success lower bound -0.182 <= "
        "-margin -0.100 at 90% confidence (42/60 vs champion 800/1000)"
    )
    # Waiting only for time (or an approval) is not inconclusive.
    ev = evidence(cand=arm(48, 60), champ=champ, seconds=10)
    assert guardrail_check("canary", cfg(canary_min_duration_s=3600), ev) is None


# --- state machine ------------------------------------------------------------------------------------------


def state(stage: Stage, **kw: Any) -> RolloutState:
    return RolloutState(
        stage=stage, stage_started_at=kw.pop("at", T0), has_champion=kw.pop("champ", True), **kw
    )


def test_first_stage_and_start() -> None:
    assert first_stage(cfg(), True) == "shadow"
    assert first_stage(cfg(shadow=False), True) == "canary"
    assert first_stage(cfg(), False) == "canary"
    t = start(cfg(), False, T0)
    assert (t.decision.action, t.decision.to_stage, t.state.stage) == ("start", "canary", "canary")
    assert t.decision.reason == "start in canary (no champion to shadow against)"


def test_happy_path_shadow_canary_full_completed() -> None:
    c = cfg(shadow_min_episodes=3, shadow_min_duration_s=60, full_min_episodes=10)
    s = start(c, True, T0).state
    assert s.stage == "shadow"

    t = decide(s, c, evidence("shadow", shadow=good_shadow(3)), T0 + timedelta(seconds=30))
    assert (t.action, t.changed) == ("wait", False)
    assert t.decision.reason == "waiting: 30 s in shadow < 60 s"

    t1 = T0 + timedelta(seconds=90)
    t = decide(s, c, evidence("shadow", shadow=good_shadow(3)), t1)
    assert (t.action, t.decision.from_stage, t.decision.to_stage) == ("advance", "shadow", "canary")
    assert t.state == RolloutState("canary", t1, True)
    assert t.decision.evidence is not None
    assert t.decision.evidence.stage_seconds == 90
    s = t.state

    t2 = t1 + timedelta(hours=1)
    t = decide(s, c, evidence(cand=arm(34, 40), champ=arm(170, 200)), t2)
    assert (t.action, t.state.stage) == ("advance", "full")
    assert t.decision.evidence is not None
    assert t.decision.evidence.success_diff_lower == pytest.approx(-0.0910, abs=1e-4)
    assert t.decision.evidence.success_diff_upper == pytest.approx(0.0682, abs=1e-4)
    s = t.state

    assert decide(s, c, evidence("full", cand=arm(9, 9)), t2 + timedelta(hours=1)).action == "wait"
    t = decide(s, c, evidence("full", cand=arm(9, 10)), t2 + timedelta(hours=1))
    assert (t.action, t.state.stage) == ("complete", "completed")
    with pytest.raises(ValueError, match="rollout is completed"):
        decide(t.state, c, evidence("completed"), t2)


def test_shadow_without_champion_is_skipped() -> None:
    t = decide(state("shadow", champ=False), cfg(), evidence("shadow"), T0)
    assert (t.action, t.state.stage) == ("advance", "canary")
    assert t.decision.reason == "skip shadow: no champion to shadow against"


@pytest.mark.parametrize(
    ("stage", "ev"),
    [
        ("shadow", evidence("shadow", shadow=ShadowEvidence(episodes=3, requests=30, errors=10))),
        ("canary", evidence(cand=arm(0, 3), champ=arm(90, 100))),
        ("full", evidence("full", cand=arm(3, 3, p95=5000.0))),
    ],
)
@pytest.mark.parametrize("paused", [False, True])
def test_rollback_from_each_active_stage(stage: Stage, ev: Evidence, paused: bool) -> None:
    now = T0 + timedelta(minutes=5)
    t = decide(state(stage, paused=paused), cfg(), ev, now)
    assert (t.action, t.decision.from_stage, t.decision.to_stage) == ("rollback", stage, "rolled_back")
    assert t.state == RolloutState("rolled_back", now, True)
    assert t.decision.reason.startswith(f"guardrail breach in {stage}")
    assert t.decision.reason.endswith("(while paused)") == paused


def test_inconclusive_canary_rolls_back_in_decide() -> None:
    t = decide(state("canary"), cfg(), evidence(cand=arm(42, 60), champ=arm(800, 1000)), T0)
    assert (t.action, t.state.stage) == ("rollback", "rolled_back")
    assert t.decision.reason.startswith("inconclusive after 60 canary episodes")


def test_pause_blocks_advance_but_not_rollback() -> None:
    s = state("canary", paused=True)
    t = decide(s, cfg(), evidence(cand=arm(34, 40), champ=arm(170, 200)), T0)
    assert (t.action, t.state, t.changed) == ("wait", s, False)
    assert t.decision.reason == "paused: no automatic transitions (guardrails still active)"
    assert decide(s, cfg(), evidence(cand=arm(0, 3), champ=arm(90, 100)), T0).action == "rollback"


def test_approval_wait_then_approve() -> None:
    c = cfg(require_approval=True)
    good = evidence(cand=arm(34, 40), champ=arm(170, 200))
    t = decide(state("canary"), c, good, T0)
    assert (t.action, t.awaiting_approval, t.changed, t.state.stage) == ("wait", True, True, "canary")
    assert t.decision.reason.endswith("; awaiting manual approve")
    again = decide(t.state, c, good, T0)
    assert (again.action, again.awaiting_approval, again.changed) == ("wait", True, False)

    # The gate stops passing: the request is withdrawn (and the flag cleared).
    worse = decide(t.state, c, evidence(cand=arm(30, 40), champ=arm(170, 200)), T0)
    assert (worse.action, worse.awaiting_approval, worse.changed) == ("wait", False, True)
    assert worse.decision.reason.startswith("gate no longer passes, approval request withdrawn: ")

    d = manual("approve", t.state, actor="alice", reason="looks fine")
    assert (d.action, d.from_stage, d.to_stage, d.actor) == ("approve", "canary", "full", "alice")
    assert d.reason == "approved by alice: looks fine"
    later = T0 + timedelta(minutes=1)
    assert apply_manual(d, t.state, later) == RolloutState("full", later, True)


def test_pause_resume_abort() -> None:
    s = state("canary")
    d = manual("pause", s)
    assert (d.action, d.to_stage, d.reason) == ("pause", "canary", "paused by operator")
    paused = apply_manual(d, s, T0)
    assert paused == RolloutState("canary", T0, True, paused=True)
    assert apply_manual(manual("resume", paused), paused, T0) == s
    d = manual("abort", paused, actor="bob")
    assert (d.to_stage, d.reason) == ("aborted", "aborted by bob in canary")
    assert apply_manual(d, paused, T0) == RolloutState("aborted", T0, True)


@pytest.mark.parametrize(
    ("action", "st", "message"),
    [
        ("approve", state("canary"), "cannot approve: rollout is canary, not a canary awaiting approval"),
        ("approve", state("full"), "cannot approve: rollout is full, not a canary awaiting approval"),
        (
            "approve",
            state("canary", paused=True, awaiting_approval=True),
            "cannot approve: rollout is canary (paused, awaiting approval); resume it first",
        ),
        ("pause", state("shadow", paused=True), "cannot pause: rollout is shadow (paused) already"),
        ("resume", state("full"), "cannot resume: rollout is full, not paused"),
        ("abort", state("completed"), "cannot abort: rollout is completed (final)"),
        ("pause", state("rolled_back"), "cannot pause: rollout is rolled_back (final)"),
        ("launch", state("canary"), "unknown action 'launch'"),
    ],
)
def test_manual_validation(action: Any, st: RolloutState, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        manual(action, st)


def test_decide_rejects_evidence_of_another_stage() -> None:
    with pytest.raises(ValueError, match="evidence is for full but the rollout is canary"):
        decide(state("canary"), cfg(), evidence("full"), T0)


def test_an_empty_canary_gets_the_robot_with_the_lowest_draw() -> None:
    c = cfg(canary_percent=1)
    fleet = [(r, None, "arm") for r in ROBOTS[:4]]
    empty = next(f"r-{k}" for k in range(1000) if all(cohort_draw(f"r-{k}", r) >= 0.01 for r in ROBOTS[:4]))
    floor = canary_floor(c, empty, fleet)
    assert floor == min(ROBOTS[:4], key=lambda r: cohort_draw(empty, r))
    cohort = {
        r for r in ROBOTS[:4] if assign("canary", c, empty, r, None, "arm", floor).cohort == "candidate"
    }
    assert cohort == {floor}
    # Only in canary; out-of-scope robots are never the floor; a drawn cohort needs none.
    assert assign("shadow", c, empty, floor, None, "arm", floor).cohort == "champion"
    assert canary_floor(cfg(canary_percent=1, embodiments=["other"]), empty, fleet) is None
    drawn = next(f"r-{k}" for k in range(1000) if any(cohort_draw(f"r-{k}", r) < 0.01 for r in ROBOTS[:4]))
    assert canary_floor(c, drawn, fleet) is None
    assert canary_floor(c, empty, []) is None
