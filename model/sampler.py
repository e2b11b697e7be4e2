"""Few-step flow sampling of one action chunk at a time over a per-episode KV cache.

A session starts from a conditioning frame and an instruction. `predict` denoises the next
chunk's video latents and actions together (Euler steps on shifted sigmas that end exactly at
0, optionally running the DiT only every n-th step and guiding the video with CFG). After the
robot executed the chunk, `observe` encodes what really happened into the cache at timestep 0,
in place of the prediction. After `max_cache_chunks` the session must be restarted from the
latest real frame (a hard reset, as in DreamZero).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from wamfleet.model.config import WAMConfig
from wamfleet.model.objective import TIMESTEP_SCALE, shift_sigmas
from wamfleet.model.transformer import Kind, KVCache, TokenMeta, WorldActionModel


def inference_sigmas(steps: int, shift: float) -> Tensor:
    """steps+1 decreasing noise levels from 1 to exactly 0, shifted; no step is wasted at 0."""
    base = torch.linspace(1.0, 0.0, steps + 1)[:-1]
    return torch.cat([shift_sigmas(base, shift), torch.zeros(1)])


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
        cfg, model = self.cfg, self.model
        b = session.cond.shape[0]
        chunk = session.chunks_done + 1
        fc = cfg.latent_frames_per_chunk
        frame = 1 + (chunk - 1) * fc
        lh, lw = cfg.latent_hw
        device = session.cond.device
        video = torch.randn(b, cfg.vae.z_dim, fc, lh, lw, generator=generator).to(device)
        actions = torch.randn(b, cfg.actions_per_chunk, cfg.max_action_dim, generator=generator).to(device)
        state_tok, state_meta = model.state_tokens(state, state_mask, embodiments, chunk, frame)
        sigmas = inference_sigmas(cfg.inference_steps, cfg.flow_shift)
        n_video = fc * cfg.tokens_per_latent_frame
        calls = 0
        video_v = action_v = None
        for i in range(cfg.inference_steps):
            if i % cfg.dit_step_stride == 0 or video_v is None or action_v is None:
                v_tok, v_meta = model.video_tokens(video, frame, Kind.NOISY, chunk)
                a_tok, a_meta = model.action_tokens(actions, action_mask, embodiments, chunk, frame)
                query = torch.cat([v_tok, a_tok, state_tok], 1)
                meta = TokenMeta.cat([v_meta, a_meta, state_meta])
                t = torch.full((b, query.shape[1]), float(sigmas[i]) * TIMESTEP_SCALE, device=device)
                t[:, -1] = 0.0  # the state is clean
                hidden = self._velocity(session, session.text, session.cache, query, t, meta)
                video_v = model.unpatchify(hidden[:, :n_video], fc)
                action_v = model.decode_actions(
                    hidden[:, n_video : n_video + cfg.actions_per_chunk], embodiments
                )
                if session.null_text is not None:
                    hidden_u = self._velocity(session, session.null_text, session.null_cache, query, t, meta)
                    video_u = model.unpatchify(hidden_u[:, :n_video], fc)
                    video_v = video_u + cfg.cfg_scale * (video_v - video_u)
                    calls += 1
                calls += 1
            dt = float(sigmas[i + 1] - sigmas[i])
            video = video + dt * video_v
            actions = actions + dt * action_v
        return ChunkPrediction(actions=actions, video=video, dit_calls=calls)

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
