"""The evidence a rollout's gates judge, read from what the robots reported to the catalog.

Robots stamp every autonomous episode with the policy version that drove it and tag it with
their request counts, errors, latencies and, when mirroring, the candidate's shadow figures
(`TAG_*` in contracts/rollout.py). Gathering turns those rows into `Evidence` and decides
nothing: the stages and gates judge it, the controller applies what they decide.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from wamfleet.platform.catalog.tables import Episode, EpisodeTag, Robot, Rollout
from wamfleet.platform.contracts.rollout import (
    TAG_ERRORS,
    TAG_LATENCY_P95_MS,
    TAG_REQUESTS,
    TAG_SHADOW_ACTION_MSE,
    TAG_SHADOW_ERRORS,
    TAG_SHADOW_LATENCY_P95_MS,
    TAG_SHADOW_REQUESTS,
    TAG_SHADOW_VERSION,
    ArmEvidence,
    Evidence,
    RolloutConfig,
    ShadowEvidence,
)
from wamfleet.platform.rollouts import cohort, gates


def served_version(model_name: str, version: str) -> str:
    """What a served version calls itself (robots stamp it on their episodes)."""
    return f"{model_name}/{version}"


def gather_evidence(session: Session, row: Rollout, model_name: str, at: datetime) -> Evidence:
    """What `row`'s gates judge at `at`, from the in-scope autonomous episodes since it began."""
    config = RolloutConfig.model_validate(row.config)
    candidate = served_version(model_name, row.candidate_version)
    champion = served_version(model_name, row.champion_version) if row.champion_version else None
    # The candidate is judged on this stage's episodes; the champion's baseline is everything
    # it did since the rollout began (in full no in-scope robot runs it any more).
    episodes = list(
        session.scalars(
            select(Episode).where(
                Episode.source == "autonomous",
                Episode.committed_at >= row.created_at,
                Episode.policy_version.in_([v for v in (candidate, champion) if v]),
            )
        )
    )
    tags: dict[str, dict[str, str]] = {e.episode_id: {} for e in episodes}
    if episodes:
        for tag in session.scalars(select(EpisodeTag).where(EpisodeTag.episode_id.in_(list(tags)))):
            tags[tag.episode_id][tag.key] = tag.value
    robots = {r.robot_id: r for r in session.scalars(select(Robot))}

    def in_scope(e: Episode) -> bool:
        robot = robots.get(e.robot_id)
        return robot is not None and cohort.in_scope(config, robot.site, robot.embodiment_name)

    scoped = [e for e in episodes if in_scope(e)]
    shadow = ShadowEvidence()
    mse: list[float] = []
    shadow_p95: list[float] = []
    for e in scoped:
        t = tags[e.episode_id]
        if t.get(TAG_SHADOW_VERSION) == candidate and e.committed_at >= row.stage_started_at:
            shadow.episodes += 1
            shadow.requests += int(t.get(TAG_SHADOW_REQUESTS, "0"))
            shadow.errors += int(t.get(TAG_SHADOW_ERRORS, "0"))
            if TAG_SHADOW_ACTION_MSE in t:
                mse.append(float(t[TAG_SHADOW_ACTION_MSE]))
            if TAG_SHADOW_LATENCY_P95_MS in t:
                shadow_p95.append(float(t[TAG_SHADOW_LATENCY_P95_MS]))
    shadow.action_mse = float(np.mean(mse)) if mse else None
    shadow.latency_p95_ms = float(np.max(shadow_p95)) if shadow_p95 else None
    this_stage = [e for e in scoped if e.committed_at >= row.stage_started_at]
    cand = _arm(row.candidate_version, [e for e in this_stage if e.policy_version == candidate], tags)
    champ = _arm(row.champion_version, [e for e in scoped if champion and e.policy_version == champion], tags)
    interval = gates.diff_interval(cand, champ, config.confidence) if champ.episodes else None
    return Evidence(
        stage=row.stage,
        stage_seconds=(at - row.stage_started_at).total_seconds(),
        candidate=cand,
        champion=champ,
        shadow=shadow,
        success_diff_lower=interval[0] if interval else None,
        success_diff_upper=interval[1] if interval else None,
    )


def _arm(version: str | None, episodes: list[Episode], tags: dict[str, dict[str, str]]) -> ArmEvidence:
    """One version's outcomes and serving figures summed over its episodes."""
    arm = ArmEvidence(version=version)
    p95s = []
    for e in episodes:
        t = tags[e.episode_id]
        arm.episodes += 1
        arm.successes += int(bool(e.success))
        arm.requests += int(t.get(TAG_REQUESTS, "0"))
        arm.errors += int(t.get(TAG_ERRORS, "0"))
        if TAG_LATENCY_P95_MS in t:
            p95s.append(float(t[TAG_LATENCY_P95_MS]))
    arm.latency_p95_ms = float(np.percentile(p95s, 95)) if p95s else None
    return arm
