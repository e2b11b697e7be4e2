"""The gates of a rollout: when a stage may move on, and when a guardrail rolls it back.

Success is compared with Newcombe's hybrid score interval (method 10 of Newcombe 1998) for the
difference p_cand - p_champ of two independent proportions, built from Wilson score intervals at
z = Phi^-1(confidence). Each bound is one-sided at `confidence`: promotion needs the lower bound above
-success_margin (non-inferiority), the success guardrail fires when the upper bound is below it
(confidently worse by more than the margin). Without champion evidence the candidate's own Wilson
bounds are compared with `min_success`. Wilson/Newcombe rather than the normal approximation because
canaries are small and success rates sit near 0 or 1, where the Wald interval collapses to a point.

Every check names its numbers, so a decision's reason says exactly why it was taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import sqrt
from statistics import NormalDist

from wamfleet.platform.contracts.rollout import (
    FINAL_STAGES,
    ArmEvidence,
    Evidence,
    RolloutConfig,
    Stage,
)

# Checks that are about the candidate's behaviour (not the calendar or the operator): a canary that
# reaches canary_max_episodes with one of these still failing is inconclusive and rolls back.
EVIDENCE_CHECKS = frozenset({"episodes", "success", "latency", "errors"})


def z_value(confidence: float) -> float:
    """Phi^-1(confidence): the one-sided normal quantile (0.9 -> 1.2816, 0.975 -> 1.9600)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(confidence)


