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

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from functools import partial
from typing import Any, cast

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
from torch.utils.checkpoint import checkpoint

from wamfleet.model.config import WAMConfig


class Kind(IntEnum):
    COND = 0  # the conditioning frame (clean)
    CLEAN = 1  # a clean chunk: history for later chunks
    NOISY = 2  # a noisy chunk's video or action tokens: what is denoised
    STATE = 3  # a chunk's robot state (clean)


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
    if isinstance(chunk, int):  # the common case, asked for at every denoising step: built once
        return _video_meta(frames, h, w, first_frame, int(kind), chunk)
    return _build_video_meta(frames, h, w, first_frame, kind, chunk)


@functools.lru_cache(maxsize=256)
def _video_meta(frames: int, h: int, w: int, first_frame: int, kind: int, chunk: int) -> TokenMeta:
    return _build_video_meta(frames, h, w, first_frame, Kind(kind), chunk)


def _build_video_meta(
    frames: int, h: int, w: int, first_frame: int, kind: Kind, chunk: Tensor | int
) -> TokenMeta:
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


Index = slice | Tensor


def _as_index(positions: Tensor) -> Index:
    """Sorted positions -> a slice when contiguous (a view, no copy), else an index tensor."""
    first, last = int(positions[0]), int(positions[-1])
    return slice(first, last + 1) if last - first + 1 == positions.numel() else positions


@dataclass
class AttentionBlocks:
    """The block-causal mask as groups of queries that share one set of keys.

    Every query of a group (same kind and chunk) sees exactly the same keys, so each group is
    one SDPA call without a mask: eligible for flash / memory-efficient kernels, and no
    (Lq, Lk) mask or score matrix is ever materialised. Same result as the dense mask.
    """

    groups: list[tuple[Index, Index]]

    @staticmethod
    def plan(query: TokenMeta, key: TokenMeta) -> AttentionBlocks:
        assert not query.batched and not key.batched, "blocks are planned per sample"
        ids = query.kind * (int(query.chunk.max()) + 2) + query.chunk
        groups = []
        for value in torch.unique(ids):
            rows = torch.nonzero(ids == value).flatten()
            rep = rows[:1]
            row = attention_mask(TokenMeta(query.kind[rep], query.chunk[rep], query.pos[rep]), key)[0]
            keys = torch.nonzero(row).flatten()
            if keys.numel() == 0:
                raise ValueError("attention: a query group sees no key")
            groups.append((_as_index(rows), _as_index(keys)))
        return AttentionBlocks(groups)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q: (B, Lq, H, d); k, v: (B, Lk, H, d) -> (B, Lq, H, d)."""
        if len(self.groups) == 1 and self.groups[0][0] == slice(0, q.shape[1]):
            return _sdpa(q, k[:, self.groups[0][1]], v[:, self.groups[0][1]], None)
        out = torch.empty_like(q)
        for rows, keys in self.groups:
            if isinstance(keys, slice) and keys.stop - keys.start == 1:  # one key: softmax is 1
                out[:, rows] = v[:, keys]
            else:
                out[:, rows] = _sdpa(q[:, rows], k[:, keys], v[:, keys], None)
        return out


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """(B, L, H, d) layout in and out; mask (Lq, Lk) or (B, 1, Lq, Lk) bool."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2)


