"""The policy engine: sessions with KV caches, request validation, and one action chunk per call.

Both protocols (openpi websocket, KServe v2 REST) call the same engine. A session holds one
episode; it lives in an LRU bounded by a memory budget and a TTL. A request for an unknown,
evicted, reset or re-instructed session starts a fresh one from the frames the request
carries, never an error.

Which frames go into the cache, at which positions (one rule, whatever the client's rhythm):
every request carries the frames seen since its previous one at the video rate (one per
`action_stride` control steps, the current frame last), optionally with `frame_index`, the
video-rate index of its last frame. Frames are numbered from the session's first frame, so the
cache's time axis is the time that really elapsed. A request at frame n is a chunk boundary:
its chunk is predicted from the state at n and a history of whole chunks of real frames ending
exactly at n, as in training. A client that asks every chunk (DreamZero's) is served from one
cache; one that asks early (LeRobot-style runners ask with half a chunk left) lands on other
phases of the chunk grid, and each phase (n mod frames-per-chunk) keeps its own cache, extended
only with complete chunks of real frames. Nothing is padded, and a gap in the frames starts
that phase's cache again from the latest frame (as a new session would) instead of pretending.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from wamfleet.model.config import WAMConfig
from wamfleet.model.normalize import QuantileNormalizer, dim_mask, pad_last
from wamfleet.model.policy import LoadedPolicy
from wamfleet.model.sampler import ChunkSampler, Session
from wamfleet.model.sequence import history_capacity, query_length
from wamfleet.model.transformer import CompileSettings
from wamfleet.platform.contracts.embodiment import EmbodimentSpec, default_observation
from wamfleet.platform.contracts.protocol import PolicyMetadata, ServerTiming
from wamfleet.serving import metrics

log = logging.getLogger(__name__)
MAX_IMAGE_SIDE = 2048
MAX_FRAMES_PER_REQUEST = 64
MAX_INSTRUCTION_CHARS = 1000
MAX_FRAME_INDEX = 2**40
MAX_PHASES = 2  # caches a session keeps: on-grid requests plus one early phase (least recent goes)
MAX_STATE_ABS = 1e6  # |state| above this is refused: no robot reports it, and ~1e30 drives the model to NaN
MAX_SESSION_ID_CHARS = 200
MAX_TOKEN_CHARS = 128
NON_FINITE = "policy: the model produced non-finite actions"
ACCOUNT_AFTER_IDLE_S = 0.002  # an idle worker writes the metrics and request log after this long
SessionKey = tuple[str, str]  # (owner, session_id): a session is reachable only by its owner


def new_session_token() -> str:
    """A random owner credential (128 bits) for sessions a client opens without one."""
    return secrets.token_urlsafe(16)


class RequestError(ValueError):
    """Bad input from a client; the message names the input."""


def numeric_array(value: Any, name: str, *, allow_bool: bool = True) -> NDArray[Any]:
    """An ndarray from whatever a client sent; ragged or nested-object data is the client's error."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError):
        raise RequestError(f"{name}: expected a rectangular numeric array") from None
    if array.dtype.kind in ("OVSUMmc" if allow_bool else "OVSUMmcb"):
        raise RequestError(f"{name}: expected a numeric array, got dtype {array.dtype}")
    return array


class NonFiniteActions(RuntimeError):
    """The model produced NaN or infinite actions: answered as an error, never sent to a robot."""


@dataclass
class InferRequest:
    session_id: str
    instruction: str
    images: Any  # uint8 [views, H, W, 3] or [T, views, H, W, 3]
    state: Any  # float [state_dim]
    reset: bool = False
    frame_index: Any = None  # video-rate index of the last image since the session's first frame
    # Who the session belongs to (a websocket connection, a REST session token): sessions are
    # keyed by (owner, session_id), so a client can never reach another client's session.
    owner: str = ""

    @property
    def key(self) -> SessionKey:
        return (self.owner, self.session_id)


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
    frame_index: int | None
    started: float
    validated: float
    started_batch: float = 0.0
    future: Future[InferResult] = field(default_factory=Future)
    counted: bool = True  # in the metrics and the request log (warm-up requests are not)