def wilson_interval(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval for successes/n: each bound one-sided at Phi(z); (0, 1) without data.

    lower, upper = (p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), with p = successes/n.
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if z < 0:
        raise ValueError(f"z must be >= 0, got {z}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    lower = 0.0 if successes == 0 else max(0.0, centre - half)
    upper = 1.0 if successes == n else min(1.0, centre + half)
    return lower, upper


def wilson_interval95(successes: int, n: int) -> tuple[float, float]:
    """The two-sided 95% Wilson interval (each bound at 97.5%): how reports quote a success count."""
    return wilson_interval(successes, n, z_value(0.975))


def diff_interval(cand: ArmEvidence, champ: ArmEvidence, confidence: float) -> tuple[float, float] | None:
    """Newcombe's hybrid score bounds for p_cand - p_champ, each one-sided at `confidence`.

    With (l1, u1) and (l2, u2) the Wilson bounds of the candidate (p1) and the champion (p2):
    lower = p1 - p2 - sqrt((p1 - l1)^2 + (u2 - p2)^2), upper = p1 - p2 + sqrt((u1 - p1)^2 + (p2 - l2)^2).
    None when either arm has no episodes (nothing to compare). A two-sided interval at level 1 - a
    is the pair at confidence 1 - a/2.
    """
    if cand.episodes == 0 or champ.episodes == 0:
        return None
    z = z_value(confidence)
    p1, p2 = cand.successes / cand.episodes, champ.successes / champ.episodes
    l1, u1 = wilson_interval(cand.successes, cand.episodes, z)
    l2, u2 = wilson_interval(champ.successes, champ.episodes, z)
    d = p1 - p2
    return d - sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def annotate(evidence: Evidence, config: RolloutConfig) -> Evidence:
    """The evidence with its success-difference bounds filled in (what a decision stores)."""
    bounds = diff_interval(evidence.candidate, evidence.champion, config.confidence)
    lower, upper = bounds if bounds is not None else (None, None)
    return evidence.model_copy(update={"success_diff_lower": lower, "success_diff_upper": upper})


@dataclass(frozen=True)
class Check:
    """One condition of a gate: its name, whether it holds, and a sentence with the numbers."""

    name: str
    ok: bool
    text: str


@dataclass(frozen=True)
class GateResult:
    """A gate's verdict. For promotion, `passed` means the stage may move on (`awaiting_approval`:
    it may, once an operator approves); for a guardrail, a result at all means a breach."""

    passed: bool
    reason: str
    checks: tuple[Check, ...] = ()
    awaiting_approval: bool = False

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok)


def _pct(confidence: float) -> str:
    return f"{round(confidence * 100, 2):g}%"


def _num(x: float) -> str:
    return f"{x + 0.0:.3f}"  # + 0.0 turns -0.0 into 0.0


def _ms(x: float) -> str:
    return f"{x:g} ms"


def _arm(arm: ArmEvidence) -> str:
    return f"{arm.successes}/{arm.episodes}"


def _success_check(config: RolloutConfig, evidence: Evidence) -> Check:
    """Non-inferiority: lower bound of p_cand - p_champ > -margin; no champion: Wilson lower >= floor."""
    cand, champ, conf = evidence.candidate, evidence.champion, config.confidence
    bounds = diff_interval(cand, champ, conf)
    if bounds is None:
        lower, _ = wilson_interval(cand.successes, cand.episodes, z_value(conf))
        ok = lower >= config.min_success
        rel = ">=" if ok else "<"
        return Check(
            "success",
            ok,
            f"success lower bound {_num(lower)} {rel} min_success {_num(config.min_success)} "
            f"at {_pct(conf)} confidence ({_arm(cand)}; no champion evidence)",
        )
    ok = bounds[0] > -config.success_margin
    rel = ">" if ok else "<="
    return Check(
        "success",
        ok,
        f"success lower bound {_num(bounds[0])} {rel} -margin {_num(-config.success_margin)} "
        f"at {_pct(conf)} confidence ({_arm(cand)} vs champion {_arm(champ)})",
    )


def _count(name: str, value: int, minimum: int) -> Check:
    ok = value >= minimum
    return Check("episodes", ok, f"{value} {name} episodes {'>=' if ok else '<'} {minimum}")


def _duration(stage: Stage, seconds: float, minimum: float) -> Check:
    ok = seconds >= minimum
    return Check("duration", ok, f"{seconds:.0f} s in {stage} {'>=' if ok else '<'} {minimum:g} s")


def _latency(name: str, p95: float | None, budget: float, required: bool) -> Check:
    if p95 is None:
        return Check(name, not required, f"{name} p95 not reported{'' if required else ' (not required)'}")
    ok = p95 <= budget
    return Check(name, ok, f"{name} p95 {_ms(p95)} {'<=' if ok else '>'} {_ms(budget)}")


def _errors(name: str, errors: int, requests: int, bound: float) -> Check:
    rate = errors / requests if requests else 0.0
    ok = rate <= bound
    return Check(
        name, ok, f"{name} {rate:.1%} ({errors}/{requests} requests) {'<=' if ok else '>'} {bound:.1%}"
    )


def _promotion_checks(stage: Stage, config: RolloutConfig, evidence: Evidence) -> list[Check]:
    if stage == "shadow":
        sh = evidence.shadow
        required = config.shadow_min_episodes > 0
        if sh.action_mse is None:
            mse = Check("shadow_mse", not required, "shadow action MSE not reported")
        else:
            ok = sh.action_mse <= config.shadow_max_action_mse
            rel, bound = ("<=" if ok else ">"), config.shadow_max_action_mse
            mse = Check("shadow_mse", ok, f"shadow action MSE {sh.action_mse:.4g} {rel} {bound:g}")
        return [
            _count("shadow", sh.episodes, config.shadow_min_episodes),
            _duration(stage, evidence.stage_seconds, config.shadow_min_duration_s),
            mse,
            _latency("shadow latency", sh.latency_p95_ms, config.latency_p95_budget_ms, required),
            _errors("shadow errors", sh.errors, sh.requests, config.max_error_rate),
        ]
    if stage == "canary":
        cand = evidence.candidate
        return [
            _success_check(config, evidence),
            _count("canary", cand.episodes, config.canary_min_episodes),
            _latency("latency", cand.latency_p95_ms, config.latency_p95_budget_ms, True),
            _errors("errors", cand.errors, cand.requests, config.max_error_rate),
            _duration(stage, evidence.stage_seconds, config.canary_min_duration_s),
        ]
    if stage == "full":
        return [
            _count("full", evidence.candidate.episodes, config.full_min_episodes),
            _duration(stage, evidence.stage_seconds, config.full_min_duration_s),
        ]
    raise ValueError(f"rollout is {stage}: a final stage has no gate")


def promotion_check(
    stage: Stage, config: RolloutConfig, evidence: Evidence, awaiting_approval: bool = False
) -> GateResult:
    """May `stage` move on (shadow -> canary, canary -> full, full -> completed)?

    shadow: enough shadowed episodes and time, action MSE, latency and errors within bounds;
    canary: success non-inferior at `confidence`, >= canary_min_episodes, p95 within budget, error
    rate within bound, canary_min_duration_s; full: full_min_episodes and full_min_duration_s
    (its guardrails keep watching success). With require_approval a passing canary gate says
    awaiting_approval; `awaiting_approval` (the rollout's flag) only changes the wording.
    Guardrails are separate (`guardrail_check`): run them first.
    """
    checks = _promotion_checks(stage, config, evidence)
    failed = [c for c in checks if not c.ok]
    if failed:
        return GateResult(False, "; ".join(c.text for c in failed), tuple(checks))
    reason = "; ".join(c.text for c in checks)
    if stage == "canary" and config.require_approval:
        wait = "still awaiting manual approve" if awaiting_approval else "awaiting manual approve"
        return GateResult(True, f"{reason}; {wait}", tuple(checks), awaiting_approval=True)
    return GateResult(True, reason, tuple(checks))


def _breaches(stage: Stage, config: RolloutConfig, evidence: Evidence) -> tuple[int, list[Check]]:
    if stage == "shadow":
        sh = evidence.shadow
        if sh.episodes < config.guardrail_min_episodes:
            return sh.episodes, []
        found = [_errors("shadow errors", sh.errors, sh.requests, config.max_error_rate)]
        found.append(_latency("shadow latency", sh.latency_p95_ms, config.latency_p95_budget_ms, False))
        if sh.action_mse is not None and sh.action_mse > config.shadow_max_action_mse:
            found.append(
                Check(
                    "shadow_mse",
                    False,
                    f"shadow action MSE {sh.action_mse:.4g} > {config.shadow_max_action_mse:g}",
                )
            )
        return sh.episodes, [c for c in found if not c.ok]
    cand = evidence.candidate
    if cand.episodes < config.guardrail_min_episodes:
        return cand.episodes, []
    found = [
        _errors("errors", cand.errors, cand.requests, config.max_error_rate),
        _latency("latency", cand.latency_p95_ms, config.latency_p95_budget_ms, False),
    ]
    conf = config.confidence
    bounds = diff_interval(cand, evidence.champion, conf)
    if bounds is None:
        _, upper = wilson_interval(cand.successes, cand.episodes, z_value(conf))
        if upper < config.min_success:
            found.append(
                Check(
                    "success",
                    False,
                    f"success upper bound {_num(upper)} < min_success {_num(config.min_success)} "
                    f"at {_pct(conf)} confidence ({_arm(cand)}; no champion evidence)",
                )
            )
    elif bounds[1] < -config.success_margin:
        found.append(
            Check(
                "success",
                False,
                f"success upper bound {_num(bounds[1])} < -margin {_num(-config.success_margin)} "
                f"at {_pct(conf)} confidence ({_arm(cand)} vs champion {_arm(evidence.champion)}): "
                "confidently worse",
            )
        )
    return cand.episodes, [c for c in found if not c.ok]


def guardrail_check(stage: Stage, config: RolloutConfig, evidence: Evidence) -> GateResult | None:
    """A breach that must roll back now, or None.

    Only with >= guardrail_min_episodes episodes of the stage's arm (shadowed episodes in shadow,
    candidate episodes in canary and full): error rate > max_error_rate, latency p95 > budget, success
    upper bound < -margin (< min_success without champion evidence); in shadow the shadow error rate,
    action MSE and latency instead. A canary with >= canary_max_episodes candidate episodes whose
    evidence checks still fail is inconclusive and rolls back too: that bounds every canary (a canary
    that only waits for its minimum duration or an approval is not inconclusive).
    """
    if stage in FINAL_STAGES:
        raise ValueError(f"rollout is {stage}: a final stage has no guardrails")
    episodes, found = _breaches(stage, config, evidence)
    if found:
        arm = "shadowed" if stage == "shadow" else "candidate"
        reason = f"guardrail breach in {stage} after {episodes} {arm} episodes: " + "; ".join(
            c.text for c in found
        )
        return GateResult(False, reason, tuple(found))
    if stage == "canary" and evidence.candidate.episodes >= config.canary_max_episodes:
        checks = _promotion_checks(stage, config, evidence)
        unresolved = [c for c in checks if not c.ok and c.name in EVIDENCE_CHECKS]
        if unresolved:
            episodes, bound = evidence.candidate.episodes, config.canary_max_episodes
            head = f"inconclusive after {episodes} canary episodes (canary_max_episodes {bound})"
            reason = f"{head}: " + "; ".join(c.text for c in unresolved)
            return GateResult(False, reason, tuple(unresolved))
    return None
