"""The World Action Model: a Wan-style DiT that denoises video latents and robot actions together.

One sequence holds, for a window of chunks (DreamZero's teacher forcing):

    [ conditioning frame | clean chunk 1..K | noisy chunk 1..K (video + actions) | state 1..K ]

and a block-causal mask decides who sees whom (see `attention_mask`). A noisy chunk's video
and action tokens share one denoising timestep. At inference the conditioning frame and the
clean chunks live in a per-session KV cache, so predicting chunk k computes only chunk k's
tokens, with exactly the attention pattern the model was trained with.

Parameter names follow diffusers' `WanTransformer3DModel` (patch_embedding, condition_embedder,
blocks.N.attn1/attn2/ffn/norm2/scale_shift_table, norm_out, proj_out, scale_shift_table), so Wan
2.1 weights load by name (see checkpoint.load_wan_transformer). New parts: per-embodiment
action/state encoders and action decoders, and a learned position inside an action chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import cast

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.embeddings import (
    PixArtAlphaTextProjection,
    TimestepEmbedding,
    Timesteps,
    get_1d_rotary_pos_embed,
)
from diffusers.models.normalization import FP32LayerNorm
from torch import Tensor, nn

from wamfleet.model.config import WAMConfig


class Kind(IntEnum):
    COND = 0  # the conditioning frame (clean)
    CLEAN = 1  # a clean chunk: history for later chunks
    NOISY = 2  # a noisy chunk's video or action tokens: what is denoised
    STATE = 3  # a chunk's robot state (clean)
    PAD = -1  # padding in a batch of caches of different lengths: nobody attends to it


@dataclass
class TokenMeta:
    """Per-token facts the mask and rotary embedding are built from: (kind, chunk, t, h, w).

    Shared by the whole batch ((L,), (L, 3)), or per sample ((B, L), (B, L, 3)) when sessions
    at different chunks are denoised together.
    """

    kind: Tensor  # (L,) or (B, L) long
    chunk: Tensor  # (L,) or (B, L) long; 0 for the conditioning frame, k for chunk k
    pos: Tensor  # (L, 3) or (B, L, 3) long: latent frame, row, column

    @property
    def batched(self) -> bool:
        return self.kind.ndim == 2

    def expand(self, batch: int) -> TokenMeta:
        if self.batched:
            return self
        n = len(self)
        return TokenMeta(
            self.kind.expand(batch, n), self.chunk.expand(batch, n), self.pos.expand(batch, n, 3)
        )

    @staticmethod
    def cat(items: list[TokenMeta]) -> TokenMeta:
        if any(m.batched for m in items):
            batch = next(m.kind.shape[0] for m in items if m.batched)
            items = [m.expand(batch) for m in items]
        return TokenMeta(
            torch.cat([m.kind for m in items], dim=-1),
            torch.cat([m.chunk for m in items], dim=-1),
            torch.cat([m.pos for m in items], dim=-2),
        )

    @staticmethod
    def stack(items: list[TokenMeta]) -> TokenMeta:
        """Per-sample metas of equal length -> one batched meta."""
        return TokenMeta(
            torch.stack([m.kind for m in items]),
            torch.stack([m.chunk for m in items]),
            torch.stack([m.pos for m in items]),
        )

    def __len__(self) -> int:
        return int(self.kind.shape[-1])


def video_meta(frames: int, h: int, w: int, first_frame: int, kind: Kind, chunk: Tensor | int) -> TokenMeta:
    """Tokens of `frames` latent frames of h x w patches; `chunk` per frame or one for all."""
    grid = torch.stack(
        torch.meshgrid(
            torch.arange(first_frame, first_frame + frames), torch.arange(h), torch.arange(w), indexing="ij"
        ),
        dim=-1,
    ).reshape(-1, 3)
    per_frame = torch.as_tensor(chunk)
    per_frame = per_frame.expand(frames) if per_frame.ndim == 0 else per_frame
    chunks = per_frame.repeat_interleave(h * w)
    return TokenMeta(torch.full((frames * h * w,), int(kind)), chunks.long(), grid.long())


def action_meta(actions: int, chunk: int, frame: int) -> TokenMeta:
    """A chunk's action tokens: 1D position by chunk (the chunk's first latent frame)."""
    return TokenMeta(
        torch.full((actions,), int(Kind.NOISY)),
        torch.full((actions,), chunk),
        torch.tensor([[frame, 0, 0]]).repeat(actions, 1),
    )


def state_meta(chunk: int, frame: int) -> TokenMeta:
    return TokenMeta(torch.tensor([int(Kind.STATE)]), torch.tensor([chunk]), torch.tensor([[frame, 0, 0]]))


def attention_mask(query: TokenMeta, key: TokenMeta) -> Tensor:
    """Block-causal: (Lq, Lk) bool, True where a query may attend to a key.

    - the conditioning frame sees itself;
    - clean chunk c sees the conditioning frame and clean chunks <= c;
    - noisy chunk c (video and actions) sees the conditioning frame, clean chunks < c, and its
      own noisy tokens and state;
    - state c sees only itself.
    """
    qk, qc = query.kind[..., :, None], query.chunk[..., :, None]
    kk, kc = key.kind[..., None, :], key.chunk[..., None, :]
    sees_cond = kk == Kind.COND
    cond_q = (qk == Kind.COND) & sees_cond
    clean_q = (qk == Kind.CLEAN) & (sees_cond | ((kk == Kind.CLEAN) & (kc <= qc)))
    own = (kc == qc) & ((kk == Kind.NOISY) | (kk == Kind.STATE))
    noisy_q = (qk == Kind.NOISY) & (sees_cond | ((kk == Kind.CLEAN) & (kc < qc)) | own)
    state_q = (qk == Kind.STATE) & (kk == Kind.STATE) & (kc == qc)
    return cond_q | clean_q | noisy_q | state_q


class RotaryEmbedding(nn.Module):
    """Wan's 3D RoPE (time, height, width split of the head dim), looked up by token position."""

    freqs_cos: Tensor
    freqs_sin: Tensor

    def __init__(self, head_dim: int, max_seq_len: int, theta: float = 10000.0) -> None:
        super().__init__()
        h_dim = w_dim = 2 * (head_dim // 6)
        t_dim = head_dim - h_dim - w_dim
        self.split = (t_dim, h_dim, w_dim)
        cos, sin = [], []
        for dim in self.split:
            c, s = get_1d_rotary_pos_embed(
                dim, max_seq_len, theta, use_real=True, repeat_interleave_real=True, freqs_dtype=torch.float64
            )
            cos.append(c)
            sin.append(s)
        self.register_buffer("freqs_cos", torch.cat(cos, dim=1).float(), persistent=False)
        self.register_buffer("freqs_sin", torch.cat(sin, dim=1).float(), persistent=False)

    def forward(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """(L, 3) or (B, L, 3) positions -> cos, sin shaped (1 or B, L, 1, head_dim)."""
        parts_cos = self.freqs_cos.split(self.split, dim=1)
        parts_sin = self.freqs_sin.split(self.split, dim=1)
        cos = torch.cat([parts_cos[i][pos[..., i]] for i in range(3)], dim=-1)
        sin = torch.cat([parts_sin[i][pos[..., i]] for i in range(3)], dim=-1)
        if pos.ndim == 2:
            cos, sin = cos[None], sin[None]
        return cos[:, :, None, :], sin[:, :, None, :]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, L, heads, head_dim), interleaved pairs as in Wan."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x1 * s + x2 * c
    return out.type_as(x)


class Attention(nn.Module):
    """Wan attention parameters (to_q/k/v, to_out.0, norm_q/k across heads); masks and KV caching here."""

    def __init__(self, dim: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)

    def keys_values(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        k = self.norm_k(self.to_k(x)).unflatten(2, (self.heads, -1))
        v = self.to_v(x).unflatten(2, (self.heads, -1))
        if rope is not None:
            k = apply_rotary(k, *rope)
        return k, v

    def forward(
        self,
        x: Tensor,
        keys: Tensor,
        values: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        mask: Tensor | None,
    ) -> Tensor:
        """x: (B, Lq, D) queries; keys/values: (B, Lk, heads, head_dim), already normed and rotated."""
        q = self.norm_q(self.to_q(x)).unflatten(2, (self.heads, -1))
        if rope is not None:
            q = apply_rotary(q, *rope)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            keys.transpose(1, 2),
            values.transpose(1, 2),
            attn_mask=mask[:, None]
            if mask is not None and mask.ndim == 3
            else mask,  # (B, Lq, Lk): per sample
        )
        out = out.transpose(1, 2).flatten(2, 3).type_as(x)
        return cast(Tensor, self.to_out[1](self.to_out[0](out)))


class Block(nn.Module):
    """WanTransformerBlock's computation, with per-token timestep modulation."""

    def __init__(self, cfg: WAMConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.norm1 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.attn1 = Attention(dim, cfg.num_heads, cfg.eps)
        self.attn2 = Attention(dim, cfg.num_heads, cfg.eps)
        self.norm2 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=True)
        self.ffn = FeedForward(dim, inner_dim=cfg.ffn_dim, activation_fn="gelu-approximate")
        self.norm3 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: Tensor,
        temb: Tensor,
        rope: tuple[Tensor, Tensor],
        past: tuple[Tensor, Tensor] | None,
        mask: Tensor | None,
        text_kv: tuple[Tensor, Tensor],
        text_mask: Tensor | None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x: (B, L, D) tokens; temb: (B, L, 6, D); past: cached (keys, values) they may also see.

        Returns the new hidden states and these tokens' own (keys, values) for the cache.
        """
        mods = (self.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)
        shift, scale, gate, c_shift, c_scale, c_gate = (m.squeeze(2) for m in mods)
        h = (self.norm1(x.float()) * (1 + scale) + shift).type_as(x)
        k, v = self.attn1.keys_values(h, rope)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], 1), torch.cat([past[1], v], 1))
        x = (x.float() + self.attn1(h, keys, values, rope, mask) * gate).type_as(x)
        h = self.norm2(x.float()).type_as(x)
        x = x + self.attn2(h, *text_kv, None, text_mask)
        h = (self.norm3(x.float()) * (1 + c_scale) + c_shift).type_as(x)
        return (x.float() + self.ffn(h).float() * c_gate).type_as(x), (k, v)


@dataclass
class KVCache:
    """A session's cached self-attention keys/values per layer, and the text keys/values."""

    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    meta: TokenMeta | None = None
    text_kv: list[tuple[Tensor, Tensor]] | None = None
    text_mask: Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return 0 if self.meta is None else len(self.meta)

    @property
    def num_chunks(self) -> int:
        return 0 if self.meta is None else int(self.meta.chunk.max().item())

    def nbytes(self) -> int:
        tensors = self.keys + self.values + [t for kv in self.text_kv or [] for t in kv]
        return sum(t.numel() * t.element_size() for t in tensors)

    @staticmethod
    def stack(caches: list[KVCache]) -> KVCache:
        """One batch of single-sample caches of any lengths; shorter ones padded with PAD tokens."""
        length = max(c.num_tokens for c in caches)
        layers = len(caches[0].keys)
        keys, values, metas = [], [], []
        for c in caches:
            assert c.meta is not None and not c.meta.batched
            pad = length - c.num_tokens
            keys.append([F.pad(k, (0, 0, 0, 0, 0, pad)) for k in c.keys])
            values.append([F.pad(v, (0, 0, 0, 0, 0, pad)) for v in c.values])
            metas.append(
                TokenMeta(
                    F.pad(c.meta.kind, (0, pad), value=int(Kind.PAD)),
                    F.pad(c.meta.chunk, (0, pad)),
                    F.pad(c.meta.pos, (0, 0, 0, pad)),
                )
            )
        return KVCache(
            keys=[torch.cat([k[i] for k in keys]) for i in range(layers)],
            values=[torch.cat([v[i] for v in values]) for i in range(layers)],
            meta=TokenMeta.stack(metas),
        )


class ConditionEmbedder(nn.Module):
    """Wan's WanTimeTextImageEmbedding without the image branch (same parameter names)."""

    def __init__(self, dim: int, freq_dim: int, text_dim: int) -> None:
        super().__init__()
        self.timesteps_proj = Timesteps(freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedder = TimestepEmbedding(in_channels=freq_dim, time_embed_dim=dim)
        self.act_fn = nn.SiLU()
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embedder = PixArtAlphaTextProjection(text_dim, dim, act_fn="gelu_tanh")


class MLP(nn.Sequential):
    def __init__(self, din: int, dim: int) -> None:
        super().__init__(nn.Linear(din, dim), nn.SiLU(), nn.Linear(dim, dim))


class WorldActionModel(nn.Module):
    def __init__(self, cfg: WAMConfig) -> None:
        super().__init__()
        self.config = cfg
        dim, patch = cfg.dim, cfg.patch_size
        channels = cfg.vae.z_dim
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_max_seq_len)
        self.patch_embedding = nn.Conv3d(channels, dim, kernel_size=patch, stride=patch)
        self.condition_embedder = ConditionEmbedder(dim, cfg.freq_dim, cfg.text.dim)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.norm_out = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, channels * math.prod(patch))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        # Actions and state: per-embodiment heads around a shared, padded width.
        self.action_pos = nn.Parameter(torch.randn(cfg.actions_per_chunk, dim) * 0.02)
        self.action_encoders = nn.ModuleDict()
        self.state_encoders = nn.ModuleDict()
        self.action_decoders = nn.ModuleDict()
        for head in cfg.embodiments:
            self._add_heads(head.name)

    def _add_heads(self, name: str) -> None:
        cfg, dim = self.config, self.config.dim
        self.action_encoders[name] = MLP(2 * cfg.max_action_dim, dim)  # values + padding mask
        self.state_encoders[name] = MLP(2 * cfg.max_state_dim, dim)
        self.action_decoders[name] = nn.Linear(dim, cfg.max_action_dim)

    def add_embodiment(self, name: str, state_dim: int, action_dim: int) -> None:
        """New heads for a new robot; the backbone is shared (fine-tune with LoRA)."""
        from wamfleet.model.config import EmbodimentHeadConfig

        head = EmbodimentHeadConfig(name=name, state_dim=state_dim, action_dim=action_dim)
        self.config = self.config.model_copy(update={"embodiments": [*self.config.embodiments, head]})
        WAMConfig.model_validate(self.config.model_dump())
        self._add_heads(name)
        device = self.action_pos.device
        for module in (self.action_encoders[name], self.state_encoders[name], self.action_decoders[name]):
            module.to(device)

    # Embedding -----------------------------------------------------------------------------

    def timestep_embedding(self, timesteps: Tensor) -> tuple[Tensor, Tensor]:
        """(B, L) timesteps in [0, 1000] -> temb (B, L, D) and its 6-way projection (B, L, 6, D)."""
        ce = self.condition_embedder
        b, n = timesteps.shape
        freq = ce.timesteps_proj(timesteps.flatten()).unflatten(0, (b, n))
        dtype = next(ce.time_embedder.parameters()).dtype
        temb = ce.time_embedder(freq.to(dtype))
        return temb, ce.time_proj(ce.act_fn(temb)).unflatten(2, (6, -1))

    def video_tokens(
        self, latents: Tensor, first_frame: int, kind: Kind, chunk: Tensor | int
    ) -> tuple[Tensor, TokenMeta]:
        """(B, C, F, H, W) latents -> (B, F*h*w, D) tokens and their metadata.

        `chunk`: one chunk index for every frame, or (F,) per latent frame.
        """
        x = self.patch_embedding(latents)
        _, _, f, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2).contiguous()
        return tokens, self._to_device(video_meta(f, h, w, first_frame, kind, chunk), tokens.device)

    @staticmethod
    def _to_device(meta: TokenMeta, device: torch.device) -> TokenMeta:
        return TokenMeta(meta.kind.to(device), meta.chunk.to(device), meta.pos.to(device))

    def _per_embodiment(self, heads: nn.ModuleDict, embodiments: list[str], x: Tensor) -> Tensor:
        """Applies each sample's own embodiment head."""
        if len(set(embodiments)) == 1:
            return heads[embodiments[0]](x)  # type: ignore[no-any-return]
        outs = [heads[name](x[i : i + 1]) for i, name in enumerate(embodiments)]
        return torch.cat(outs, dim=0)

    def action_tokens(
        self, actions: Tensor, action_mask: Tensor, embodiments: list[str], chunk: int, frame: int
    ) -> tuple[Tensor, TokenMeta]:
        """(B, A, max_action_dim) padded actions + (B, max_action_dim) mask -> (B, A, D)."""
        b, a, _ = actions.shape
        inp = torch.cat([actions * action_mask[:, None, :], action_mask[:, None, :].expand(b, a, -1)], dim=-1)
        tokens = self._per_embodiment(self.action_encoders, embodiments, inp) + self.action_pos[:a]
        return tokens, self._to_device(action_meta(a, chunk, frame), tokens.device)

    def state_tokens(
        self, state: Tensor, state_mask: Tensor, embodiments: list[str], chunk: int, frame: int
    ) -> tuple[Tensor, TokenMeta]:
        inp = torch.cat([state * state_mask, state_mask], dim=-1)[:, None, :]
        tokens = self._per_embodiment(self.state_encoders, embodiments, inp)
        return tokens, self._to_device(state_meta(chunk, frame), tokens.device)

    def text_context(
        self, text: Tensor, text_mask: Tensor | None
    ) -> tuple[list[tuple[Tensor, Tensor]], Tensor | None]:
        """Cross-attention keys/values per layer (computed once per instruction)."""
        context = self.condition_embedder.text_embedder(text)
        mask = None if text_mask is None else text_mask.bool()[:, None, None, :]
        return [cast(Block, block).attn2.keys_values(context, None) for block in self.blocks], mask

    # Running -------------------------------------------------------------------------------

    def run(
        self,
        tokens: Tensor,
        timesteps: Tensor,
        meta: TokenMeta,
        text_kv: list[tuple[Tensor, Tensor]],
        text_mask: Tensor | None,
        cache: KVCache | None = None,
        write_cache: bool = False,
    ) -> Tensor:
        """Runs the blocks on `tokens`, attending to `cache` (if any) plus themselves.

        With `write_cache`, these tokens' keys/values are appended to the cache (clean
        history). Returns the final hidden states after the output norm, (B, L, D).
        """
        temb, temb6 = self.timestep_embedding(timesteps)
        rope = self.rope(meta.pos)
        all_meta = meta if cache is None or cache.meta is None else TokenMeta.cat([cache.meta, meta])
        mask = attention_mask(meta, all_meta)
        x = tokens
        fresh: list[tuple[Tensor, Tensor]] = []
        for i, block in enumerate(self.blocks):
            past = None if cache is None or cache.meta is None else (cache.keys[i], cache.values[i])
            x, kv = block(x, temb6, rope, past, mask, text_kv[i], text_mask)
            fresh.append(kv)
        if write_cache:
            assert cache is not None
            if cache.meta is None:
                cache.keys = [k for k, _ in fresh]
                cache.values = [v for _, v in fresh]
            else:
                cache.keys = [torch.cat([old, k], 1) for old, (k, _) in zip(cache.keys, fresh, strict=True)]
                cache.values = [
                    torch.cat([old, v], 1) for old, (_, v) in zip(cache.values, fresh, strict=True)
                ]
            cache.meta = all_meta
        shift, scale = (self.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
        normed = cast(Tensor, self.norm_out(x.float()))
        return (normed * (1 + scale.squeeze(2)) + shift.squeeze(2)).type_as(x)

    def unpatchify(self, hidden: Tensor, frames: int) -> Tensor:
        """(B, frames*h*w, D) -> (B, C, frames, H, W) velocity for video latents."""
        b = hidden.shape[0]
        p_t, p_h, p_w = self.config.patch_size
        lh, lw = self.config.latent_hw
        h, w = lh // p_h, lw // p_w
        out = self.proj_out(hidden).reshape(b, frames // p_t, h, w, p_t, p_h, p_w, -1)
        return cast(Tensor, out.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3))

    def decode_actions(self, hidden: Tensor, embodiments: list[str]) -> Tensor:
        return self._per_embodiment(self.action_decoders, embodiments, hidden)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
