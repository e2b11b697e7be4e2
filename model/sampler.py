"""Few-step flow sampling of one action chunk at a time over a per-episode KV cache.

A session starts from a conditioning frame and an instruction. `predict` denoises the next
chunk's video latents and actions together: UniPC (DreamZero's solver, diffusers' flow-matching
UniPC) or Euler on shifted sigmas that end exactly at 0, running the DiT only on the steps of
`dit_steps` (the others reuse its last prediction) and guiding the video with CFG. After the
robot executed the chunk, `observe` encodes what really happened into the cache at timestep 0,
in place of the prediction. After `cache_chunks` (at most the trained context) the session
must be restarted from the latest real frame (a hard reset, as in DreamZero).

Any dtype works: noise is drawn in float32 and the solver integrates in float32; only the DiT
runs in the model's dtype (bf16 / fp16 on a GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from diffusers import UniPCMultistepScheduler
from torch import Tensor

from wamfleet.model.config import WAMConfig
from wamfleet.model.objective import shift_sigmas
from wamfleet.model.sequence import (
    clean_timesteps,
    clean_tokens,
    cond_tokens,
    history_capacity,
    history_tokens,
    query_channels,
    query_meta,
    query_timesteps,
    query_tokens,
    split_query,
    state_token,
)
from wamfleet.model.transformer import (
    BlockSegments,
    CompileSettings,
    CrossContext,
    KVCache,
    TokenMeta,
    WorldActionModel,
    compile_segments,
)

NUM_TRAIN_TIMESTEPS = 1000


def inference_sigmas(steps: int, shift: float) -> Tensor:
    """steps + 1 decreasing noise levels from 1 to exactly 0, shifted (the grid diffusers'
    flow-matching UniPC walks, sigma_min = 1/1000 before the shift)."""
    base = torch.linspace(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, steps + 1, dtype=torch.float64)[:-1]
    return torch.cat([shift_sigmas(base, shift), torch.zeros(1, dtype=torch.float64)]).float()


class Solver(Protocol):
    def step(self, velocity: Tensor, index: int, sample: Tensor) -> Tensor: ...


class EulerSolver:
    def __init__(self, sigmas: Tensor) -> None:
        self.sigmas = sigmas

    def step(self, velocity: Tensor, index: int, sample: Tensor) -> Tensor:
        return sample + float(self.sigmas[index + 1] - self.sigmas[index]) * velocity


class UniPCSolver:
    """diffusers' UniPC multistep scheduler in flow-matching mode (DreamZero's solver)."""

    def __init__(self, steps: int, shift: float) -> None:
        scheduler: Any = UniPCMultistepScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=shift,
        )
        self.scheduler = scheduler
        self.scheduler.set_timesteps(steps)

    def step(self, velocity: Tensor, index: int, sample: Tensor) -> Tensor:
        timestep = self.scheduler.timesteps[index]
        out = self.scheduler.step(velocity, timestep, sample, return_dict=False)
        return out[0]  # type: ignore[no-any-return]


def make_solver(cfg: WAMConfig) -> Solver:
    if cfg.solver == "unipc":
        return UniPCSolver(cfg.inference_steps, cfg.flow_shift)
    return EulerSolver(inference_sigmas(cfg.inference_steps, cfg.flow_shift))


@dataclass
class Session:
    cond: Tensor  # (B, C, 1, h, w)
    cross: CrossContext
    null_cross: CrossContext | None
    cache: KVCache
    null_cache: KVCache | None
    channels: Tensor | None = None  # I2V: (B, mask + C, 1 + cache_chunks * Fc, h, w)
    history: list[Tensor] = field(default_factory=list)  # clean latents per executed chunk
    chunks_done: int = 0

    def nbytes(self) -> int:
        caches = [self.cache] + ([self.null_cache] if self.null_cache is not None else [])
        crosses = [self.cross] + ([self.null_cross] if self.null_cross is not None else [])
        tensors = [self.cond, *self.history] + ([self.channels] if self.channels is not None else [])
        return (
            sum(c.nbytes() for c in caches)
            + sum(c.nbytes() for c in crosses)
            + sum(t.numel() * t.element_size() for t in tensors)
        )


@dataclass
class ChunkPrediction:
    actions: Tensor  # (B, A, max_action_dim), normalised, float32
    video: Tensor  # (B, C, Fc, h, w) predicted latents (normalised), float32
    dit_calls: int


Velocity = Callable[[Tensor, Tensor, bool], Tensor]  # (query tokens, timesteps, null?) -> hidden


class ChunkSampler:
    """Runs a WorldActionModel in closed loop; `use_cache=False` recomputes history every call.

    `compile`: the denoising step's DiT call runs its blocks' per-token segments through
    `torch.compile` (transformer.compile_segments); the attentions over each session's own
    cache stay eager, so a compiled step equals the eager one (to float rounding with
    inductor) and never recompiles for a cache length. Writing a chunk into the cache
    (`start`, `observe`) stays eager: it runs once per chunk, the step once per DiT step.
    """

    def __init__(
        self, model: WorldActionModel, *, use_cache: bool = True, compile: CompileSettings | None = None
    ) -> None:
        self.model = model
        self.use_cache = use_cache
        self.compile = compile
        self.segments: BlockSegments | None = compile_segments(compile) if compile is not None else None

    def _step(self) -> None:
        """Before each compiled DiT call: with CUDA graphs, a new step of graph replays (the
        previous call's graph outputs were consumed before this call)."""
        if self.compile is not None and self.compile.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

    @property
    def cfg(self) -> WAMConfig:
        return self.model.config

    def _write(self, cache: KVCache, tokens: Tensor, meta: TokenMeta, cross: CrossContext) -> None:
        self.model.run(tokens, clean_timesteps(tokens), meta, cross, cache=cache, write_cache=True)

    @torch.no_grad()
    def start(
        self,
        cond: Tensor,
        text: Tensor,
        text_mask: Tensor | None = None,
        null_text: Tensor | None = None,
        null_mask: Tensor | None = None,
        image: Tensor | None = None,
        channels: Tensor | None = None,
    ) -> Session:
        """A new session on a conditioning frame's latent (B, C, 1, h, w).

        Wan I2V models also take the first frame's CLIP tokens `image` and its first-frame
        `channels` (B, mask + C, 1 + cache_chunks * Fc, h, w) (see VideoCodec.first_frame_channels).
        """
        cfg = self.cfg
        if cfg.image_conditioning is not None and (image is None or channels is None):
            raise ValueError("image, channels: an I2V model needs the first frame's CLIP tokens and channels")
        cross = self.model.cross_context(text, text_mask, image)
        guided = cfg.cfg_scale != 1.0
        if guided and null_text is None:
            raise ValueError(
                "null_text: classifier-free guidance (cfg_scale != 1) needs the empty instruction"
            )
        null = (
            self.model.cross_context(null_text, null_mask, image)
            if guided and null_text is not None
            else None
        )
        capacity = history_capacity(cfg)
        session = Session(
            cond,
            cross,
            null,
            KVCache(capacity),
            KVCache(capacity) if null is not None else None,
            channels,
        )
        if self.use_cache:
            tokens, meta = cond_tokens(self.model, cond, channels)
            self._write(session.cache, tokens, meta, cross)
            if null is not None and session.null_cache is not None:
                self._write(session.null_cache, tokens, meta, null)
        return session

    def needs_reset(self, session: Session) -> bool:
        return session.chunks_done >= self.cfg.cache_chunks

    def _recomputed(
        self, session: Session, cross: CrossContext, query: Tensor, t: Tensor, meta: TokenMeta
    ) -> Tensor:
        """The query's hidden states with the whole history recomputed (no cache): the reference."""
        clean = torch.cat(session.history, dim=2) if session.history else None
        tokens, history = history_tokens(self.model, session.cond, clean, session.channels)
        hidden = self.model.run(
            torch.cat([tokens, query], 1),
            torch.cat([clean_timesteps(tokens), t], 1),
            TokenMeta.cat([history, meta]),
            cross,
        )
        return hidden[:, tokens.shape[1] :]

    def _denoise(
        self,
        noise: list[torch.Generator | None],
        state: Tensor,
        state_mask: Tensor,
        action_mask: Tensor,
        embodiments: list[str],
        channels: Tensor | None,
        velocity: Velocity,
        guided: bool,
    ) -> ChunkPrediction:
        """The solver's steps from noise to a chunk; `velocity(query, t, null)` runs the DiT."""
        cfg, model = self.cfg, self.model
        fc, (lh, lw) = cfg.latent_frames_per_chunk, cfg.latent_hw
        device = state.device
        b = state.shape[0]
        gens = noise if len(noise) == b else [noise[0]]
        per = b // len(gens)
        video = torch.cat([torch.randn(per, cfg.vae.z_dim, fc, lh, lw, generator=g) for g in gens]).to(device)
        actions = torch.cat(
            [torch.randn(per, cfg.actions_per_chunk, cfg.max_action_dim, generator=g) for g in gens]
        ).to(device)
        sigmas = inference_sigmas(cfg.inference_steps, cfg.flow_shift)
        solver = make_solver(cfg)  # one solver for both: the update is the same per element
        n_video = video[0].numel()
        calls = 0
        state_tok = state_token(model, state, state_mask, embodiments)
        video_v = action_v = torch.zeros(0)
        for i, run_dit in enumerate(cfg.dit_step_mask):
            if run_dit:
                query = query_tokens(model, video, actions, state_tok, action_mask, embodiments, channels)
                t = query_timesteps(torch.full((b,), float(sigmas[i]), device=device), query.shape[1])
                video_v, action_v = split_query(model, velocity(query, t, False), embodiments)
                calls += 1
                if guided:
                    video_u, _ = split_query(model, velocity(query, t, True), embodiments)
                    video_v = video_u + cfg.cfg_scale * (video_v - video_u)
                    calls += 1
            sample = torch.cat([video.flatten(1), actions.flatten(1)], dim=1)
            velocity_all = torch.cat([video_v.flatten(1), action_v.flatten(1)], dim=1)
            sample = solver.step(velocity_all, i, sample)
            video, actions = sample[:, :n_video].view_as(video), sample[:, n_video:].view_as(actions)
        return ChunkPrediction(actions=actions.float(), video=video.float(), dit_calls=calls)

    def _query_channels(self, sessions: list[Session]) -> Tensor | None:
        if sessions[0].channels is None:
            return None
        parts = [query_channels(self.cfg, s.channels, s.chunks_done + 1) for s in sessions]
        return torch.cat([p for p in parts if p is not None])

    @torch.no_grad()
    def predict(
        self,
        session: Session,
        state: Tensor,
        state_mask: Tensor,
        action_mask: Tensor,
        embodiments: list[str],
        generator: torch.Generator | None = None,
    ) -> ChunkPrediction:
        """Denoises the next chunk: (B, max_state_dim) state in, (B, A, max_action_dim) actions out."""
        if self.needs_reset(session):
            raise RuntimeError("the session's cache is full; start a new session from the latest frame")
        meta = self.model._to_device(query_meta(self.cfg, session.chunks_done + 1), state.device)

        def velocity(query: Tensor, t: Tensor, null: bool) -> Tensor:
            cross = session.null_cross if null else session.cross
            cache = session.null_cache if null else session.cache
            assert cross is not None and cache is not None
            if self.use_cache:
                self._step()
                return self.model.run(query, t, meta, cross, cache, segments=self.segments)
            return self._recomputed(session, cross, query, t, meta)

        guided = session.null_cross is not None
        channels = self._query_channels([session])
        return self._denoise(
            [generator], state, state_mask, action_mask, embodiments, channels, velocity, guided
        )

    @torch.no_grad()
    def predict_batch(
        self,
        sessions: list[Session],
        state: Tensor,
        state_mask: Tensor,
        action_mask: Tensor,
        embodiments: list[str],
        generators: list[torch.Generator | None],
    ) -> ChunkPrediction:
        """Denoises the next chunk of several one-sample sessions together, whatever their chunk.

        Each sample attends to its own session's cache and instruction in place (nothing is
        stacked or copied) and keeps its own positions, so each result equals its own `predict`.
        """
        if not self.use_cache:
            raise ValueError("predict_batch: needs the KV cache")
        if any(s.cond.shape[0] != 1 for s in sessions) or len(generators) != len(sessions):
            raise ValueError("sessions: each must hold one sample, with one generator each")
        if any(self.needs_reset(s) for s in sessions):
            raise RuntimeError("a session's cache is full; start a new session from the latest frame")
        guided = sessions[0].null_cross is not None
        if any((s.null_cross is not None) != guided for s in sessions):
            raise ValueError("sessions: all guided or none")
        meta = TokenMeta.stack([query_meta(self.cfg, s.chunks_done + 1) for s in sessions])
        meta = self.model._to_device(meta, state.device)
        caches = [s.cache for s in sessions]
        crosses = [s.cross for s in sessions]
        null_caches = [s.null_cache for s in sessions if s.null_cache is not None]
        null_crosses = [s.null_cross for s in sessions if s.null_cross is not None]

        def velocity(query: Tensor, t: Tensor, null: bool) -> Tensor:
            self._step()
            if null:
                return self.model.run(query, t, meta, null_crosses, null_caches, segments=self.segments)
            return self.model.run(query, t, meta, crosses, caches, segments=self.segments)

        channels = self._query_channels(sessions)
        return self._denoise(
            generators, state, state_mask, action_mask, embodiments, channels, velocity, guided
        )

    @torch.no_grad()
    def observe(self, session: Session, latents: Tensor) -> None:
        """Writes the executed chunk's real latents (B, C, Fc, h, w) into the session's history."""
        cfg = self.cfg
        expected = (session.cond.shape[0], cfg.vae.z_dim, cfg.latent_frames_per_chunk, *cfg.latent_hw)
        if tuple(latents.shape) != expected:
            raise ValueError(f"latents: expected shape {expected}, got {tuple(latents.shape)}")
        if self.needs_reset(session):
            raise RuntimeError("the session's cache is full; start a new session from the latest frame")
        chunk = session.chunks_done + 1
        if self.use_cache:
            tokens, meta = clean_tokens(self.model, latents, chunk, session.channels)
            self._write(session.cache, tokens, meta, session.cross)
            if session.null_cross is not None and session.null_cache is not None:
                self._write(session.null_cache, tokens, meta, session.null_cross)
        if not self.use_cache:
            session.history.append(latents)  # the recomputing reference rebuilds from these
        session.chunks_done = chunk
