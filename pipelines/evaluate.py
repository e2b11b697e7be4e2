"""Evaluate a trained policy, offline and in closed loop, and decide the gate against the champion.

Offline: on the held-out windows of the training shards, the first chunk is sampled exactly as
at serving time (from the conditioning frame and the state) and compared with what the robot
did (normalised action MSE over the embodiment's real dims) and with what the camera then saw
(video-latent MSE). Closed loop: Meta-World robots on object layouts no training episode used,
and on tasks never trained on, driven through the serving engine in-process. The champion is
evaluated on the very same layouts, so the gate compares like with like.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from wamfleet.model.artifacts import file_sha256
from wamfleet.model.policy import CODEC_FILE, LoadedPolicy, load_policy
from wamfleet.model.sampler import ChunkSampler
from wamfleet.pipelines.shards import ShardData, ShardIndex, fetch_shards
from wamfleet.platform.storage.base import ObjectStore


class PolicyScores(BaseModel):
    version: str
    offline_action_mse: float | None = None
    offline_video_mse: float | None = None
    holdout_windows: int = 0
    success_rate: float | None = None
    successes: int = 0
    episodes: int = 0
    per_task: dict[str, float] = Field(default_factory=dict)
    heldout_task_success: float | None = None
    latency_p50_ms: float | None = None


class GateDecision(BaseModel):
    passed: bool
    reason: str


class EvalReport(BaseModel):
    candidate: PolicyScores
    champion: PolicyScores | None = None
    gate: GateDecision
    tasks: list[str]
    heldout_tasks: list[str]
    seed: int

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics for MLflow and the KFP Metrics artifact."""
        out: dict[str, float] = {}
        for prefix, scores in (("eval", self.candidate), ("champion", self.champion)):
            if scores is None:
                continue
            for name in ("offline_action_mse", "offline_video_mse", "success_rate", "heldout_task_success"):
                value = getattr(scores, name)
                if value is not None and math.isfinite(value):
                    out[f"{prefix}_{name}"] = float(value)
            for task, rate in scores.per_task.items():
                out[f"{prefix}_success_{task}"] = rate
            if scores.episodes:  # the counts behind success_rate, for intervals
                out[f"{prefix}_successes"] = float(scores.successes)
                out[f"{prefix}_episodes"] = float(scores.episodes)
        out["gate_passed"] = float(self.gate.passed)
        return out


@torch.no_grad()
def offline_errors(
    policy: LoadedPolicy, data: ShardData, max_windows: int = 64, seed: int = 0
) -> tuple[float, float, int]:
    """(action MSE, video-latent MSE, windows used) of the first chunk on held-out windows."""
    n = min(len(data), max_windows)
    if n == 0:
        return math.nan, math.nan, 0
    model = policy.model.eval()
    sampler = ChunkSampler(model)
    cfg = policy.config
    fc = cfg.latent_frames_per_chunk
    action_err = video_err = action_weight = 0.0
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, n, 8):
        rows = torch.arange(start, min(start + 8, n))
        batch = data.batch(rows)
        b = len(rows)
        null, null_mask = policy.text.null(b) if cfg.cfg_scale != 1.0 else (None, None)
        session = sampler.start(batch.cond, batch.text, batch.text_mask, null, null_mask)
        pred = sampler.predict(
            session, batch.states[:, 0], batch.state_mask, batch.action_mask, batch.embodiments, generator
        )
        weight = (batch.has_actions.float()[:, None] * batch.action_mask)[:, None, :]
        action_err += float(((pred.actions - batch.actions[:, 0]) ** 2 * weight).sum())
        action_weight += float(weight.expand_as(pred.actions).sum())
        video_err += float(((pred.video - batch.video[:, :, :fc]) ** 2).mean()) * b
    action_mse = action_err / action_weight if action_weight else math.nan
    return action_mse, video_err / n, n


