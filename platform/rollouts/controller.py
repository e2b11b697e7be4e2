"""The rollout controller: assignments, decisions, and their effects.

All state lives in the catalog (the rollout row and its decisions), so a restarted platform
resumes every rollout in the stage it was in. `tick` runs on the platform's background loop:
it makes sure the champion and the candidate are served, takes the evidence `evidence.py`
gathers from what the robots reported, asks the pure state machine (`stages.decide`) and
applies the decision: stage, MLflow aliases, endpoints, and a decision record with its
evidence (also in the audit log).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.queries import audit, now
from wamfleet.platform.catalog.tables import Robot, RobotAssignment, Rollout, RolloutDecision
from wamfleet.platform.contracts.ids import new_episode_id
from wamfleet.platform.contracts.lineage import CANDIDATE, CHAMPION, PREVIOUS
from wamfleet.platform.contracts.rollout import (
    ACTIVE_STAGES,
    FINAL_STAGES,
    Decision,
    Endpoint,
    Evidence,
    PolicyAssignment,
    RolloutConfig,
    RolloutInfo,
    StartRollout,
)
from wamfleet.platform.rollouts import cohort, stages
from wamfleet.platform.rollouts.backends.base import ServingBackend
from wamfleet.platform.rollouts.backends.kserve_manifests import ServingResources
from wamfleet.platform.rollouts.evidence import gather_evidence, served_version
from wamfleet.platform.rollouts.registry import AliasRegistry
from wamfleet.platform.settings import Settings

log = logging.getLogger(__name__)


class RolloutError(ValueError):
    """A request the rollout's state does not allow; `status` is the HTTP answer."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class RolloutController:
    def __init__(self, catalog: Catalog, backend: ServingBackend, registry: AliasRegistry) -> None:
        self.catalog = catalog
        self.backend = backend
        self.registry = registry
        self.model_name = registry.model_name
        self._lock = threading.Lock()

    def close(self) -> None:
        self.backend.close()

    def has_work(self) -> bool:
        """Whether a tick has anything to do: an active rollout, or robots that ask for a policy."""
        with self.catalog.session() as session:
            if self.active(session) is not None:
                return True
            return session.scalars(select(RobotAssignment.robot_id).limit(1)).first() is not None

    # Queries ---------------------------------------------------------------------------------

    def active(self, session: Session, *, lock: bool = False) -> Rollout | None:
        """The model's active rollout; `lock` holds its row (PostgreSQL) so that several platform
        replicas evaluating at once apply each decision once: the second sees the new stage."""
        query = select(Rollout).where(Rollout.model_name == self.model_name, Rollout.stage.in_(ACTIVE_STAGES))
        query = query.order_by(Rollout.created_at)
        if lock:
            query = query.with_for_update()
        return session.scalars(query).first()

    def info(self, session: Session, row: Rollout) -> RolloutInfo:
        decisions = session.scalars(
            select(RolloutDecision)
            .where(RolloutDecision.rollout_id == row.rollout_id)
            .order_by(RolloutDecision.id)
        )
        return RolloutInfo(
            rollout_id=row.rollout_id,
            model_name=row.model_name,
            candidate_version=row.candidate_version,
            champion_version=row.champion_version,
            stage=row.stage,
            paused=row.paused,
            awaiting_approval=row.awaiting_approval,
            config=RolloutConfig.model_validate(row.config),
            reason=row.reason,
            created_at=row.created_at,
            stage_started_at=row.stage_started_at,
            finished_at=row.finished_at,
            decisions=[
                Decision(
                    action=d.action,
                    from_stage=d.from_stage,
                    to_stage=d.to_stage,
                    reason=d.reason,
                    actor=d.actor,
                    evidence=Evidence.model_validate(d.evidence) if d.evidence else None,
                )
                for d in decisions
            ],
        )

    def get(self, rollout_id: str) -> RolloutInfo:
        with self.catalog.session() as session:
            row = session.get(Rollout, rollout_id)
            if row is None:
                raise RolloutError(f"no rollout {rollout_id!r}", status=404)
            return self.info(session, row)

    def list_rollouts(self, limit: int = 50) -> list[RolloutInfo]:
        with self.catalog.session() as session:
            rows = session.scalars(select(Rollout).order_by(Rollout.created_at.desc()).limit(limit))
            return [self.info(session, r) for r in rows]

    # Starting ----------------------------------------------------------------------------------

    def start(self, request: StartRollout, actor: str) -> RolloutInfo:
        candidate = self.registry.resolve(request.candidate)
        champion = self.registry.get(CHAMPION)
        if champion == candidate:
            raise RolloutError(f"candidate: version {candidate} is already the champion")
        with self._lock, self.catalog.session() as session:
            running = self.active(session)
            if running is not None:
                raise RolloutError(
                    f"rollout {running.rollout_id} of version {running.candidate_version} is in "
                    f"{running.stage}; finish or abort it first"
                )
            at = now()
            stage = stages.first_stage(request.config, champion is not None)
            row = Rollout(
                rollout_id=str(new_episode_id()),
                model_name=self.model_name,
                candidate_version=candidate,
                champion_version=champion,
                stage=stage,
                paused=False,
                awaiting_approval=False,
                config=request.config.model_dump(mode="json"),
                reason=request.reason,
                created_by=actor,
                created_at=at,
                stage_started_at=at,
            )
            session.add(row)
            session.flush()
            reason = f"version {candidate} against champion {champion or '(none)'}, starting in {stage}"
            self._record(
                session,
                row,
                Decision(action="start", from_stage=stage, to_stage=stage, reason=reason, actor=actor),
            )
            info = self.info(session, row)
        self.registry.set(CANDIDATE, candidate)
        return info

    # Assignment --------------------------------------------------------------------------------

    def _endpoint(self, version: str | None) -> str | None:
        if version is None:
            return None
        endpoint = self.backend.endpoints().get(version)
        return endpoint.url if endpoint is not None else None

    def assignment(self, robot: Robot) -> PolicyAssignment:
        """What `robot` runs for its next episode; recorded, so the dashboard shows it."""
        with self.catalog.session() as session:
            row = self.active(session)
            champion = self.registry.get(CHAMPION)
            if row is None:
                answer = PolicyAssignment(
                    version=served_version(self.model_name, champion) if champion else None,
                    endpoint=self._endpoint(champion),
                    cohort="champion" if champion else None,
                )
            else:
                config = RolloutConfig.model_validate(row.config)
                floor = None
                if row.stage == "canary":
                    fleet = session.execute(
                        select(Robot.robot_id, Robot.site, Robot.embodiment_name).where(
                            Robot.revoked_at.is_(None)
                        )
                    )
                    floor = cohort.canary_floor(config, row.rollout_id, fleet.tuples())
                arm, shadowed = cohort.assign(
                    row.stage,
                    config,
                    row.rollout_id,
                    robot.robot_id,
                    robot.site,
                    robot.embodiment_name,
                    floor,
                )
                version = row.candidate_version if arm == "candidate" else row.champion_version
                shadow = None
                if shadowed and self._endpoint(row.candidate_version):
                    shadow = Endpoint(
                        version=served_version(self.model_name, row.candidate_version),
                        url=self._endpoint(row.candidate_version) or "",
                    )
                answer = PolicyAssignment(
                    version=served_version(self.model_name, version) if version else None,
                    endpoint=self._endpoint(version),
                    rollout_id=row.rollout_id,
                    stage=row.stage,
                    cohort=arm if version else None,
                    shadow=shadow,
                )
            record = session.get(RobotAssignment, robot.robot_id) or RobotAssignment(robot_id=robot.robot_id)
            record.version = answer.version
            record.rollout_id = answer.rollout_id
            record.cohort = answer.cohort
            record.stage = answer.stage
            record.assigned_at = now()
            session.merge(record)
        return answer

    # Decisions ---------------------------------------------------------------------------------

    def ensure_serving(self) -> None:
        """The champion and any active rollout's candidate have a live endpoint."""
        champion = self.registry.get(CHAMPION)
        wanted = {champion} if champion else set()
        with self.catalog.session() as session:
            row = self.active(session)
            if row is not None:
                wanted.add(row.candidate_version)
                if row.champion_version:
                    wanted.add(row.champion_version)
        for version in sorted(wanted):
            try:
                self.backend.ensure(version)
            except Exception:  # logged; the next tick tries again
                log.exception("could not serve version %s", version)

    def tick(self, at: datetime | None = None) -> list[Decision]:
        """One evaluation of the active rollout; returns the decisions applied (none when waiting)."""
        at = at or now()
        self.ensure_serving()
        applied: list[Decision] = []
        with self._lock, self.catalog.session() as session:
            row = self.active(session, lock=True)
            if row is None:
                return applied
            config = RolloutConfig.model_validate(row.config)
            evidence = gather_evidence(session, row, self.model_name, at)
            transition = stages.decide(_state(row), config, evidence, at)
            if not transition.changed:
                return applied
            self._save(session, row, transition.state, transition.decision, at)
            applied.append(transition.decision)
        self._after(applied)
        return applied

    def manual(self, rollout_id: str, action: str, actor: str) -> RolloutInfo:
        with self._lock, self.catalog.session() as session:
            row = session.get(Rollout, rollout_id, with_for_update=True)
            if row is None:
                raise RolloutError(f"no rollout {rollout_id!r}", status=404)
            state = _state(row)
            try:
                decision = stages.manual(stages.manual_action(action), state, actor=actor)
            except ValueError as exc:
                raise RolloutError(str(exc)) from None
            at = now()
            self._save(session, row, stages.apply_manual(decision, state, at), decision, at)
            info = self.info(session, row)
        self._after([decision])
        return info

    def _save(
        self, session: Session, row: Rollout, state: stages.RolloutState, decision: Decision, at: datetime
    ) -> None:
        row.stage = state.stage
        row.stage_started_at = state.stage_started_at
        row.paused = state.paused
        row.awaiting_approval = state.awaiting_approval
        if state.stage in FINAL_STAGES:
            row.finished_at = at
        self._record(session, row, decision)
        if decision.to_stage != decision.from_stage:
            self._move_aliases(row, decision)

    def _move_aliases(self, row: Rollout, decision: Decision) -> None:
        """Promotion on entering full; a rollback is one alias move."""
        if decision.to_stage == "full" and decision.from_stage != "full":
            if row.champion_version:
                self.registry.set(PREVIOUS, row.champion_version)
            self.registry.set(CHAMPION, row.candidate_version)
        if decision.to_stage == "completed":
            self.registry.delete(CANDIDATE)
        if decision.to_stage in ("rolled_back", "aborted"):
            if decision.from_stage in ("full", "completed"):
                if row.champion_version:
                    self.registry.set(CHAMPION, row.champion_version)
                else:
                    self.registry.delete(CHAMPION)
            self.registry.delete(CANDIDATE)

    def _after(self, decisions: list[Decision]) -> None:
        """Stops endpoints nobody runs any more (outside the transaction: it may take seconds)."""
        if not any(d.to_stage in ("completed", "rolled_back", "aborted") for d in decisions):
            return
        champion = self.registry.get(CHAMPION)
        for version in list(self.backend.endpoints()):
            if version != champion:
                try:
                    self.backend.stop(version)
                except Exception:
                    log.exception("could not stop the endpoint of version %s", version)

    def _record(self, session: Session, row: Rollout, decision: Decision) -> None:
        evidence = decision.evidence.model_dump(mode="json") if decision.evidence else None
        session.add(
            RolloutDecision(
                rollout_id=row.rollout_id,
                at=now(),
                action=decision.action,
                from_stage=decision.from_stage,
                to_stage=decision.to_stage,
                reason=decision.reason,
                actor=decision.actor,
                evidence=evidence,
            )
        )
        audit(
            session,
            decision.actor,
            f"rollout.{decision.action}",
            row.rollout_id,
            candidate=row.candidate_version,
            champion=row.champion_version,
            from_stage=decision.from_stage,
            to_stage=decision.to_stage,
            reason=decision.reason,
            evidence=evidence,
        )
        log.info("rollout %s: %s %s -> %s: %s", row.rollout_id, decision.action, decision.from_stage,
                 decision.to_stage, decision.reason)  # fmt: skip