@dataclass
class _Task:
    """Work the batching thread runs between batches (the model is only ever run by that thread:
    CUDA graphs are recorded per thread)."""

    run: Callable[[], object]
    future: Future[None] = field(default_factory=Future)


@dataclass(frozen=True)
class CacheWrite:
    """A chunk of real frames written into a phase's cache: at chunk `chunk` of the cache whose
    conditioning frame is `grid_start`, holding frames `frames` (video-rate indices)."""

    grid_start: int
    chunk: int
    frames: tuple[int, ...]


@dataclass
class Grid:
    """One KV cache whose chunk boundaries fall on frames grid_start + k * frames_per_chunk."""

    sampler: Session
    start: int  # frame index of its conditioning frame

    def end(self, frames_per_chunk: int) -> int:
        """The last frame it holds."""
        return self.start + self.sampler.chunks_done * frames_per_chunk


@dataclass
class EngineSession:
    instruction: str
    frames: OrderedDict[int, NDArray[np.uint8]] = field(default_factory=OrderedDict)  # index -> (V, H, W, 3)
    now: int = 0  # index of the latest frame
    # phase (frame index mod frames per chunk) -> its cache, least recently used first
    grids: OrderedDict[int, Grid] = field(default_factory=OrderedDict)
    chunk_index: int = 0
    last_used: float = field(default_factory=time.monotonic)
    writes: deque[CacheWrite] = field(default_factory=lambda: deque(maxlen=256))

    def nbytes(self) -> int:
        return sum(g.sampler.nbytes() for g in self.grids.values()) + sum(
            f.nbytes for f in self.frames.values()
        )


def session_bytes(cfg: WAMConfig, dtype: torch.dtype, phases: int = MAX_PHASES) -> int:
    """The most one session's caches hold: per phase, self-attention keys/values for the full
    cache and the cross-attention keys/values (both twice with guidance) in `dtype`, plus the
    conditioning latents (and I2V channels). The raw frames it keeps (a context of them, at the
    robot's resolution) come on top."""
    size = torch.tensor([], dtype=dtype).element_size()
    layers, dim = cfg.num_layers, cfg.dim
    self_kv = 2 * layers * history_capacity(cfg) * dim * size
    cross_tokens = cfg.text.max_tokens + (cfg.image_conditioning.tokens if cfg.image_conditioning else 0)
    cross_kv = 2 * layers * cross_tokens * dim * size
    branches = 2 if cfg.cfg_scale != 1.0 else 1
    h, w = cfg.latent_hw
    latents = cfg.vae.z_dim * h * w * 4
    if cfg.image_conditioning is not None:
        latents += (
            (cfg.in_channels - cfg.vae.z_dim)
            * (1 + cfg.cache_chunks * cfg.latent_frames_per_chunk)
            * h
            * w
            * 4
        )
    return phases * (branches * (self_kv + cross_kv) + latents)


def activation_bytes(cfg: WAMConfig, dtype: torch.dtype, batch: int) -> int:
    """A generous estimate of the memory the work itself needs at its peak: one DiT call over a
    batch of `batch` queries plus one chunk's encode (requests are encoded one at a time).

    Per query token, a call holds the gathered timestep modulation (6 x dim in `dtype`), a
    block's float32 residual and norms (4 x dim), q, k, v and the attention output (4 x dim)
    and the feed-forward's hidden layer twice (2 x ffn_dim); the flash / memory-efficient
    kernels never hold attention scores (the `dense` kernel's are added). The encode holds a
    few float32 feature maps of the VAE's first stage over the chunk's frames at the canvas size.
    """
    size = torch.tensor([], dtype=dtype).element_size()
    tokens = batch * query_length(cfg)
    per_token = 6 * cfg.dim * size + 4 * cfg.dim * 4 + 4 * cfg.dim * size + 2 * cfg.ffn_dim * size
    dit = tokens * per_token
    if cfg.attention == "dense":
        dit += batch * cfg.num_heads * query_length(cfg) * history_capacity(cfg) * 4
    height, width = cfg.canvas_size
    encode = 4 * (cfg.video_frames_per_chunk + 1) * height * width * cfg.vae.base_dim * 4
    return dit + encode


