"""When to retrain: pure rules over catalog facts, so every trigger is testable without a clock.

Three rules, each off at 0 (all three off: the policy is disabled):

* new data: at least `min_new_episodes` episodes committed since the baseline;
* stale data: the last snapshot is older than `max_age_h` hours and at least one episode is new;
* schedule: `schedule_h` hours passed since the last run was created (any trigger), data or not.

The baseline is the last snapshot's newest episode, or the last run's creation when that is later
(`scheduler.check_and_launch` counts `new_episodes` from it). A run snapshots everything committed
before it starts, so in the normal case this is the snapshot; after a failed run it means a retry
waits for fresh data (or `max_age_h` more hours) instead of failing on the same data every check.
Nothing triggers while a run is queued or running.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from wamfleet.platform.settings import Settings


@dataclass(frozen=True)
class Decision:
    trigger: Literal["policy", "schedule"]
    reason: str


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"


def _limit(hours: float) -> str:
    return f"{hours:g} h"


@dataclass(frozen=True)
class RetrainPolicy:
    min_new_episodes: int = 0
    max_age_h: float = 0.0
    schedule_h: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetrainPolicy:
        return cls(
            min_new_episodes=settings.retrain_min_new_episodes,
            max_age_h=settings.retrain_max_age_h,
            schedule_h=settings.retrain_schedule_h,
        )

    @property
    def enabled(self) -> bool:
        return self.min_new_episodes > 0 or self.max_age_h > 0 or self.schedule_h > 0

    def describe(self) -> str:
        if not self.enabled:
            return "retrain policy off (all of min_new_episodes, max_age_h, schedule_h are 0)"
        rules = []
        if self.min_new_episodes > 0:
            rules.append(f">= {self.min_new_episodes} new episodes")
        if self.max_age_h > 0:
            rules.append(f"snapshot older than {_limit(self.max_age_h)} with new episodes")
        if self.schedule_h > 0:
            rules.append(f"every {_limit(self.schedule_h)}")
        return "retrain on " + " or ".join(rules)

    def decide(
        self,
        now: datetime,
        last_snapshot_at: datetime | None,
        newest_committed_at: datetime | None,
        new_episodes: int,
        last_run_created_at: datetime | None,
        active: bool,
    ) -> Decision | None:
        """The first rule that fires (new data, stale data, schedule), or None."""
        if active or not self.enabled:
            return None
        since = (
            "ever (no snapshot yet)"
            if newest_committed_at is None
            else f"since {newest_committed_at.isoformat(timespec='seconds')}"
        )
        if last_run_created_at is not None and (
            newest_committed_at is None or last_run_created_at > newest_committed_at
        ):
            since = f"since the last run ({last_run_created_at.isoformat(timespec='seconds')})"
        if self.min_new_episodes > 0 and new_episodes >= self.min_new_episodes:
            return Decision(
                "policy",
                f"{new_episodes} new episodes {since} (threshold {self.min_new_episodes})",
            )
        if self.max_age_h > 0 and new_episodes > 0:
            refreshed = max(
                (t for t in (last_snapshot_at, last_run_created_at) if t is not None), default=None
            )
            limit = timedelta(hours=self.max_age_h)
            if refreshed is None:
                return Decision(
                    "policy",
                    f"no snapshot yet and {new_episodes} episodes committed "
                    f"(max age {_limit(self.max_age_h)})",
                )
            if now - refreshed > limit:
                what = "snapshot" if refreshed == last_snapshot_at else "run"
                return Decision(
                    "policy",
                    f"the last {what} is {_hours(now - refreshed)} old (max {_limit(self.max_age_h)}) "
                    f"and {new_episodes} new episodes arrived {since}",
                )
        if self.schedule_h > 0:
            if last_run_created_at is None:
                return Decision("schedule", f"no retrain yet (schedule every {_limit(self.schedule_h)})")
            if now - last_run_created_at >= timedelta(hours=self.schedule_h):
                return Decision(
                    "schedule",
                    f"the last retrain was created {_hours(now - last_run_created_at)} ago "
                    f"(schedule every {_limit(self.schedule_h)})",
                )
        return None