def _state(row: Rollout) -> stages.RolloutState:
    return stages.RolloutState(
        stage=row.stage,
        paused=row.paused,
        awaiting_approval=row.awaiting_approval,
        stage_started_at=row.stage_started_at,
        has_champion=row.champion_version is not None,
    )


class KServeOptions(BaseModel):
    """What WAMFLEET_KSERVE_TEMPLATE_FILE holds (the Helm chart renders it from its values)."""

    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(default=1, ge=0)
    cpu: str = "4"
    memory: str = "32Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] | None = None
    service_account: str | None = None
    mlflow_secret: str = "wamfleet-serving"
    env_from_secrets: list[str] = Field(default_factory=list)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int | None = Field(default=None, ge=1)
    storage_uri_template: str = "models:/{model_name}/{version}"

    def template_fields(self) -> dict[str, Any]:
        """These options as KServeTemplate / KServeBackend keyword arguments (one mapping for both)."""
        return {
            "storage_uri_template": self.storage_uri_template,
            "resources": ServingResources(gpus=self.gpus, cpu=self.cpu, memory=self.memory),
            "node_selector": self.node_selector,
            "tolerations": self.tolerations,
            "service_account": self.service_account,
            "mlflow_secret": self.mlflow_secret,
            "env_from_secrets": self.env_from_secrets,
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
        }


def controller_for(settings: Settings, catalog: Catalog) -> RolloutController:
    """The controller with the backend the settings name (local processes or KServe)."""
    registry = AliasRegistry(settings.effective_mlflow_uri, settings.registered_model)
    backend: ServingBackend
    if settings.rollout_backend == "kserve":
        from wamfleet.platform.rollouts.backends.kserve import KServeBackend

        options = KServeOptions.model_validate_json(
            settings.kserve_template_file.read_text() if settings.kserve_template_file else "{}"
        )
        backend = KServeBackend(
            settings.kserve_namespace,
            model_name=settings.registered_model,
            image=settings.serving_image,
            catalog=catalog,
            **options.template_fields(),
        )
    else:
        from wamfleet.platform.rollouts.backends.local import LocalServingBackend

        backend = LocalServingBackend(settings, catalog)
    return RolloutController(catalog, backend, registry)
