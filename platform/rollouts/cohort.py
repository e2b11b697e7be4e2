"""Which robots run the candidate: a stable hash of (rollout, robot), filtered by site and embodiment.

Pure functions over ids and the config, so an assignment can be recomputed anywhere (the API, the
controller, a test) and always agrees. The draw is independent per rollout, so the same robots are not
always the guinea pigs; within one rollout it never changes, so a cohort is sticky: a robot is in the
canary iff its draw is below `canary_percent / 100`, and growing the percentage only adds robots.
The shadow mirror uses the same draw, so (when canary_percent <= shadow_percent) every canary robot
has already mirrored its observations to the candidate.

A small fleet can draw nobody (4 robots at 50%: one rollout in 16), and a canary without robots
waits forever for evidence; so when no in-scope robot's draw falls under the percentage, the one
with the lowest draw runs the candidate (`canary_floor`): every canary has at least one robot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal, NamedTuple

from wamfleet.platform.contracts.rollout import RolloutConfig, Stage

Cohort = Literal["champion", "candidate"]

_DRAW_BITS = 53  # a float's mantissa: every draw is exactly representable, all of [0, 1) reachable


def cohort_draw(rollout_id: str, robot_id: str) -> float:
    """Uniform in [0, 1), fixed for (rollout, robot), independent across rollouts (sha256, not hash())."""
    digest = hashlib.sha256(rollout_id.encode() + b"\x00" + robot_id.encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> (64 - _DRAW_BITS)) / float(1 << _DRAW_BITS)


def in_scope(config: RolloutConfig, site: str | None, embodiment: str | None) -> bool:
    """Whether the rollout applies to a robot; an empty filter matches all, a robot without a site
    (or embodiment) matches only when that filter is empty."""
    if config.sites and site not in config.sites:
        return False
    return not (config.embodiments and embodiment not in config.embodiments)


class Assignment(NamedTuple):
    """What one robot runs for its next whole episode: which version executes, and whether it also
    mirrors its observations to the candidate (shadow: logged and compared, never executed)."""

    cohort: Cohort
    shadow: bool


def canary_floor(
    config: RolloutConfig, rollout_id: str, robots: Iterable[tuple[str, str | None, str | None]]
) -> str | None:
    """The robot added to an empty canary: of the in-scope (robot_id, site, embodiment), the one with
    the lowest draw, when none falls under canary_percent; None when the drawn cohort has a robot."""
    scoped = [robot_id for robot_id, site, embodiment in robots if in_scope(config, site, embodiment)]
    if not scoped or config.canary_percent <= 0:
        return None
    draws = {robot_id: cohort_draw(rollout_id, robot_id) for robot_id in scoped}
    if any(draw < config.canary_percent / 100 for draw in draws.values()):
        return None
    return min(draws, key=lambda robot_id: draws[robot_id])


def assign(
    stage: Stage,
    config: RolloutConfig,
    rollout_id: str,
    robot_id: str,
    site: str | None,
    embodiment: str | None,
    floor: str | None = None,
) -> Assignment:
    """One robot's assignment in a rollout at `stage` (cohorts only: the controller maps them to versions
    and endpoints, and gives no policy to the "champion" cohort when there is no champion).

    * out of scope: champion, no shadow (whatever the stage);
    * shadow: champion executes; robots with draw < shadow_percent mirror to the candidate;
    * canary: candidate iff draw < canary_percent (sticky), or it is the `floor` robot
      (`canary_floor`: the drawn cohort is empty);
    * full, completed: candidate (completed: it is the champion now);
    * rolled_back, aborted: champion.

    A shadow stage only exists when there is a champion (`stages.first_stage`), so mirroring never
    lacks an executed action to compare with.
    """
    if not in_scope(config, site, embodiment):
        return Assignment("champion", False)
    draw = cohort_draw(rollout_id, robot_id)
    if stage == "shadow":
        return Assignment("champion", draw < config.shadow_percent / 100)
    if stage == "canary":
        drawn = draw < config.canary_percent / 100 or robot_id == floor
        return Assignment("candidate" if drawn else "champion", False)
    if stage in ("full", "completed"):
        return Assignment("candidate", False)
    return Assignment("champion", False)  # rolled_back, aborted
