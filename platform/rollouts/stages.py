"""The rollout state machine: pure functions from (state, config, evidence, now) to a transition.

    shadow --> canary --> full --> completed
       \\         \\         \\
        +---------+---------+--> rolled_back (guardrail breach, inconclusive canary)
                                  aborted     (manual, from any active stage)

Shadow is skipped (the rollout starts at canary) when config.shadow is False or there is no champion
to shadow against. Guardrails are checked first, on every call, paused or not: pausing freezes the
automatic advances only, because a pause is for looking at a rollout, never a way to keep a broken
candidate running. Assignments do not change while paused (the cohort keeps running what it ran), and
the paused time counts toward the stage's minimum duration. With require_approval a passing canary
waits (awaiting_approval) until an operator approves; approval moves it to full at once.
`decide` returns a Transition: the controller persists `.state` and records `.decision` when `.changed`
(a plain wait changes nothing). `manual` returns the Decision; `apply_manual` gives the state after it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from wamfleet.platform.contracts.rollout import (
    ACTIVE_STAGES,
    Action,
    Decision,
    Evidence,
    RolloutConfig,
    RolloutInfo,
    Stage,
)
from wamfleet.platform.rollouts.gates import annotate, guardrail_check, promotion_check

ManualAction = Literal["approve", "pause", "resume", "abort"]
MANUAL_ACTIONS: tuple[ManualAction, ...] = ("approve", "pause", "resume", "abort")

_NEXT: dict[Stage, Stage] = {"shadow": "canary", "canary": "full", "full": "completed"}


@dataclass(frozen=True)
class RolloutState:
    """What a decision depends on besides config and evidence (the columns of the rollouts row)."""

    stage: Stage
    stage_started_at: datetime
    has_champion: bool
    paused: bool = False
    awaiting_approval: bool = False

    @classmethod
    def of(cls, info: RolloutInfo) -> RolloutState:
        return cls(
            stage=info.stage,
            stage_started_at=info.stage_started_at,
            has_champion=info.champion_version is not None,
            paused=info.paused,
            awaiting_approval=info.awaiting_approval,
        )

    @property
    def active(self) -> bool:
        return self.stage in ACTIVE_STAGES


@dataclass(frozen=True)
class Transition:
    """A decision and the state after it; `changed`: stage or flags differ (a plain wait needs no row)."""

    decision: Decision
    state: RolloutState
    changed: bool

    @property
    def action(self) -> Action:
        return self.decision.action

    @property
    def awaiting_approval(self) -> bool:
        return self.state.awaiting_approval


def _describe(state: RolloutState) -> str:
    flags = [f for f, on in (("paused", state.paused), ("awaiting approval", state.awaiting_approval)) if on]
    return state.stage + (f" ({', '.join(flags)})" if flags else "")


def _move(state: RolloutState, to: Stage, now: datetime) -> RolloutState:
    """A new stage starts now, unpaused, awaiting nothing."""
    return RolloutState(stage=to, stage_started_at=now, has_champion=state.has_champion)


def _transition(
    state: RolloutState,
    new: RolloutState,
    action: Action,
    reason: str,
    evidence: Evidence | None,
    actor: str = "controller",
) -> Transition:
    decision = Decision(
        action=action,
        from_stage=state.stage,
        to_stage=new.stage,
        reason=reason,
        evidence=evidence,
        actor=actor,
    )
    return Transition(decision, new, new != state)


def first_stage(config: RolloutConfig, has_champion: bool) -> Stage:
    """Shadow needs a champion whose executed actions the candidate's are compared with."""
    return "shadow" if config.shadow and has_champion else "canary"


def start(config: RolloutConfig, has_champion: bool, now: datetime, actor: str = "controller") -> Transition:
    """The rollout's first decision ("start", from and to its first stage)."""
    stage = first_stage(config, has_champion)
    if stage == "shadow":
        reason = "start in shadow"
    elif not config.shadow:
        reason = "start in canary (shadow disabled)"
    else:
        reason = "start in canary (no champion to shadow against)"
    state = RolloutState(stage=stage, stage_started_at=now, has_champion=has_champion)
    decision = Decision(action="start", from_stage=stage, to_stage=stage, reason=reason, actor=actor)
    return Transition(decision, state, True)