HEADROOM_FRACTION = 0.05  # of a GPU's memory, kept free on top of the activations
MIN_HEADROOM = 2**30


def session_budget(
    per_session: int,
    sessions: int,
    *,
    cuda_free: int | None = None,
    cuda_total: int = 0,
    activations: int = 0,
    host_ram: int = 0,
) -> int:
    """Bytes the session caches may hold (the rule `wamfleet serve` applies without
    --max-session-gib); a pure function of the numbers it is given.

    On a GPU (`cuda_free`: free bytes once the weights are loaded): everything free but a
    reserve for the work, twice `activations` (one max batch's, see `activation_bytes`) plus
    5% of the device (at least 1 GiB) for the allocator's fragmentation, compiled kernels'
    workspaces and CUDA graph pools. Memory a GPU has to spare keeps more robots' caches
    warm; only a robot beyond that evicts the least recently used one.
    On a CPU: `sessions` sessions (--max-batch), at most a quarter of `host_ram`.
    """
    if cuda_free is not None:
        reserve = 2 * activations + max(MIN_HEADROOM, int(cuda_total * HEADROOM_FRACTION))
        return max(1, cuda_free - reserve)
    return max(1, min(sessions * per_session, host_ram // 4))


def default_session_budget(cfg: WAMConfig, dtype: torch.dtype, device: torch.device, sessions: int) -> int:
    """`session_budget` for this preset, dtype and device (`sessions`: the largest batch)."""
    one = session_bytes(cfg, dtype)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = session_budget(
            one,
            sessions,
            cuda_free=free,
            cuda_total=total,
            activations=activation_bytes(cfg, dtype, sessions),
        )
    else:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        budget = session_budget(one, sessions, host_ram=ram)
    if budget < one:
        log.warning(
            "session memory: one session needs %.2f GiB, %.2f GiB is available; robots will evict each other",
            one / 2**30,
            budget / 2**30,
        )
    else:
        log.info(
            "session memory: %.2f GiB for session caches (%d sessions of up to %.3f GiB)",
            budget / 2**30,
            budget // one,
            one / 2**30,
        )
    return budget


class SessionStore:
    """LRU of sessions bounded by total cache bytes and idle time."""

    def __init__(self, max_bytes: int, ttl_s: float) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._sessions: OrderedDict[SessionKey, EngineSession] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, key: SessionKey) -> EngineSession | None:
        self.expire()
        session = self._sessions.get(key)
        if session is not None:
            self._sessions.move_to_end(key)
            session.last_used = time.monotonic()
        return session

    def put(self, key: SessionKey, session: EngineSession) -> None:
        self._sessions[key] = session
        self._sessions.move_to_end(key)
        self.shrink(keep=key)

    def drop(self, key: SessionKey) -> None:
        self._sessions.pop(key, None)

    def expire(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self._sessions.items() if now - v.last_used > self.ttl_s]:
            del self._sessions[sid]
            self.evictions += 1
            metrics.EVICTIONS.inc()

    def shrink(self, keep: SessionKey | None = None) -> None:
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


class Engine(Protocol):
    """What both protocols call: a WAM's PolicyEngine, or a scripted policy (serving/scripted.py)."""

    def metadata(self) -> PolicyMetadata: ...
    def submit(self, request: InferRequest) -> Future[InferResult]: ...
    def infer(self, request: InferRequest) -> InferResult: ...
    def reset(self, session_id: str, owner: str = "") -> None: ...
    def close(self) -> None: ...


class PolicyEngine:
    def __init__(
        self,
        policy: LoadedPolicy,
        *,
        version: str,
        embodiment: str | None = None,
        max_session_bytes: int | None = None,
        session_ttl_s: float = 600.0,
        max_batch: int = 8,
        seed: int = 0,
        compile: CompileSettings | None = None,
    ) -> None:
        """`compile`: run the denoising step's DiT call through torch.compile (see ChunkSampler;
        `CompileSettings.for_device(device)` is the recommended choice, CUDA graphs on a GPU);
        None runs it eagerly. Call `warm_up` before serving so compiling happens then."""
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.max_batch = max_batch
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
        self.sampler = ChunkSampler(policy.model, compile=compile)
        self._device = policy.model.device
        if max_session_bytes is None:  # sized for the preset, dtype and device
            max_session_bytes = default_session_budget(self.cfg, policy.model.dtype, self._device, max_batch)
        self.sessions = SessionStore(max_session_bytes, session_ttl_s)
        self._lock = threading.Lock()
        self.seed = seed
        cfg = self.cfg
        self._action_mask = dim_mask(self.spec.action_dim, cfg.max_action_dim).to(self._device)
        self._state_mask = dim_mask(self.spec.state_dim, cfg.max_state_dim).to(self._device)
        self._queue: queue.Queue[_Pending | _Task] = queue.Queue()
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
            # Declared keys, or the default (`images` stacked in the model's camera order, `state`).
            observation=self.spec.observation or default_observation(self.cfg.cameras, self.spec.state_dim),
            action_layout=self.spec.actions,
        )

    # Validation ------------------------------------------------------------------------------

    def validate(self, request: InferRequest) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
        """Checks every input before it is queued; RequestError names the input that is wrong."""
        if not isinstance(request.session_id, str) or not 0 < len(request.session_id) <= MAX_SESSION_ID_CHARS:
            raise RequestError(
                f"session_id: must be a non-empty string of at most {MAX_SESSION_ID_CHARS} characters"
            )
        if not isinstance(request.owner, str) or len(request.owner) > MAX_TOKEN_CHARS:
            raise RequestError(f"session_token: must be a string of at most {MAX_TOKEN_CHARS} characters")
        if not isinstance(request.instruction, str) or not request.instruction.strip():
            raise RequestError("instruction: must be a non-empty string")
        if len(request.instruction) > MAX_INSTRUCTION_CHARS:
            raise RequestError(f"instruction: longer than {MAX_INSTRUCTION_CHARS} characters")
        images = numeric_array(request.images, "images")
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
        raw = numeric_array(request.state, "state")
        if raw.dtype.kind not in "iuf":  # not bool, text, datetime, complex or objects
            raise RequestError(f"state: expected integers or floats, got dtype {raw.dtype}")
        if raw.size != self.spec.state_dim:
            raise RequestError(f"state: expected {self.spec.state_dim} values, got {raw.size}")
        wide = raw.astype(np.float64).reshape(-1)  # any byte order or width, compared exactly
        if not np.all(np.isfinite(wide)):
            raise RequestError("state: contains NaN or infinity")
        too_big = np.flatnonzero(np.abs(wide) > MAX_STATE_ABS)
        if too_big.size:
            i = int(too_big[0])
            raise RequestError(
                f"state: values must be within +-{MAX_STATE_ABS:g}, got {wide[i]:g} at index {i}"
            )
        return images, wide.astype(np.float32)

    @staticmethod
    def validate_frame_index(value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
            raise RequestError(f"frame_index: expected a non-negative integer, got {type(value).__name__}")
        if not 0 <= int(value) <= MAX_FRAME_INDEX:
            raise RequestError(f"frame_index: must be within [0, {MAX_FRAME_INDEX}], got {int(value)}")
        return int(value)

    # Inference -------------------------------------------------------------------------------

    def _new_grid(self, session: EngineSession, start: int) -> Grid:
        """A cache whose conditioning frame is the real frame `start` (as a new episode starts)."""
        frame = session.frames[start]
        cond = self.policy.codec.encode(torch.from_numpy(frame)[None, None].to(self._device))
        text, mask = self.policy.text.encode([session.instruction])
        null = null_mask = None
        if self.cfg.cfg_scale != 1.0:
            null, null_mask = self.policy.text.null()
        image = channels = None
        if self.cfg.image_conditioning is not None:
            pixels = torch.from_numpy(frame)[None].to(self._device)
            latent_frames = 1 + self.cfg.cache_chunks * self.cfg.latent_frames_per_chunk
            image, channels = self.policy.codec.first_frame_conditioning(pixels, latent_frames)
        sampler = self.sampler.start(cond, text, mask, null, null_mask, image, channels)
        return Grid(sampler, start)

    def _write_chunk(self, session: EngineSession, grid: Grid) -> bool:
        """Writes the next whole chunk of real frames after the grid's end; False if any is missing."""
        n = self.cfg.video_frames_per_chunk
        end = grid.end(n)
        wanted = range(end, end + n + 1)  # the previous frame, then the chunk's frames
        if any(i not in session.frames for i in wanted):
            return False
        prev = torch.from_numpy(session.frames[end])[None].to(self._device)
        chunk = np.stack([session.frames[i] for i in wanted[1:]])
        latents = self.policy.codec.encode_chunk(prev, torch.from_numpy(chunk)[None].to(self._device))
        self.sampler.observe(grid.sampler, latents)
        session.writes.append(CacheWrite(grid.start, grid.sampler.chunks_done, tuple(wanted[1:])))
        return True

    def _receive(
        self, session: EngineSession | None, request: InferRequest, pending: _Pending
    ) -> EngineSession:
        """Adds the request's frames at their video-rate indices; a new session starts at its last frame."""
        images, index = pending.images, pending.frame_index
        if session is None:
            session = EngineSession(request.instruction)
            last = 0 if index is None else index
            session.frames[last] = images[-1].copy()
            session.now = last
            return session
        last = session.now + images.shape[0] if index is None else index
        if last < session.now:
            raise RequestError(
                f"frame_index: {last} is before the session's latest frame {session.now}; "
                "send reset to start the episode over"
            )
        first = last - images.shape[0] + 1
        for offset, frame in enumerate(images):
            if first + offset > session.now:
                session.frames[first + offset] = frame.copy()
        session.now = last
        keep = self.cfg.cache_chunks * self.cfg.video_frames_per_chunk
        for old in [i for i in session.frames if i < session.now - keep]:
            del session.frames[old]
        return session

    def _grid_for_now(self, session: EngineSession) -> Grid:
        """The cache whose chunk grid has a boundary at the latest frame, caught up with every
        whole chunk of real frames since its last one; a fresh one when it cannot be."""
        n = self.cfg.video_frames_per_chunk
        now = session.now
        for phase in [p for p, g in session.grids.items() if now - g.end(n) > self.cfg.cache_chunks * n]:
            del session.grids[phase]  # too far behind to ever catch up
        grid = session.grids.get(now % n)
        while grid is not None and now - grid.end(n) >= n and not self.sampler.needs_reset(grid.sampler):
            if not self._write_chunk(session, grid):
                break
        if grid is None or grid.end(n) != now or self.sampler.needs_reset(grid.sampler):
            grid = self._new_grid(session, now)  # a new phase, a gap, or the trained context is full
            session.grids[now % n] = grid
        session.grids.move_to_end(now % n)
        while len(session.grids) > MAX_PHASES:  # e.g. a client sending one frame per request
            session.grids.popitem(last=False)
        return grid

    def _prepare(self, pending: _Pending) -> tuple[EngineSession, Grid]:
        """The request's session and the cache to predict from, with the new frames written in."""
        request = pending.request
        session = None if request.reset else self.sessions.get(request.key)
        if session is not None and session.instruction != request.instruction:
            session = None  # a new prompt starts a new session, as in DreamZero
        fresh = session is None
        session = self._receive(session, request, pending)
        if fresh:
            self.sessions.put(request.key, session)
        return session, self._grid_for_now(session)

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
            frame_index = self.validate_frame_index(request.frame_index)
        except RequestError:
            metrics.REQUESTS.labels("bad_request").inc()
            raise
        pending = _Pending(request, images, state, frame_index, started, time.perf_counter())
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
        """Continuous batching: an idle worker runs a request at once; a batch is whatever queued
        while the previous batch ran, up to max_batch, and requests that arrive while the batch
        encodes join it before it denoises. Nothing ever waits for company."""
        if self._device.index is not None and self._device.type == "cuda":  # its streams, CUDA graphs
            torch.cuda.set_device(self._device)
        backlog: list[_Pending] = []  # in arrival order
        served: list[_Pending] = []  # answered, not yet in the metrics and the request log
        while not self._stopping.is_set():
            if not backlog:
                try:
                    idle_wait = ACCOUNT_AFTER_IDLE_S if served else 0.1
                    self._admit(self._queue.get(timeout=idle_wait), backlog)
                except queue.Empty:
                    self._account_all(served)
                    continue
            tasks: list[_Task] = []  # tasks run between batches, never inside one
            self._drain(backlog, tasks)
            for task in tasks:
                self._admit(task, backlog)
            if not backlog:
                continue
            keys: set[SessionKey] = set()
            batch = self._take(backlog, self.max_batch, keys)
            self._account_all(served)  # a busy worker is never idle: the bookkeeping goes first
            late = partial(self._late, backlog, tasks, keys)
            served += [item for item in self._run_batch(batch, late) if item.counted]
            for task in tasks:
                self._admit(task, backlog)

    def _drain(self, backlog: list[_Pending], tasks: list[_Task]) -> None:
        """Everything queued now: requests into the backlog, tasks aside."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Pending):
                backlog.append(item)
            else:
                tasks.append(item)

    def _late(
        self, backlog: list[_Pending], tasks: list[_Task], keys: set[SessionKey], room: int
    ) -> list[_Pending]:
        """Requests that queued while the batch encoded, to join it before it denoises."""
        self._drain(backlog, tasks)
        return self._take(backlog, room, keys)

    @staticmethod
    def _take(backlog: list[_Pending], room: int, keys: set[SessionKey]) -> list[_Pending]:
        """Up to `room` requests from the backlog, oldest first, none of a session in `keys`: one
        session's requests run in order, one per batch."""
        taken: list[_Pending] = []
        for item in backlog:
            if len(taken) < room and item.request.key not in keys:
                taken.append(item)
                keys.add(item.request.key)
        backlog[:] = [item for item in backlog if all(item is not t for t in taken)]
        return taken

    def _account_all(self, served: list[_Pending]) -> None:
        """The bookkeeping of answered requests, done once the worker is idle or about to start the
        next batch. Done as each result is set, it held the GIL just when the event loop wanted it
        to send the chunk: ~0.2 ms more per round trip (benchmarks/serving.py)."""
        for pending in served:
            if pending.future.done():
                self._account(pending.future)
        served.clear()

    @staticmethod
    def _admit(item: _Pending | _Task, backlog: list[_Pending]) -> None:
        """A request joins the backlog; a task runs at once."""
        if isinstance(item, _Pending):
            backlog.append(item)
            return
        try:
            item.run()
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            item.future.set_exception(exc)
        else:
            item.future.set_result(None)

    def warm_up(self, image_size: int = 64) -> None:
        """Runs requests through the batching thread before serving, so the first robot does not
        pay for lazy setup: one alone, then (with `max_batch` > 1) two batched together. With
        `compile` this is when the step compiles: batch 1, then a symbolic batch size that
        serves every later batch (CUDA graphs are recorded at the first use of each batch size,
        without compiling). Raises what the requests raised (NonFiniteActions for a broken model);
        the warm-up sessions are forgotten either way."""
        if self._stopping.is_set():
            raise RuntimeError("warm_up: the engine is closed")
        images = np.zeros((len(self.cfg.cameras), image_size, image_size, 3), np.uint8)
        state = np.zeros(self.spec.state_dim, np.float32)
        sizes = [1] if self.max_batch == 1 else [1, 2]
        keys: list[SessionKey] = []
        try:
            for size in sizes:
                batch = []
                for i in range(size):
                    request = InferRequest(f"__warmup__/{size}/{i}", "warm up", images, state)
                    checked, vector = self.validate(request)
                    now = time.perf_counter()
                    batch.append(_Pending(request, checked, vector, None, now, now, counted=False))
                    keys.append(request.key)
                task = _Task(partial(self._run_batch, batch))
                self._queue.put(task)
                task.future.result()
                for pending in batch:
                    pending.future.result()
        finally:
            with self._lock:
                for key in keys:
                    self.sessions.drop(key)

    @torch.no_grad()
    def _run_batch(
        self, batch: list[_Pending], late: Callable[[int], list[_Pending]] | None = None
    ) -> list[_Pending]:
        """Encodes each request into its session, takes in the requests `late` hands over while
        there is room (those that arrived during the encoding), then denoises all at once.
        Returns every request it ran."""
        batch = list(batch)
        with self._lock:
            ready: list[tuple[_Pending, EngineSession, Grid, Tensor, float]] = []
            todo = batch
            while todo:
                for pending in todo:
                    try:
                        pending.started_batch = time.perf_counter()
                        session, grid = self._prepare(pending)
                        norm = self.state_norm.normalize(pending.state) if self.state_norm else pending.state
                        state = pad_last(norm, self.cfg.max_state_dim)
                        ready.append((pending, session, grid, state, time.perf_counter()))
                    except Exception as exc:  # noqa: BLE001 - one bad request must not sink the batch
                        pending.future.set_exception(exc)
                todo = (
                    late(self.max_batch - len(batch))
                    if late is not None and len(batch) < self.max_batch
                    else []
                )
                batch += todo
            if not ready:
                return batch
            try:
                pred = self._predict(
                    [r[2] for r in ready],
                    [r[1] for r in ready],
                    [r[0].request.session_id for r in ready],
                    [r[3] for r in ready],
                )
            except Exception as exc:  # noqa: BLE001
                for pending, *_ in ready:
                    pending.future.set_exception(exc)
                return batch
            every = pred[:, :, : self.spec.action_dim].float().cpu().numpy()  # one device sync
            done = time.perf_counter()
            answers: list[tuple[_Pending, InferResult | Exception]] = []
            for i, (pending, session, _, _, encoded) in enumerate(ready):
                actions = every[i]
                if self.action_norm is not None:
                    actions = self.action_norm.denormalize(actions)
                session.chunk_index += 1
                timing = ServerTiming(
                    validate_ms=(pending.validated - pending.started) * 1000,
                    queue_ms=(pending.started_batch - pending.validated) * 1000,
                    encode_ms=(encoded - pending.started_batch) * 1000,
                    denoise_ms=(done - encoded) * 1000,
                    total_ms=(done - pending.started) * 1000,
                    batch_size=len(ready),
                )
                if not np.all(np.isfinite(actions)):
                    answers.append((pending, NonFiniteActions(NON_FINITE)))
                    continue
                result = InferResult(
                    actions.astype(np.float32),
                    pending.request.session_id,
                    session.chunk_index,
                    self.version,
                    timing,
                )
                answers.append((pending, result))
            self.sessions.shrink(keep=ready[-1][0].request.key)
            metrics.SESSION_BYTES.set(self.sessions.nbytes())
        # The results go out last: whatever the worker does after them holds the GIL while the
        # event loop waits to send the chunks.
        for pending, answer in answers:
            if isinstance(answer, Exception):
                pending.future.set_exception(answer)
            else:
                pending.future.set_result(answer)
        return batch

    def _predict(
        self, grids: list[Grid], sessions: list[EngineSession], ids: list[str], states: list[Tensor]
    ) -> Tensor:
        """Denoises every session's next chunk at once; noise seeded by (session, chunk) so a
        request gives the same chunk on any protocol, replica or batch."""
        gens: list[torch.Generator | None] = [
            torch.Generator().manual_seed(zlib.crc32(f"{self.seed}/{sid}/{s.chunk_index}".encode()))
            for sid, s in zip(ids, sessions, strict=True)
        ]
        state = torch.stack(states).to(self._device)
        n = len(grids)
        masks = (self._state_mask.expand(n, -1), self._action_mask.expand(n, -1))
        embodiments = [self.embodiment_name] * n
        if n == 1:
            return self.sampler.predict(grids[0].sampler, state, *masks, embodiments, gens[0]).actions
        return self.sampler.predict_batch(
            [g.sampler for g in grids], state, *masks, embodiments, gens
        ).actions

    def close(self) -> None:
        """Stops the batching thread (after the batch in flight)."""
        self._stopping.set()
        self._thread.join(timeout=10)

    def reset(self, session_id: str, owner: str = "") -> None:
        """Forgets one owner's session; another owner's session of the same id is untouched."""
        with self._lock:
            self.sessions.drop((owner, session_id))
