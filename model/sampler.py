"""Few-step flow sampling of one action chunk at a time over a per-episode KV cache.

A session starts from a conditioning frame and an instruction. `predict` denoises the next
chunk's video latents and actions together (Euler steps on shifted sigmas that end exactly at
0, optionally running the DiT only every n-th step and guiding the video with CFG). After the
robot executed the chunk, `observe` encodes what really happened into the cache at timestep 0,
in place of the prediction. After `max_cache_chunks` the session must be restarted from the
latest real frame (a hard reset, as in DreamZero).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from wamfleet.model.config import WAMConfig
from wamfleet.model.objective import TIMESTEP_SCALE, shift_sigmas
from wamfleet.model.transformer import (
    Kind,
    KVCache,
    TokenMeta,
    WorldActionModel,
    action_meta,
    state_meta,
    video_meta,
)


def inference_sigmas(steps: int, shift: float) -> Tensor:
    """steps+1 decreasing noise levels from 1 to exactly 0, shifted; no step is wasted at 0."""
    base = torch.linspace(1.0, 0.0, steps + 1)[:-1]
    return torch.cat([shift_sigmas(base, shift), torch.zeros(1)])


def _stack_conditioning(items: list[Conditioning]) -> Conditioning:
    """One batch of conditionings (texts padded to the same token count by the encoder)."""
    layers = len(items[0].text_kv)
    kv = [
        (torch.cat([c.text_kv[i][0] for c in items]), torch.cat([c.text_kv[i][1] for c in items]))
        for i in range(layers)
    ]
    if all(c.text_mask is None for c in items):
        return Conditioning(kv, None)
    tokens = kv[0][0].shape[1]
    masks = [
        c.text_mask
        if c.text_mask is not None
        else torch.ones(1, 1, 1, tokens, dtype=torch.bool, device=kv[0][0].device)
        for c in items
    ]
    return Conditioning(kv, torch.cat(masks))


@dataclass
class Conditioning:
    """What a session is told once: the instruction (and the empty one, for guidance)."""

    text_kv: list[tuple[Tensor, Tensor]]
    text_mask: Tensor | None


@dataclass
class Session:
    cond: Tensor  # (B, C, 1, h, w)
    text: Conditioning
    null_text: Conditioning | None
    cache: KVCache
    null_cache: KVCache | None
    history: list[Tensor] = field(default_factory=list)  # clean latents per executed chunk
    chunks_done: int = 0


@dataclass
class ChunkPrediction:
    actions: Tensor  # (B, A, max_action_dim), normalised
    video: Tensor  # (B, C, Fc, h, w) predicted latents (normalised)
    dit_calls: int


class ChunkSampler:
    """Runs a WorldActionModel in closed loop; `use_cache=False` recomputes history every call."""

    def __init__(self, model: WorldActionModel, *, use_cache: bool = True) -> None:
        self.model = model
        self.use_cache = use_cache

    @property
    def cfg(self) -> WAMConfig:
        return self.model.config

    def _conditioning(self, text: Tensor, text_mask: Tensor | None) -> Conditioning:
        kv, mask = self.model.text_context(text, text_mask)
        return Conditioning(kv, mask)

    def _cond_tokens(self, session_cond: Tensor) -> tuple[Tensor, TokenMeta]:
        return self.model.video_tokens(session_cond, 0, Kind.COND, 0)

    def _history_tokens(self, session: Session) -> tuple[Tensor, TokenMeta]:
        fc = self.cfg.latent_frames_per_chunk
        parts = [self._cond_tokens(session.cond)]
        for i, latents in enumerate(session.history):
            parts.append(self.model.video_tokens(latents, 1 + i * fc, Kind.CLEAN, i + 1))
        return torch.cat([p[0] for p in parts], dim=1), TokenMeta.cat([p[1] for p in parts])

    def _write(self, cache: KVCache, tokens: Tensor, meta: TokenMeta, cond: Conditioning) -> None:
        zeros = torch.zeros(tokens.shape[0], tokens.shape[1], device=tokens.device)
        self.model.run(tokens, zeros, meta, cond.text_kv, cond.text_mask, cache=cache, write_cache=True)

    @torch.no_grad()
    def start(
        self,
        cond: Tensor,
        text: Tensor,
        text_mask: Tensor | None = None,
        null_text: Tensor | None = None,
        null_mask: Tensor | None = None,
    ) -> Session:
        """A new session on a conditioning frame's latent (B, C, 1, h, w)."""
        conditioning = self._conditioning(text, text_mask)
        guided = self.cfg.cfg_scale != 1.0
        if guided and null_text is None:
            raise ValueError(
                "null_text: classifier-free guidance (cfg_scale != 1) needs the empty instruction"
            )
        null = self._conditioning(null_text, null_mask) if guided and null_text is not None else None
        session = Session(cond, conditioning, null, KVCache(), KVCache() if null is not None else None)
        if self.use_cache:
            tokens, meta = self._cond_tokens(cond)
            self._write(session.cache, tokens, meta, conditioning)
            if null is not None and session.null_cache is not None:
                self._write(session.null_cache, tokens, meta, null)
        return session

    def needs_reset(self, session: Session) -> bool:
        return session.chunks_done >= int(self.model.config.max_cache_chunks)

    def _velocity(
        self,
        session: Session,
        conditioning: Conditioning,
        cache: KVCache | None,
        query: Tensor,
        query_t: Tensor,
        query_meta: TokenMeta,
    ) -> Tensor:
        if self.use_cache:
            return self.model.run(
                query, query_t, query_meta, conditioning.text_kv, conditioning.text_mask, cache
            )
        tokens, meta = self._history_tokens(session)
        zeros = torch.zeros(tokens.shape[0], tokens.shape[1], device=tokens.device)
        hidden = self.model.run(
            torch.cat([tokens, query], 1),
            torch.cat([zeros, query_t], 1),
            TokenMeta.cat([meta, query_meta]),
            conditioning.text_kv,
            conditioning.text_mask,
        )
        return hidden[:, tokens.shape[1] :]

    def _query_meta(self, chunk: int) -> TokenMeta:
        cfg = self.cfg
        fc, (lh, lw), p = cfg.latent_frames_per_chunk, cfg.latent_hw, cfg.patch_size
        frame = 1 + (chunk - 1) * fc
        return TokenMeta.cat(
            [
                video_meta(fc, lh // p[1], lw // p[2], frame, Kind.NOISY, chunk),
                action_meta(cfg.actions_per_chunk, chunk, frame),
                state_meta(chunk, frame),
            ]
        )

    def _denoise(
        self,
        noise: list[torch.Generator | None],
        meta: TokenMeta,
        state: Tensor,
        state_mask: Tensor,
        action_mask: Tensor,
        embodiments: list[str],
        velocity: Callable[[Tensor, Tensor, TokenMeta, bool], Tensor],
        guided: bool,
    ) -> ChunkPrediction:
        """Euler steps from noise to a chunk; `velocity(query, t, meta, null)` runs the DiT."""
        cfg, model = self.cfg, self.model
        fc, (lh, lw) = cfg.latent_frames_per_chunk, cfg.latent_hw
        device = state.device
        b = state.shape[0]
        per_sample = len(noise) == b
        gens = noise if per_sample else [noise[0]]
        video = torch.cat([torch.randn(b // len(gens), cfg.vae.z_dim, fc, lh, lw, generator=g) for g in gens])
        actions = torch.cat(
            [
                torch.randn(b // len(gens), cfg.actions_per_chunk, cfg.max_action_dim, generator=g)
                for g in gens
            ]
        )
        video, actions = video.to(device), actions.to(device)
        meta = TokenMeta(meta.kind.to(device), meta.chunk.to(device), meta.pos.to(device))
        state_tok = model.state_tokens(state, state_mask, embodiments, 0, 0)[0]
        sigmas = inference_sigmas(cfg.inference_steps, cfg.flow_shift)
        n_video = fc * cfg.tokens_per_latent_frame
        calls = 0
        video_v = action_v = None
        for i in range(cfg.inference_steps):
            if i % cfg.dit_step_stride == 0 or video_v is None or action_v is None:
                v_tok = model.video_tokens(video, 0, Kind.NOISY, 0)[0]
                a_tok = model.action_tokens(actions, action_mask, embodiments, 0, 0)[0]
                query = torch.cat([v_tok, a_tok, state_tok], 1)
                t = torch.full((b, query.shape[1]), float(sigmas[i]) * TIMESTEP_SCALE, device=device)
                t[:, -1] = 0.0  # the state is clean
                hidden = velocity(query, t, meta, False)
                video_v = model.unpatchify(hidden[:, :n_video], fc)
                action_v = model.decode_actions(
                    hidden[:, n_video : n_video + cfg.actions_per_chunk], embodiments
                )
                if guided:
                    video_u = model.unpatchify(velocity(query, t, meta, True)[:, :n_video], fc)
                    video_v = video_u + cfg.cfg_scale * (video_v - video_u)
                    calls += 1
                calls += 1
            dt = float(sigmas[i + 1] - sigmas[i])
            video = video + dt * video_v
            actions = actions + dt * action_v
        return ChunkPrediction(actions=actions, video=video, dit_calls=calls)

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

        def velocity(query: Tensor, t: Tensor, meta: TokenMeta, null: bool) -> Tensor:
            if null:
                return self._velocity(session, session.null_text, session.null_cache, query, t, meta)  # type: ignore[arg-type]
            return self._velocity(session, session.text, session.cache, query, t, meta)

        meta = self._query_meta(session.chunks_done + 1)
        guided = session.null_text is not None
        return self._denoise([generator], meta, state, state_mask, action_mask, embodiments, velocity, guided)

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

        Caches of different lengths are padded (PAD tokens nobody attends to) and every sample
        keeps its own positions and mask, so each result equals the session's own `predict`.
        """
        if not self.use_cache:
            raise ValueError("predict_batch: needs the KV cache")
        if any(s.cond.shape[0] != 1 for s in sessions) or len(generators) != len(sessions):
            raise ValueError("sessions: each must hold one sample, with one generator each")
        if any(self.needs_reset(s) for s in sessions):
            raise RuntimeError("a session's cache is full; start a new session from the latest frame")
        meta = TokenMeta.stack([self._query_meta(s.chunks_done + 1) for s in sessions])
        cache = KVCache.stack([s.cache for s in sessions])
        text = _stack_conditioning([s.text for s in sessions])
        guided = sessions[0].null_text is not None
        null_cache = KVCache.stack([s.null_cache for s in sessions]) if guided else None  # type: ignore[misc]
        null_text = _stack_conditioning([s.null_text for s in sessions]) if guided else None  # type: ignore[misc]

        def velocity(query: Tensor, t: Tensor, meta: TokenMeta, null: bool) -> Tensor:
            cond, kv = (null_text, null_cache) if null else (text, cache)
            assert cond is not None
            return self.model.run(query, t, meta, cond.text_kv, cond.text_mask, kv)

        return self._denoise(generators, meta, state, state_mask, action_mask, embodiments, velocity, guided)

    @torch.no_grad()
    def observe(self, session: Session, latents: Tensor) -> None:
        """Writes the executed chunk's real latents (B, C, Fc, h, w) into the session's history."""
        cfg = self.cfg
        expected = (session.cond.shape[0], cfg.vae.z_dim, cfg.latent_frames_per_chunk, *cfg.latent_hw)
        if tuple(latents.shape) != expected:
            raise ValueError(f"latents: expected shape {expected}, got {tuple(latents.shape)}")
        chunk = session.chunks_done + 1
        if self.use_cache:
            frame = 1 + (chunk - 1) * cfg.latent_frames_per_chunk
            tokens, meta = self.model.video_tokens(latents, frame, Kind.CLEAN, chunk)
            self._write(session.cache, tokens, meta, session.text)
            if session.null_text is not None and session.null_cache is not None:
                self._write(session.null_cache, tokens, meta, session.null_text)
        session.history.append(latents)
        session.chunks_done = chunk