def closed_loop_scores(
    policy: LoadedPolicy,
    version: str,
    tasks: list[str],
    heldout_tasks: list[str],
    episodes: int,
    seed: int,
    max_steps: int,
    image_size: int,
) -> PolicyScores:
    """Success on held-out layouts of the trained tasks, and on tasks never trained on."""
    from wamfleet.fleet_agent.sim.drive import evaluate_closed_loop
    from wamfleet.pipelines.engine_client import EnginePolicyClient
    from wamfleet.serving.engine import PolicyEngine

    scores = PolicyScores(version=version)
    engine = PolicyEngine(policy, version=version, seed=seed)
    try:
        client = EnginePolicyClient(engine)
        if tasks and episodes:
            report = evaluate_closed_loop(
                client, tasks, episodes, seed, max_steps=max_steps, image_size=image_size
            )
            total = sum(t.episodes for t in report.tasks.values())
            scores.episodes = total
            scores.successes = sum(t.successes for t in report.tasks.values())
            scores.success_rate = scores.successes / total if total else None
            scores.per_task = {name: t.success_rate for name, t in report.tasks.items()}
            p50 = report.latency_p50_s
            scores.latency_p50_ms = None if p50 is None else p50 * 1000
        if heldout_tasks and episodes:
            held = evaluate_closed_loop(
                client, heldout_tasks, episodes, seed, max_steps=max_steps, image_size=image_size
            )
            total = sum(t.episodes for t in held.tasks.values())
            scores.heldout_task_success = (
                sum(t.successes for t in held.tasks.values()) / total if total else None
            )
    finally:
        engine.close()
    return scores


def _success(scores: PolicyScores) -> str:
    """'0.60 (6/10)': the rate with the count behind it, when it was counted."""
    rate = f"{scores.success_rate:.2f}"
    return f"{rate} ({scores.successes}/{scores.episodes})" if scores.episodes else rate


def decide_gate(
    candidate: PolicyScores, champion: PolicyScores | None, margin: float, min_success: float
) -> GateDecision:
    """Closed-loop success decides when it was measured; offline action error otherwise."""
    if candidate.success_rate is not None:
        if candidate.success_rate < min_success:
            return GateDecision(
                passed=False, reason=f"success {_success(candidate)} < floor {min_success:.2f}"
            )
        if champion is None or champion.success_rate is None:
            return GateDecision(
                passed=True,
                reason=f"success {_success(candidate)} >= floor {min_success:.2f}; no champion",
            )
        bar = champion.success_rate - margin
        passed = candidate.success_rate >= bar
        verb = ">=" if passed else "<"
        reason = (
            f"success {_success(candidate)} {verb} champion {_success(champion)} - {margin:.2f}"
            " on the same held-out layouts"
        )
        return GateDecision(passed=passed, reason=reason)
    mse = candidate.offline_action_mse
    if mse is None or not math.isfinite(mse):
        return GateDecision(
            passed=False, reason="nothing measured: no closed-loop episodes and no held-out windows"
        )
    if (
        champion is None
        or champion.offline_action_mse is None
        or not math.isfinite(champion.offline_action_mse)
    ):
        return GateDecision(passed=True, reason=f"offline action MSE {mse:.4f}; no champion")
    bar = champion.offline_action_mse * (1 + margin)
    passed = mse <= bar
    verb = "<=" if passed else ">"
    return GateDecision(
        passed=passed, reason=f"offline action MSE {mse:.4f} {verb} champion's x (1 + {margin:.2f})"
    )


def evaluate_policy(
    store: ObjectStore,
    index: ShardIndex,
    candidate_dir: Path,
    candidate_version: str,
    *,
    champion_dir: Path | None = None,
    champion_version: str | None = None,
    tasks: list[str],
    heldout_tasks: list[str],
    episodes: int,
    seed: int = 0,
    max_steps: int = 150,
    image_size: int = 96,
    margin: float = 0.1,
    min_success: float = 0.0,
) -> EvalReport:
    with tempfile.TemporaryDirectory(prefix="wamfleet-eval-") as tmp:
        holdout = fetch_shards(store, index, Path(tmp), "holdout")
    scored: list[PolicyScores] = []
    for directory, version in ((candidate_dir, candidate_version), (champion_dir, champion_version)):
        if directory is None:
            continue
        policy = load_policy(directory)
        scores = closed_loop_scores(
            policy, version or "champion", tasks, heldout_tasks, episodes, seed, max_steps, image_size
        )
        # Offline errors only mean something in the latent space the shards were encoded in.
        same_codec = file_sha256(Path(directory) / CODEC_FILE) == index.codec_sha256
        if same_codec and len(holdout):
            scores.offline_action_mse, scores.offline_video_mse, scores.holdout_windows = offline_errors(
                policy, holdout, seed=seed
            )
        scored.append(scores)
    candidate = scored[0]
    champion = scored[1] if len(scored) > 1 else None
    return EvalReport(
        candidate=candidate,
        champion=champion,
        gate=decide_gate(candidate, champion, margin, min_success),
        tasks=tasks,
        heldout_tasks=heldout_tasks,
        seed=seed,
    )
