"""Staged rollouts: the configuration, the evidence robots report, the decisions, the assignment.

A rollout takes a `candidate` model version through `shadow` (copies of live observations,
chunks compared with the champion's, never executed), `canary` (a sticky cohort of robots runs
it for whole episodes) and `full` (every matching robot), and ends `completed`, `rolled_back`
or `aborted`. Robots ask for their assignment at episode boundaries only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from wamfleet.platform.contracts.limits import INT8_MAX, Text

Stage = Literal["shadow", "canary", "full", "completed", "rolled_back", "aborted"]
ACTIVE_STAGES: tuple[Stage, ...] = ("shadow", "canary", "full")
FINAL_STAGES: tuple[Stage, ...] = ("completed", "rolled_back", "aborted")

# Episode tags the robot's runner writes, from which the platform computes the evidence.
TAG_LATENCY_P95_MS = "policy.latency_p95_ms"
TAG_REQUESTS = "policy.requests"
TAG_ERRORS = "policy.errors"
TAG_SHADOW_VERSION = "shadow.version"
TAG_SHADOW_REQUESTS = "shadow.requests"
TAG_SHADOW_ERRORS = "shadow.errors"
TAG_SHADOW_ACTION_MSE = "shadow.action_mse"
TAG_SHADOW_LATENCY_P95_MS = "shadow.latency_p95_ms"


class RolloutConfig(BaseModel):
    """Percentages, minimum durations and the gate's bounds; stored with the rollout."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    shadow: bool = Field(default=True, description="start with a shadow stage")
    shadow_percent: float = Field(
        default=100.0, gt=0, le=100, description="robots that mirror to the candidate"
    )
    shadow_min_episodes: int = Field(
        default=3, ge=0, le=INT8_MAX, description="shadowed episodes before canary"
    )
    shadow_min_duration_s: float = Field(default=0.0, ge=0)
    shadow_max_action_mse: float = Field(
        default=1.0,
        gt=0,
        description="mean squared difference of candidate vs executed actions (normalised units)",
    )
    canary_percent: float = Field(
        default=25.0, gt=0, le=100, description="sticky cohort share, by robot id hash"
    )
    canary_min_episodes: int = Field(
        default=10, ge=1, le=INT8_MAX, description="candidate episodes before promotion"
    )
    canary_max_episodes: int = Field(
        default=60,
        ge=1,
        le=INT8_MAX,
        description="no confident verdict by then: roll back (bounds every canary)",
    )
    canary_min_duration_s: float = Field(default=0.0, ge=0)
    full_min_episodes: int = Field(
        default=10, ge=0, le=INT8_MAX, description="episodes in full before the rollout completes"
    )
    full_min_duration_s: float = Field(default=0.0, ge=0)
    sites: list[Text] = Field(default_factory=list, description="only robots at these sites (empty: all)")
    embodiments: list[Text] = Field(
        default_factory=list, description="only robots of these embodiments (empty: all)"
    )
    success_margin: float = Field(
        default=0.1, ge=0, le=1, description="candidate may be this much worse, no more"
    )
    confidence: float = Field(
        default=0.9, gt=0.5, lt=1, description="one-sided confidence of the success test"
    )
    min_success: float = Field(
        default=0.0, ge=0, le=1, description="floor when there is no champion to compare"
    )
    latency_p95_budget_ms: float = Field(default=1000.0, gt=0)
    max_error_rate: float = Field(default=0.05, ge=0, le=1, description="failed policy requests / requests")
    guardrail_min_episodes: int = Field(
        default=3, ge=1, le=INT8_MAX, description="episodes before a guardrail may fire"
    )
    require_approval: bool = Field(default=False, description="canary waits for a manual approve before full")

    @model_validator(mode="after")
    def _bounds(self) -> RolloutConfig:
        if self.canary_max_episodes < self.canary_min_episodes:
            raise ValueError("canary_max_episodes: must be >= canary_min_episodes")
        return self


class StartRollout(BaseModel):
    """Body of POST /v1/rollouts."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    candidate: Text = Field(
        max_length=200,
        description="MLflow version number, or an alias (default: candidate)",
        default="candidate",
    )
    config: RolloutConfig = Field(default_factory=RolloutConfig)
    reason: Text = Field(default="", max_length=500)


class ArmEvidence(BaseModel):
    """What one version did over a set of episodes."""

    version: str | None
    episodes: int = 0
    successes: int = 0
    requests: int = 0
    errors: int = 0
    latency_p95_ms: float | None = None

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.episodes if self.episodes else None


class ShadowEvidence(BaseModel):
    episodes: int = 0
    requests: int = 0
    errors: int = 0
    action_mse: float | None = None
    latency_p95_ms: float | None = None


class Evidence(BaseModel):
    """Everything a decision looked at, stored with the decision."""

    stage: Stage
    stage_seconds: float
    candidate: ArmEvidence
    champion: ArmEvidence
    shadow: ShadowEvidence = Field(default_factory=ShadowEvidence)
    success_diff_lower: float | None = Field(
        default=None, description="lower confidence bound of p_cand - p_champ"
    )
    success_diff_upper: float | None = Field(
        default=None, description="upper confidence bound of p_cand - p_champ"
    )


Action = Literal["start", "wait", "advance", "rollback", "complete", "approve", "pause", "resume", "abort"]


class Decision(BaseModel):
    action: Action
    from_stage: Stage
    to_stage: Stage
    reason: str
    evidence: Evidence | None = None
    actor: str = "controller"


class Endpoint(BaseModel):
    version: str
    url: str  # ws://host:port (openpi) for local servers; http(s) URL of the InferenceService on KServe


class PolicyAssignment(BaseModel):
    """Answer of GET /v1/robots/me/policy: what to run for the next whole episode."""

    version: str | None = Field(description="model version to act with; None: no policy assigned")
    endpoint: str | None
    rollout_id: str | None = None
    stage: Stage | None = None
    cohort: Literal["champion", "candidate"] | None = None
    shadow: Endpoint | None = Field(
        default=None, description="mirror observations here; never execute its actions"
    )


class RolloutInfo(BaseModel):
    rollout_id: str
    model_name: str
    candidate_version: str
    champion_version: str | None
    stage: Stage
    paused: bool
    awaiting_approval: bool
    config: RolloutConfig
    reason: str
    created_at: AwareDatetime
    stage_started_at: AwareDatetime
    finished_at: AwareDatetime | None = None
    decisions: list[Decision] = Field(default_factory=list)