def decide(state: RolloutState, config: RolloutConfig, evidence: Evidence, now: datetime) -> Transition:
    """The automatic step: roll back on a guardrail breach, else advance when the stage's gate passes.

    `evidence` covers the current stage only (evidence.stage must equal state.stage); its
    stage_seconds and success bounds are recomputed here from `now` and stored with the decision.
    """
    if not state.active:
        raise ValueError(f"rollout is {_describe(state)}: a final stage takes no decisions")
    if evidence.stage != state.stage:
        raise ValueError(f"evidence is for {evidence.stage} but the rollout is {_describe(state)}")
    seconds = max(0.0, (now - state.stage_started_at).total_seconds())
    evidence = annotate(evidence.model_copy(update={"stage_seconds": seconds}), config)

    breach = guardrail_check(state.stage, config, evidence)
    if breach is not None:
        reason = breach.reason + (" (while paused)" if state.paused else "")
        return _transition(state, _move(state, "rolled_back", now), "rollback", reason, evidence)
    if state.paused:
        return _transition(
            state, state, "wait", "paused: no automatic transitions (guardrails still active)", evidence
        )
    if state.stage == "shadow" and not (config.shadow and state.has_champion):
        why = "shadow disabled" if not config.shadow else "no champion to shadow against"
        return _transition(state, _move(state, "canary", now), "advance", f"skip shadow: {why}", evidence)

    gate = promotion_check(state.stage, config, evidence, state.awaiting_approval)
    if not gate.passed:
        lead = "gate no longer passes, approval request withdrawn" if state.awaiting_approval else "waiting"
        new = replace(state, awaiting_approval=False)
        return _transition(state, new, "wait", f"{lead}: {gate.reason}", evidence)
    if gate.awaiting_approval:
        return _transition(state, replace(state, awaiting_approval=True), "wait", gate.reason, evidence)
    to = _NEXT[state.stage]
    action: Action = "complete" if to == "completed" else "advance"
    return _transition(state, _move(state, to, now), action, gate.reason, evidence)


def manual_action(action: str) -> ManualAction:
    """`action` as a ManualAction, for callers that hold a plain string (ValueError otherwise)."""
    for known in MANUAL_ACTIONS:
        if action == known:
            return known
    raise ValueError(f"unknown action {action!r}: expected one of {', '.join(MANUAL_ACTIONS)}")


def manual(
    action: ManualAction,
    state: RolloutState,
    *,
    evidence: Evidence | None = None,
    actor: str = "operator",
    reason: str = "",
) -> Decision:
    """An operator's action, validated against the state (ValueError naming the state otherwise).

    approve: only in canary while awaiting approval and not paused (paused, the gate is not
    re-evaluated, so the request may be stale: resume first); moves to full.
    pause: only while active and not paused. resume: only while paused. abort: any active stage.
    The effect on the state follows from the action alone (`apply_manual`).
    """
    action = manual_action(action)  # callers typed loosely (JSON, tests) reach here too
    if not state.active:
        raise ValueError(f"cannot {action}: rollout is {_describe(state)} (final)")
    if action == "approve":
        if state.stage != "canary" or not state.awaiting_approval:
            raise ValueError(f"cannot approve: rollout is {_describe(state)}, not a canary awaiting approval")
        if state.paused:
            raise ValueError(f"cannot approve: rollout is {_describe(state)}; resume it first")
    elif action == "pause" and state.paused:
        raise ValueError(f"cannot pause: rollout is {_describe(state)} already")
    elif action == "resume" and not state.paused:
        raise ValueError(f"cannot resume: rollout is {_describe(state)}, not paused")
    to: Stage = "full" if action == "approve" else "aborted" if action == "abort" else state.stage
    past = {"approve": "approved", "pause": "paused", "resume": "resumed", "abort": "aborted"}[action]
    where = f" in {state.stage}" if action == "abort" else ""
    note = f": {reason}" if reason else ""
    return Decision(
        action=action,
        from_stage=state.stage,
        to_stage=to,
        reason=f"{past} by {actor}{where}{note}",
        evidence=evidence,
        actor=actor,
    )


def apply_manual(decision: Decision, state: RolloutState, now: datetime) -> RolloutState:
    """The state after a (validated) manual decision: pause/resume flip `paused`, approve and abort
    start their stage at `now`."""
    if decision.action == "pause":
        return replace(state, paused=True)
    if decision.action == "resume":
        return replace(state, paused=False)
    if decision.action in ("approve", "abort"):
        return _move(state, decision.to_stage, now)
    raise ValueError(f"not a manual action: {decision.action}")
