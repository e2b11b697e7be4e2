"""The policy engine: sessions with KV caches, request validation, and one action chunk per call.

Both protocols (openpi websocket, KServe v2 REST) call the same engine. A session holds one
episode's KV cache; it lives in an LRU bounded by a memory budget and a TTL. A request for an
unknown, evicted, reset or re-instructed session starts a fresh one from the frames the request
carries, never an error. Each `infer` after the first writes the frames the robot observed
while executing the previous chunk into the cache (in place of the prediction), then denoises
the next chunk.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import zlib
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from wamfleet.model.normalize import QuantileNormalizer, dim_mask, pad_last
from wamfleet.model.policy import LoadedPolicy
from wamfleet.model.sampler import ChunkSampler, Session
from wamfleet.platform.contracts.embodiment import EmbodimentSpec
from wamfleet.platform.contracts.protocol import PolicyMetadata, ServerTiming
from wamfleet.serving import metrics

log = logging.getLogger(__name__)
MAX_IMAGE_SIDE = 2048
MAX_FRAMES_PER_REQUEST = 64
MAX_INSTRUCTION_CHARS = 1000


class RequestError(ValueError):
    """Bad input from a client; the message names the input."""


@dataclass
class InferRequest:
    session_id: str
    instruction: str
    images: Any  # uint8 [views, H, W, 3] or [T, views, H, W, 3]
    state: Any  # float [state_dim]
    reset: bool = False


@dataclass
class InferResult:
    actions: NDArray[np.float32]  # (actions_per_chunk, action_dim), in the robot's units
    session_id: str
    chunk_index: int
    policy_version: str
    timing: ServerTiming


@dataclass
class _Pending:
    request: InferRequest
    images: NDArray[np.uint8]
    state: NDArray[np.float32]
    started: float
    validated: float
    started_batch: float = 0.0
    future: Future[InferResult] = field(default_factory=Future)


@dataclass
class EngineSession:
    sampler: Session
    instruction: str
    last_frame: NDArray[np.uint8]  # (views, H, W, 3): the frame the next executed chunk starts from
    awaiting_observation: bool = False
    chunk_index: int = 0
    last_used: float = field(default_factory=time.monotonic)

    def nbytes(self) -> int:
        caches = [self.sampler.cache] + ([self.sampler.null_cache] if self.sampler.null_cache else [])
        return sum(c.nbytes() for c in caches) + sum(
            t.numel() * t.element_size() for t in self.sampler.history
        )


class SessionStore:
    """LRU of sessions bounded by total cache bytes and idle time."""

    def __init__(self, max_bytes: int, ttl_s: float) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._sessions: OrderedDict[str, EngineSession] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> EngineSession | None:
        self.expire()
        session = self._sessions.get(session_id)
        if session is not None:
            self._sessions.move_to_end(session_id)
            session.last_used = time.monotonic()
        return session

    def put(self, session_id: str, session: EngineSession) -> None:
        self._sessions[session_id] = session
        self._sessions.move_to_end(session_id)
        self.shrink(keep=session_id)

    def drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def expire(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self._sessions.items() if now - v.last_used > self.ttl_s]:
            del self._sessions[sid]
            self.evictions += 1
            metrics.EVICTIONS.inc()

    def shrink(self, keep: str | None = None) -> None:
        """Evicts least recently used sessions until the caches fit the memory budget."""
        while self.nbytes() > self.max_bytes and len(self._sessions) > 1:
            oldest = next(iter(self._sessions))
            if oldest == keep:
                self._sessions.move_to_end(oldest)
                oldest = next(iter(self._sessions))
            del self._sessions[oldest]
            self.evictions += 1
            metrics.EVICTIONS.inc()

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self._sessions.values())


class PolicyEngine:
    def __init__(
        self,
        policy: LoadedPolicy,
        *,
        version: str,
        embodiment: str | None = None,
        max_session_bytes: int = 2 * 1024**3,
        session_ttl_s: float = 600.0,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        seed: int = 0,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.policy = policy
        self.version = version
        names = list(policy.embodiments)
        if not names:
            raise ValueError("policy: its checkpoint lists no embodiments")
        self.embodiment_name = embodiment or names[0]
        if self.embodiment_name not in policy.embodiments:
            raise ValueError(f"embodiment: the policy knows {names}, not {self.embodiment_name!r}")
        entry = policy.embodiments[self.embodiment_name]
        self.spec = EmbodimentSpec.model_validate(entry["spec"])
        self.state_norm = (
            QuantileNormalizer.from_dict(entry["state_norm"]) if entry.get("state_norm") else None
        )
        self.action_norm = (
            QuantileNormalizer.from_dict(entry["action_norm"]) if entry.get("action_norm") else None
        )
        self.cfg = policy.config
        self.sampler = ChunkSampler(policy.model)
        self.sessions = SessionStore(max_session_bytes, session_ttl_s)
        self._lock = threading.Lock()
        self.seed = seed
        self._device = next(policy.model.parameters()).device
        cfg = self.cfg
        self._action_mask = dim_mask(self.spec.action_dim, cfg.max_action_dim).to(self._device)
        self._state_mask = dim_mask(self.spec.state_dim, cfg.max_state_dim).to(self._device)
        self._queue: queue.Queue[_Pending] = queue.Queue()
        self._stopping = threading.Event()
        # One worker owns the model: requests queue up and are denoised in batches.
        self._thread = threading.Thread(target=self._worker, name="wamfleet-batcher", daemon=True)
        self._thread.start()

    def metadata(self) -> PolicyMetadata:
        return PolicyMetadata(
            policy_version=self.version,
            embodiment=self.embodiment_name,
            cameras=list(self.cfg.cameras),
            state_dim=self.spec.state_dim,
            action_dim=self.spec.action_dim,
            actions_per_chunk=self.cfg.actions_per_chunk,
            action_rate_hz=self.spec.fps,
            video_frames_per_chunk=self.cfg.video_frames_per_chunk,
        )

    # Validation ------------------------------------------------------------------------------

    def validate(self, request: InferRequest) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
        if not isinstance(request.session_id, str) or not 0 < len(request.session_id) <= 200:
            raise RequestError("session_id: must be a non-empty string of at most 200 characters")
        if not isinstance(request.instruction, str) or not request.instruction.strip():
            raise RequestError("instruction: must be a non-empty string")
        if len(request.instruction) > MAX_INSTRUCTION_CHARS:
            raise RequestError(f"instruction: longer than {MAX_INSTRUCTION_CHARS} characters")
        images = np.asarray(request.images)
        if images.dtype != np.uint8:
            raise RequestError(f"images: expected dtype uint8, got {images.dtype}")
        if images.ndim == 4:
            images = images[None]
        views = len(self.cfg.cameras)
        if images.ndim != 5 or images.shape[1] != views or images.shape[-1] != 3:
            raise RequestError(
                f"images: expected [views={views}, H, W, 3] or [T, {views}, H, W, 3], got {images.shape}"
            )
        if not 0 < images.shape[0] <= MAX_FRAMES_PER_REQUEST:
            raise RequestError(
                f"images: between 1 and {MAX_FRAMES_PER_REQUEST} frames, got {images.shape[0]}"
            )
        if not (8 <= images.shape[2] <= MAX_IMAGE_SIDE and 8 <= images.shape[3] <= MAX_IMAGE_SIDE):
            raise RequestError(
                f"images: height and width must be within [8, {MAX_IMAGE_SIDE}], got {images.shape}"
            )
        try:
            state = np.asarray(request.state, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise RequestError("state: expected a numeric vector") from None
        if state.shape != (self.spec.state_dim,):
            raise RequestError(f"state: expected {self.spec.state_dim} values, got {state.shape[0]}")
        if not np.all(np.isfinite(state)):
            raise RequestError("state: contains NaN or infinity")
        return images, state

    # Inference -------------------------------------------------------------------------------

    def _start(self, request: InferRequest, images: NDArray[np.uint8]) -> EngineSession:
        latest = images[-1]
        cond = self.policy.codec.encode(torch.from_numpy(latest)[None, None].to(self._device))
        text, mask = self.policy.text.encode([request.instruction])
        null = null_mask = None
        if self.cfg.cfg_scale != 1.0:
            null, null_mask = self.policy.text.null()
        session = self.sampler.start(cond, text, mask, null, null_mask)
        return EngineSession(session, request.instruction, latest.copy())

    def _observe(self, session: EngineSession, images: NDArray[np.uint8]) -> None:
        """Encodes the frames seen while the last chunk ran and writes them into the cache."""
        need = self.cfg.video_frames_per_chunk
        frames = images[-need:]
        if frames.shape[0] < need:  # fewer frames than the chunk spans: hold the first one
            frames = np.concatenate([np.repeat(frames[:1], need - frames.shape[0], axis=0), frames])
        prev = torch.from_numpy(session.last_frame)[None].to(self._device)
        latents = self.policy.codec.encode_chunk(
            prev, torch.from_numpy(np.ascontiguousarray(frames))[None].to(self._device)
        )
        self.sampler.observe(session.sampler, latents)
        session.last_frame = images[-1].copy()

    def infer(self, request: InferRequest) -> InferResult:
        """Blocks until the request's chunk is ready (see `submit`)."""
        return self.submit(request).result()

    def submit(self, request: InferRequest) -> Future[InferResult]:
        """Validates at once (RequestError names the input) and queues the request for the next batch.

        Async callers await the returned future (asyncio.wrap_future) without tying up a thread.
        """
        started = time.perf_counter()
        try:
            images, state = self.validate(request)
        except RequestError:
            metrics.REQUESTS.labels("bad_request").inc()
            raise
        pending = _Pending(request, images, state, started, time.perf_counter())
        pending.future.add_done_callback(self._account)
        self._queue.put(pending)
        return pending.future

    def _account(self, future: Future[InferResult]) -> None:
        """Metrics and one log line per finished request."""
        if future.exception() is not None:
            metrics.REQUESTS.labels("error").inc()
            return
        result = future.result()
        metrics.REQUESTS.labels("ok").inc()
        metrics.CHUNKS.inc()
        metrics.BATCH_SIZE.observe(result.timing.batch_size)
        for stage in ("validate", "queue", "encode", "denoise", "total"):
            metrics.STAGE_SECONDS.labels(stage).observe(getattr(result.timing, f"{stage}_ms") / 1000)
        metrics.SESSIONS.set(len(self.sessions))
        log.info(
            "session=%s chunk=%d version=%s total_ms=%.1f encode_ms=%.1f denoise_ms=%.1f batch=%d",
            result.session_id,
            result.chunk_index,
            result.policy_version,
            result.timing.total_ms,
            result.timing.encode_ms,
            result.timing.denoise_ms,
            result.timing.batch_size,
        )

    def _worker(self) -> None:
        """Collects up to max_batch requests (at most max_wait after the first), then runs them."""
        carry: list[_Pending] = []
        while not self._stopping.is_set():
            batch, carry = carry, []
            if not batch:
                try:
                    batch.append(self._queue.get(timeout=0.1))
                except queue.Empty:
                    continue
            deadline = time.perf_counter() + self.max_wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                # One session's requests run in order: a second one waits for the next batch.
                if any(p.request.session_id == item.request.session_id for p in batch):
                    carry.append(item)
                else:
                    batch.append(item)
            self._run_batch(batch)

    @torch.no_grad()
    def _run_batch(self, batch: list[_Pending]) -> None:
        with self._lock:
            ready: list[tuple[_Pending, EngineSession, Tensor, float]] = []
            for pending in batch:
                try:
                    pending.started_batch = time.perf_counter()
                    session = self._prepare(pending)
                    norm = self.state_norm.normalize(pending.state) if self.state_norm else pending.state
                    ready.append(
                        (pending, session, pad_last(norm, self.cfg.max_state_dim), time.perf_counter())
                    )
                except Exception as exc:  # noqa: BLE001 - one bad request must not sink the batch
                    pending.future.set_exception(exc)
            if not ready:
                return
            try:
                pred = self._predict(
                    [r[1] for r in ready], [r[0].request.session_id for r in ready], [r[2] for r in ready]
                )
            except Exception as exc:  # noqa: BLE001
                for pending, *_ in ready:
                    pending.future.set_exception(exc)
                return
            done = time.perf_counter()
            for i, (pending, session, _, encoded) in enumerate(ready):
                actions = pred[i, :, : self.spec.action_dim].float().cpu().numpy()
                if self.action_norm is not None:
                    actions = self.action_norm.denormalize(actions)
                session.awaiting_observation = True
                session.chunk_index += 1
                timing = ServerTiming(
                    validate_ms=(pending.validated - pending.started) * 1000,
                    queue_ms=(pending.started_batch - pending.validated) * 1000,
                    encode_ms=(encoded - pending.started_batch) * 1000,
                    denoise_ms=(done - encoded) * 1000,
                    total_ms=(done - pending.started) * 1000,
                    batch_size=len(ready),
                )
                result = InferResult(
                    actions.astype(np.float32),
                    pending.request.session_id,
                    session.chunk_index,
                    self.version,
                    timing,
                )
                pending.future.set_result(result)
            self.sessions.shrink(keep=ready[-1][0].request.session_id)
            metrics.SESSION_BYTES.set(self.sessions.nbytes())

    def _prepare(self, pending: _Pending) -> EngineSession:
        """The request's session, with the frames of the chunk it executed written into the cache."""
        request, images = pending.request, pending.images
        session = None if request.reset else self.sessions.get(request.session_id)
        if session is not None and session.instruction != request.instruction:
            session = None  # a new prompt starts a new session, as in DreamZero
        if session is not None and session.awaiting_observation:
            self._observe(session, images)
            session.awaiting_observation = False
            if self.sampler.needs_reset(session.sampler):
                session = None  # context full: restart from the latest real frame
        if session is None:
            session = self._start(request, images)
            self.sessions.put(request.session_id, session)
        return session

    def _predict(self, sessions: list[EngineSession], ids: list[str], states: list[Tensor]) -> Tensor:
        """Denoises every session's next chunk at once; noise seeded by (session, chunk) so a
        request gives the same chunk on any protocol, replica or batch."""
        gens: list[torch.Generator | None] = [
            torch.Generator().manual_seed(zlib.crc32(f"{self.seed}/{sid}/{s.chunk_index}".encode()))
            for sid, s in zip(ids, sessions, strict=True)
        ]
        state = torch.stack(states).to(self._device)
        n = len(sessions)
        masks = (self._state_mask.expand(n, -1), self._action_mask.expand(n, -1))
        embodiments = [self.embodiment_name] * n
        if n == 1:
            return self.sampler.predict(sessions[0].sampler, state, *masks, embodiments, gens[0]).actions
        return self.sampler.predict_batch(
            [s.sampler for s in sessions], state, *masks, embodiments, gens
        ).actions

    def close(self) -> None:
        """Stops the batching thread (after the batch in flight)."""
        self._stopping.set()
        self._thread.join(timeout=10)

    def reset(self, session_id: str) -> None:
        with self._lock:
            self.sessions.drop(session_id)