def sdpa_backend(device: torch.device | str, dtype: torch.dtype = torch.bfloat16, head_dim: int = 128) -> str:
    """The SDPA kernel PyTorch picks for a mask-free call like the block kernel's (for the figures)."""
    device = torch.device(device)
    if device.type != "cuda":
        return "CPU (flash-attention CPU kernel or math)"
    from torch.nn.attention import SDPBackend

    q = torch.randn(1, 8, 256, head_dim, device=device, dtype=dtype)
    try:
        return SDPBackend(torch._fused_sdp_choice(q, q, q)).name
    except (AttributeError, RuntimeError, ValueError):
        return "unknown"


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
        self._last: tuple[Tensor, tuple[Tensor, Tensor]] | None = None

    def forward(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """(L, 3) or (B, L, 3) positions -> cos, sin shaped (1 or B, L, 1, head_dim).

        The last lookup is kept: a chunk's denoising steps ask for the same positions each time.
        """
        last = self._last
        if last is not None and last[0] is pos:
            return last[1]
        out = self._lookup(pos)
        self._last = (pos, out)
        return out

    def _lookup(self, pos: Tensor) -> tuple[Tensor, Tensor]:
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
    """Wan attention parameters (to_q/k/v, to_out.0, norm_q/k across heads; add_k/v_proj and
    norm_added_k for I2V image tokens); who attends to what is decided by the caller."""

    def __init__(self, dim: int, heads: int, eps: float, added_kv_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)
        if added_kv_dim is not None:
            self.add_k_proj = nn.Linear(added_kv_dim, dim)
            self.add_v_proj = nn.Linear(added_kv_dim, dim)
            self.norm_added_k = nn.RMSNorm(dim, eps=eps)

    def query(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        q = self.norm_q(self.to_q(x)).unflatten(2, (self.heads, -1))
        return apply_rotary(q, *rope) if rope is not None else q

    def keys_values(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        k = self.norm_k(self.to_k(x)).unflatten(2, (self.heads, -1))
        v = self.to_v(x).unflatten(2, (self.heads, -1))
        if rope is not None:
            k = apply_rotary(k, *rope)
        return k, v

    def image_keys_values(self, image: Tensor) -> tuple[Tensor, Tensor]:
        k = self.norm_added_k(self.add_k_proj(image)).unflatten(2, (self.heads, -1))
        return k, self.add_v_proj(image).unflatten(2, (self.heads, -1))

    def out(self, heads_out: Tensor, like: Tensor) -> Tensor:
        """(B, L, H, d) attention output -> (B, L, D)."""
        return cast(Tensor, self.to_out[1](self.to_out[0](heads_out.flatten(2, 3).type_as(like))))


@dataclass
class CrossContext:
    """What the cross-attention sees, per layer: the instruction's keys/values (and, for Wan
    I2V, the CLIP image tokens'), computed once per instruction and reused for every chunk."""

    text: list[tuple[Tensor, Tensor]]
    text_mask: Tensor | None  # (B, 1, 1, T) bool, or None to attend to every token (Wan)
    image: list[tuple[Tensor, Tensor]] | None = None

    def attend(self, layer: int, q: Tensor) -> Tensor:
        out = _sdpa(q, *self.text[layer], self.text_mask)
        if self.image is not None:
            out = out + _sdpa(q, *self.image[layer], None)
        return out

    def nbytes(self) -> int:
        tensors = [t for kv in self.text + (self.image or []) for t in kv]
        return sum(t.numel() * t.element_size() for t in tensors)

    @staticmethod
    def per_sample(contexts: list[CrossContext]) -> Callable[[int, Tensor], Tensor]:
        """Cross-attention for a batch whose samples keep their own contexts (no stacking copy)."""

        def attend(layer: int, q: Tensor) -> Tensor:
            return torch.cat([c.attend(layer, q[i : i + 1]) for i, c in enumerate(contexts)])

        return attend


class Block(nn.Module):
    """WanTransformerBlock's computation, with per-token timestep modulation."""

    def __init__(self, cfg: WAMConfig) -> None:
        super().__init__()
        dim = cfg.dim
        image = cfg.image_conditioning
        self.norm1 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.attn1 = Attention(dim, cfg.num_heads, cfg.eps)
        self.attn2 = Attention(dim, cfg.num_heads, cfg.eps, added_kv_dim=dim if image is not None else None)
        self.norm2 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=True)
        self.ffn = FeedForward(dim, inner_dim=cfg.ffn_dim, activation_fn="gelu-approximate")
        self.norm3 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: Tensor,
        temb: Tensor,
        rope: tuple[Tensor, Tensor],
        attend_self: Callable[[Tensor, Tensor, Tensor], Tensor],
        attend_cross: Callable[[Tensor], Tensor],
        segments: BlockSegments | None = None,
    ) -> Tensor:
        """x: (B, L, D) tokens; temb: (B, L or 1, 6, D); `attend_self(q, k, v)` applies the block-causal
        pattern (and the KV cache), `attend_cross(q)` the instruction.

        The block is three per-token segments around the two attentions (see BlockSegments);
        `segments` may be compiled versions of them, the attentions always run as they are.
        """
        seg = segments or EAGER_SEGMENTS
        q, k, v = seg.pre_attention(self, x, temb, *rope)
        x, q_cross = seg.after_self_attention(self, x, attend_self(q, k, v), temb)
        return seg.after_cross_attention(self, x, attend_cross(q_cross), temb)


def _modulation(block: Block, temb: Tensor, index: int) -> Tensor:
    """One of the block's six float32 modulations, (B, L or 1, D): its table row plus the timestep's."""
    return block.scale_shift_table[:, index] + temb[:, :, index].float()


def block_pre_attention(
    block: Block, x: Tensor, temb: Tensor, cos: Tensor, sin: Tensor
) -> tuple[Tensor, ...]:
    """Modulated norm, then the self-attention's rotated q, k and v (B, L, heads, head_dim)."""
    h = (block.norm1(x.float()) * (1 + _modulation(block, temb, 1)) + _modulation(block, temb, 0)).type_as(x)
    q = block.attn1.query(h, (cos, sin))
    k, v = block.attn1.keys_values(h, (cos, sin))
    return q, k, v


def block_after_self_attention(
    block: Block, x: Tensor, attended: Tensor, temb: Tensor
) -> tuple[Tensor, Tensor]:
    """The gated self-attention output added to x; then the cross-attention's query."""
    x = (x.float() + block.attn1.out(attended, x) * _modulation(block, temb, 2)).type_as(x)
    h = block.norm2(x.float()).type_as(x)
    return x, block.attn2.query(h, None)


def block_after_cross_attention(block: Block, x: Tensor, attended: Tensor, temb: Tensor) -> Tensor:
    """The cross-attention output added to x, then the modulated, gated feed-forward."""
    x = x + block.attn2.out(attended, x)
    h = (block.norm3(x.float()) * (1 + _modulation(block, temb, 4)) + _modulation(block, temb, 3)).type_as(x)
    ffn: Tensor = block.ffn(h)
    return (x.float() + ffn.float() * _modulation(block, temb, 5)).type_as(x)


@dataclass(frozen=True)
class BlockSegments:
    """A block's per-token computation, in the three pieces between its two attentions.

    Every piece maps (B, L, ...) tokens to (B, L, ...) tokens, the same shapes whatever the
    session's history: during sampling L is one chunk's query, fixed by the config. The
    self-attention (whose keys grow with the KV cache) and the cross-attention (each session's
    own instruction) run between them, uncompiled. So these pieces are what `torch.compile`
    takes (`compile_segments`), and on CUDA what CUDA graphs can capture, shared by every block
    (a block's weights are inputs, not constants).
    """

    pre_attention: Callable[[Block, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, ...]]
    after_self_attention: Callable[[Block, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
    after_cross_attention: Callable[[Block, Tensor, Tensor, Tensor], Tensor]


EAGER_SEGMENTS = BlockSegments(block_pre_attention, block_after_self_attention, block_after_cross_attention)


@dataclass(frozen=True)
class CompileSettings:
    """How `compile_segments` calls `torch.compile` (its own arguments, nothing else).

    `mode` (inductor only): "reduce-overhead" also replays each segment as a CUDA graph (the
    right choice on a GPU: the segments' shapes are fixed, so a graph recorded once per batch
    size is replayed at every denoising step of every chunk); "default" fuses kernels without
    graphs (the CPU's choice); "max-autotune-no-cudagraphs" autotunes the matmuls instead.
    `backend`: "inductor" generates kernels; "aot_eager" and "eager" (or a callable backend)
    run the captured graph with PyTorch's own kernels: how the tests check the capture on CPU
    in seconds.
    `dynamic`: None is PyTorch's automatic dynamic shapes: the first batch size compiles
    static, a second one recompiles with the batch dimension symbolic, and no later batch size
    compiles again (batch 1 keeps its own static graph). False compiles once per batch size.
    """

    backend: str | Callable[..., Any] = "inductor"
    mode: str = "default"
    dynamic: bool | None = None

    @property
    def cuda_graphs(self) -> bool:
        return self.backend == "inductor" and self.mode in ("reduce-overhead", "max-autotune")

    @classmethod
    def for_device(cls, device: torch.device | str) -> CompileSettings:
        """The recommended settings: CUDA graphs on a GPU, fused kernels on a CPU."""
        return cls(mode="reduce-overhead" if torch.device(device).type == "cuda" else "default")


def compile_segments(settings: CompileSettings) -> BlockSegments:
    """The block segments through `torch.compile(fullgraph=True)`: one capture each, shared by
    every block of every model (weights are graph inputs), recompiled only for a new batch size
    (see CompileSettings.dynamic), never for a session's cache length, which they do not see."""
    mode = settings.mode if settings.backend == "inductor" else None  # other backends take none

    def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
        return torch.compile(
            fn, backend=settings.backend, mode=mode, dynamic=settings.dynamic, fullgraph=True
        )

    return BlockSegments(
        compiled(block_pre_attention),
        compiled(block_after_self_attention),
        compiled(block_after_cross_attention),
    )


class KVCache:
    """One session's self-attention keys/values per layer, in buffers allocated once.

    New tokens' keys/values are written in place after the cached ones, so attending to
    [cache | new] is a view of the buffer: no call ever copies the history, and a batch of
    sessions attends to each session's own buffer (see WorldActionModel.run).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self.length = 0
        self.meta: TokenMeta | None = None
        # The last attention pattern planned against this cache: a chunk's denoising steps reuse it.
        self._pattern: tuple[TokenMeta, int, Callable[..., Tensor]] | None = None

    def pattern(
        self, query: TokenMeta, plan: Callable[[TokenMeta, TokenMeta], Callable[..., Tensor]]
    ) -> Callable[..., Tensor]:
        """The attention of `query` against [cache | query], planned once per query and length
        (the pattern depends on the tokens' kinds and chunks only)."""
        memo = self._pattern
        if (
            memo is not None
            and memo[1] == self.length
            and torch.equal(memo[0].kind, query.kind)
            and torch.equal(memo[0].chunk, query.chunk)
        ):
            return memo[2]
        keys = query if self.meta is None else TokenMeta.cat([self.meta, query])
        pattern = plan(query, keys)
        self._pattern = (query, self.length, pattern)
        return pattern

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def _ensure(self, layers: int, like: Tensor) -> None:
        if not self.keys:
            shape = (like.shape[0], self.capacity, *like.shape[2:])
            self.keys = [like.new_zeros(shape) for _ in range(layers)]
            self.values = [like.new_zeros(shape) for _ in range(layers)]

    def extend(self, layer: int, layers: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Writes k, v (B, L, H, d) after the cached tokens; returns views of [cache | k, v]."""
        self._ensure(layers, k)
        end = self.length + k.shape[1]
        if end > self.capacity:
            raise RuntimeError(f"KV cache: {end} tokens exceed its capacity of {self.capacity}")
        self.keys[layer][:, self.length : end] = k
        self.values[layer][:, self.length : end] = v
        return self.keys[layer][:, :end], self.values[layer][:, :end]

    def commit(self, meta: TokenMeta) -> None:
        """Keeps the tokens last written by `extend` as history."""
        self.meta = meta if self.meta is None else TokenMeta.cat([self.meta, meta])
        self.length = len(self.meta)

    def truncate(self, tokens: int) -> None:
        """Forgets everything after the first `tokens` (the buffers stay allocated)."""
        if self.meta is not None:
            self.length = min(tokens, self.length)
            self.meta = (
                None
                if self.length == 0
                else TokenMeta(
                    self.meta.kind[: self.length],
                    self.meta.chunk[: self.length],
                    self.meta.pos[: self.length],
                )
            )


class ImageEmbedding(nn.Module):
    """Wan's WanImageEmbedding (same parameter names): CLIP image tokens -> the model width."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.norm1 = FP32LayerNorm(in_features)
        self.ff = FeedForward(in_features, out_features, mult=1, activation_fn="gelu")
        self.norm2 = FP32LayerNorm(out_features)

    def forward(self, x: Tensor) -> Tensor:
        return cast(Tensor, self.norm2(self.ff(self.norm1(x))))


class ConditionEmbedder(nn.Module):
    """Wan's WanTimeTextImageEmbedding (same parameter names); the image branch only for I2V."""

    def __init__(self, dim: int, freq_dim: int, text_dim: int, image_dim: int | None) -> None:
        super().__init__()
        self.timesteps_proj = Timesteps(freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedder = TimestepEmbedding(in_channels=freq_dim, time_embed_dim=dim)
        self.act_fn = nn.SiLU()
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embedder = PixArtAlphaTextProjection(text_dim, dim, act_fn="gelu_tanh")
        if image_dim is not None:
            self.image_embedder = ImageEmbedding(image_dim, dim)


class MLP(nn.Sequential):
    def __init__(self, din: int, dim: int) -> None:
        super().__init__(nn.Linear(din, dim), nn.SiLU(), nn.Linear(dim, dim))


AttendSelf = Callable[[int, Tensor, Tensor, Tensor], Tensor]


class WorldActionModel(nn.Module):
    def __init__(self, cfg: WAMConfig) -> None:
        super().__init__()
        self.config = cfg
        dim, patch = cfg.dim, cfg.patch_size
        image = cfg.image_conditioning
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_max_seq_len)
        self.patch_embedding = nn.Conv3d(cfg.in_channels, dim, kernel_size=patch, stride=patch)
        self.condition_embedder = ConditionEmbedder(
            dim, cfg.freq_dim, cfg.text.dim, image.image_dim if image is not None else None
        )
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.norm_out = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, cfg.vae.z_dim * math.prod(patch))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        # Actions and state: per-embodiment heads around a shared, padded width.
        self.action_pos = nn.Parameter(torch.randn(cfg.actions_per_chunk, dim) * 0.02)
        self.action_encoders = nn.ModuleDict()
        self.state_encoders = nn.ModuleDict()
        self.action_decoders = nn.ModuleDict()
        for head in cfg.embodiments:
            self._add_heads(head.name)
        self.gradient_checkpointing = False  # recompute each block in backward (trainer option)

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
        for module in (self.action_encoders[name], self.state_encoders[name], self.action_decoders[name]):
            module.to(device=self.action_pos.device, dtype=self.action_pos.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    # Embedding -----------------------------------------------------------------------------

    def timestep_embedding(self, timesteps: Tensor) -> tuple[Tensor, Tensor]:
        """(B, L) timesteps in [0, 1000] -> temb (B, L, D) and its 6-way projection (B, L, 6, D)."""
        ce = self.condition_embedder
        # A sequence holds a handful of distinct noise levels: embed each once, then gather.
        values, inverse = torch.unique(timesteps, return_inverse=True)
        freq = ce.timesteps_proj(values)
        dtype = next(ce.time_embedder.parameters()).dtype
        temb = ce.time_embedder(freq.to(dtype))
        proj = ce.time_proj(ce.act_fn(temb)).unflatten(1, (6, -1))
        return temb[inverse], proj[inverse]

    def video_tokens(
        self,
        latents: Tensor,
        first_frame: int,
        kind: Kind,
        chunk: Tensor | int,
        conditioning: Tensor | None = None,
    ) -> tuple[Tensor, TokenMeta]:
        """(B, C, F, h, w) latents -> (B, F*h*w, D) tokens and their metadata.

        `chunk`: one chunk index for every frame, or (F,) per latent frame. `conditioning`: for
        Wan I2V, the (B, mask + C, F, h, w) first-frame channels of these same frames.
        """
        tokens = self.patchify(latents, conditioning)
        f = latents.shape[2] // self.config.patch_size[0]
        h, w = (n // p for n, p in zip(latents.shape[3:], self.config.patch_size[1:], strict=True))
        return tokens, self._to_device(video_meta(f, h, w, first_frame, kind, chunk), tokens.device)

    def patchify(self, latents: Tensor, conditioning: Tensor | None = None) -> Tensor:
        """(B, C, F, h, w) latents -> (B, F*h*w, D) tokens, without their metadata (which
        `video_tokens` adds): the sampler's query, whose positions come from `query_meta`."""
        x = latents.to(self.dtype)
        if self.config.image_conditioning is not None:
            if conditioning is None or conditioning.shape[2] != latents.shape[2]:
                raise ValueError(
                    "conditioning: I2V video tokens need the first-frame channels of their frames"
                )
            x = torch.cat([x, conditioning.to(self.dtype)], dim=1)
        return self.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()  # type: ignore[no-any-return]

    @staticmethod
    def _to_device(meta: TokenMeta, device: torch.device) -> TokenMeta:
        return TokenMeta(meta.kind.to(device), meta.chunk.to(device), meta.pos.to(device))

    def _per_embodiment(self, heads: nn.ModuleDict, embodiments: list[str], x: Tensor) -> Tensor:
        """Applies each sample's own embodiment head."""
        x = x.to(self.dtype)
        if len(set(embodiments)) == 1:
            return heads[embodiments[0]](x)  # type: ignore[no-any-return]
        outs = [heads[name](x[i : i + 1]) for i, name in enumerate(embodiments)]
        return torch.cat(outs, dim=0)

    def embed_actions(self, actions: Tensor, action_mask: Tensor, embodiments: list[str]) -> Tensor:
        """(B, A, max_action_dim) padded actions + (B, max_action_dim) mask -> (B, A, D)."""
        b, a, _ = actions.shape
        mask = action_mask.to(actions.dtype)
        inp = torch.cat([actions * mask[:, None, :], mask[:, None, :].expand(b, a, -1)], dim=-1)
        return self._per_embodiment(self.action_encoders, embodiments, inp) + self.action_pos[:a]

    def state_tokens(
        self, state: Tensor, state_mask: Tensor, embodiments: list[str], chunk: int, frame: int
    ) -> tuple[Tensor, TokenMeta]:
        mask = state_mask.to(state.dtype)
        inp = torch.cat([state * mask, mask], dim=-1)[:, None, :]
        tokens = self._per_embodiment(self.state_encoders, embodiments, inp)
        return tokens, self._to_device(state_meta(chunk, frame), tokens.device)

    def cross_context(
        self, text: Tensor, text_mask: Tensor | None, image: Tensor | None = None
    ) -> CrossContext:
        """Cross-attention keys/values per layer, computed once per instruction (and first frame).

        With `text.mask_padding` off (Wan), every one of the max_tokens (zeroed) positions is
        attended to, as Wan was trained; `image`: (B, 257, image_dim) CLIP tokens for I2V.
        """
        ce = self.condition_embedder
        context = ce.text_embedder(text.to(self.dtype))
        use_mask = text_mask is not None and self.config.text.mask_padding
        mask = text_mask.bool()[:, None, None, :] if use_mask and text_mask is not None else None
        blocks = [cast(Block, b) for b in self.blocks]
        image_kv = None
        if self.config.image_conditioning is not None:
            if image is None:
                raise ValueError("image: an I2V model needs the first frame's CLIP image tokens")
            tokens = ce.image_embedder(image.to(self.dtype)).to(self.dtype)
            image_kv = [b.attn2.image_keys_values(tokens) for b in blocks]
        return CrossContext([b.attn2.keys_values(context, None) for b in blocks], mask, image_kv)

    # Running -------------------------------------------------------------------------------

    def _attention(self, query: TokenMeta, key: TokenMeta, device: torch.device) -> Callable[..., Tensor]:
        """q, k, v -> out under the block-causal mask, with the configured kernel."""
        kernel = self.config.attention
        if kernel == "dense" or query.batched or key.batched:
            mask = attention_mask(query, key)
            mask = mask[:, None] if mask.ndim == 3 else mask
            return lambda q, k, v: _sdpa(q, k, v, mask)
        return AttentionBlocks.plan(query, key).attend

    def run(
        self,
        tokens: Tensor,
        timesteps: Tensor,
        meta: TokenMeta,
        cross: CrossContext | list[CrossContext],
        cache: KVCache | list[KVCache] | None = None,
        write_cache: bool = False,
        segments: BlockSegments | None = None,
    ) -> Tensor:
        """Runs the blocks on `tokens`, attending to `cache` (if any) plus themselves.

        `cache`/`cross` as lists: one single-sample session per batch row, each attending to
        its own cache and instruction (no stacking copies). With `write_cache`, these tokens'
        keys/values stay in the cache as history. `segments`: the blocks' per-token pieces to
        use (compiled ones from `compile_segments`; default eager). Returns the hidden states
        after the output norm, (B, L, D).
        """
        if timesteps.ndim == 2 and timesteps.shape[1] > 1 and timesteps.stride(1) == 0:
            # One timestep per sample, expanded (the sampler's query, see query_timesteps): the
            # modulation broadcasts over the tokens instead of being gathered per token.
            timesteps = timesteps[:, :1]
        temb, temb6 = self.timestep_embedding(timesteps)
        rope = self.rope(meta.pos)
        layers = len(self.blocks)
        device = tokens.device
        attend_cross = CrossContext.per_sample(cross) if isinstance(cross, list) else cross.attend
        attend_self: AttendSelf
        metas: list[TokenMeta] = []
        if isinstance(cache, list):
            metas = [TokenMeta(meta.kind[i], meta.chunk[i], meta.pos[i]) for i in range(len(cache))]
            if not meta.batched:
                metas = [meta] * len(cache)
            plan = partial(self._attention, device=device)
            patterns = [c.pattern(m, plan) for m, c in zip(metas, cache, strict=True)]
            caches = cache

            def attend_self(layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
                outs = []
                for i, (c, pattern) in enumerate(zip(caches, patterns, strict=True)):
                    keys, values = c.extend(layer, layers, k[i : i + 1], v[i : i + 1])
                    outs.append(pattern(q[i : i + 1], keys, values))
                return torch.cat(outs)

        elif cache is not None:
            one = cache
            pattern = one.pattern(meta, partial(self._attention, device=device))

            def attend_self(layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
                return pattern(q, *one.extend(layer, layers, k, v))

        else:
            plain = self._attention(meta, meta, device)

            def attend_self(layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
                return plain(q, k, v)

        x = tokens
        for i, block in enumerate(self.blocks):
            args = (x, temb6, rope, partial(attend_self, i), partial(attend_cross, i))
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = cast(Tensor, checkpoint(block, *args, use_reentrant=False))
            else:
                x = block(*args, segments=segments)
        if write_cache:
            if isinstance(cache, list):
                for c, m in zip(cache, metas, strict=True):
                    c.commit(m)
            elif cache is not None:
                cache.commit(meta)
        shift, scale = (self.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
        normed = cast(Tensor, self.norm_out(x.float()))
        return (normed * (1 + scale.squeeze(2)) + shift.squeeze(2)).type_as(x)

    def unpatchify(self, hidden: Tensor, frames: int) -> Tensor:
        """(B, frames*h*w, D) -> (B, C, frames, H, W) velocity for video latents (float32)."""
        b = hidden.shape[0]
        p_t, p_h, p_w = self.config.patch_size
        lh, lw = self.config.latent_hw
        h, w = lh // p_h, lw // p_w
        out = self.proj_out(hidden).float().reshape(b, frames // p_t, h, w, p_t, p_h, p_w, -1)
        return cast(Tensor, out.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3))

    def decode_actions(self, hidden: Tensor, embodiments: list[str]) -> Tensor:
        """(B, A, D) -> (B, A, max_action_dim) action velocity (float32)."""
        return self._per_embodiment(self.action_decoders, embodiments, hidden).float()

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
