"""One transformer backbone: bidirectional for the masked diffusion denoiser, causal for AR.

Pre-norm blocks with RMSNorm, rotary position embeddings, SwiGLU MLPs and attention through
`mdm.networks.attention.attend` (one implementation per backend). The input vocabulary has one
extra row (the mask id, `V`), the output has `V` logits, so the mask token can never be predicted. Optional time conditioning is
adaLN-zero (DiT): each block's norms get a shift, a scale and a gate from an embedding of t,
initialised to zero so the network starts time-agnostic.

Every parameter carries logical axis names ('vocab', 'embed', 'heads', 'kv', 'mlp', ...); the
sharding rules map them to mesh axes, so this file never names a device axis.
Shapes: B batch, L length, D model width, N heads, H head dim, F MLP width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from mdm.networks.attention import MaskSpec, attend, attend_cached

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# What a rematerialised block keeps for the backward pass: nothing ('full': recompute the whole
# block), or the outputs of its 2-D matmuls ('save_dots': recompute only norms, RoPE, softmax
# and activations). 'none' keeps everything (no remat).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of the backbone. `dtype` is the compute dtype; params stay float32."""

    vocab_size: int
    num_layers: int = 4
    d_model: int = 256
    num_heads: int = 4
    num_kv_heads: int = 0  # key/value heads (grouped-query attention; 0: num_heads)
    mlp_dim: int = 704
    causal: bool = False
    tie_embeddings: bool = True
    time_conditioning: bool = False
    rope_base: float = 10_000.0
    dtype: str = "float32"
    remat: str = "none"  # a key of REMAT_POLICIES
    init_std: float = 0.02
    norm_eps: float = 1e-6  # RMSNorm's epsilon
    attention: str = "xla"  # an implementation of mdm.networks.attention (already resolved, never 'auto')
    attention_chunk: int = 0  # sequences per chunk of the 'chunked' attention

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]


def _param(init_fn, names: tuple[str, ...]):
    return nn.with_logical_partitioning(init_fn, names)


class RMSNorm(nn.Module):
    """RMSNorm with a learned per-channel scale; statistics in float32."""

    dtype: jnp.dtype = jnp.float32
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x_BxLxD: Array) -> Array:
        scale = self.param("scale", _param(nn.initializers.ones, ("norm",)), (x_BxLxD.shape[-1],))
        x = x_BxLxD.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return (x * scale[None, None, :]).astype(self.dtype)


class Linear(nn.Module):
    """x[..., *in_shape] @ kernel[*in_shape, *features], computed as one 2-D matmul.

    Flattening the leading and contracted axes first gives XLA plain GEMMs in the forward and
    backward pass (3-D dot_generals are markedly slower on CPU).
    """

    features: tuple[int, ...]
    names: tuple[str, ...]
    in_axes: int = 1
    dtype: jnp.dtype = jnp.float32
    init_std: float = 0.02

    @nn.compact
    def __call__(self, x: Array) -> Array:
        in_shape = x.shape[x.ndim - self.in_axes :]
        lead = x.shape[: x.ndim - self.in_axes]
        kernel = self.param("kernel", _param(nn.initializers.normal(self.init_std), self.names), (*in_shape, *self.features))
        k_2d = kernel.reshape(math.prod(in_shape), math.prod(self.features)).astype(self.dtype)
        y = x.reshape(-1, math.prod(in_shape)).astype(self.dtype) @ k_2d
        return y.reshape(*lead, *self.features)


class KVCache(NamedTuple):
    """Keys and values of every layer at C positions, float[num_layers, B, C, N, H] each (block
    decoding keeps the finished blocks here; only a prefix of the C slots is ever read)."""

    k: Array
    v: Array


class Positions(NamedTuple):
    """Where the input sits: rope positions int32[L], and for a block decoded against a
    `KVCache`, the cache and how many of its slots are valid (arrays only: it passes remat)."""

    index_L: Array | None = None  # None: 0..L-1
    cache: KVCache | None = None
    cache_len: Array | None = None  # int32 scalar


def rope(x_BxLxNxH: Array, base: float, positions_L: Array | None = None) -> Array:
    """Rotary position embedding (half-split convention) at `positions_L` (default 0..L-1)."""
    length, head_dim = x_BxLxNxH.shape[1], x_BxLxNxH.shape[3]
    half = head_dim // 2
    freq_h = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    pos_L = jnp.arange(length) if positions_L is None else positions_L
    angle_LxH = pos_L.astype(jnp.float32)[:, None] * freq_h[None, :]
    sin, cos = jnp.sin(angle_LxH)[None, :, None, :], jnp.cos(angle_LxH)[None, :, None, :]
    x = x_BxLxNxH.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxNxH.dtype)


def key_lengths(attention_mask_BxL: Array | None) -> Array | None:
    """int32[B] real tokens per row from a right-padding key mask bool[B, L] (None: no padding)."""
    return None if attention_mask_BxL is None else attention_mask_BxL.astype(jnp.int32).sum(-1)


class Attention(nn.Module):
    """Multi-head self-attention: a fused QKV projection, or with grouped-query attention
    (kv_heads < num_heads) a Q projection and a fused KV one, each K/V head shared by
    num_heads / kv_heads query heads. Its keys and values (after RoPE, one per query head) are
    sown into the 'kv' collection, which block decoding reads to fill its cache."""

    cfg: TransformerConfig
    mask: MaskSpec | None = None  # None: causal or bidirectional, as the config says
    layer: int = 0

    @nn.compact
    def __call__(
        self, x_BxLxD: Array, kv_lengths_B: Array | None, where: Positions = Positions(), visible_LxL: Array | None = None
    ) -> Array:
        cfg = self.cfg
        dt, std = cfg.compute_dtype, cfg.init_std
        if cfg.kv_heads == cfg.num_heads:
            qkv = Linear((3, cfg.num_heads, cfg.head_dim), ("embed", "qkv", "heads", "kv"), 1, dt, std, name="qkv")(x_BxLxD)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            q = Linear((cfg.num_heads, cfg.head_dim), ("embed", "heads", "kv"), 1, dt, std, name="q")(x_BxLxD)
            kv = Linear((2, cfg.kv_heads, cfg.head_dim), ("embed", "qkv", "kv_heads", "kv"), 1, dt, std, name="kv")(x_BxLxD)
            group = cfg.num_heads // cfg.kv_heads  # query heads per K/V head
            k, v = (jnp.repeat(kv[:, :, i], group, axis=2) for i in (0, 1))
        q, k = rope(q, cfg.rope_base, where.index_L), rope(k, cfg.rope_base, where.index_L)
        self.sow("kv", "keys_values", (k, v))
        if where.cache is not None:
            cache = where.cache
            out_BxLxNxH = attend_cached(
                q, k, v, cache.k[self.layer].astype(k.dtype), cache.v[self.layer].astype(v.dtype), where.cache_len
            )
        else:
            mask = self.mask or MaskSpec(causal=cfg.causal)
            out_BxLxNxH = attend(q, k, v, kv_lengths_B, mask, cfg.attention, cfg.attention_chunk, visible_LxL)
        out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
        return Linear((cfg.d_model,), ("heads", "kv", "embed"), 2, cfg.compute_dtype, out_std, name="out")(out_BxLxNxH)


class SwiGLU(nn.Module):
    """SwiGLU MLP with a fused gate/up projection."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x_BxLxD: Array) -> Array:
        cfg = self.cfg
        gate_up = Linear((2, cfg.mlp_dim), ("embed", "gate", "mlp"), 1, cfg.compute_dtype, cfg.init_std, name="gate_up")(x_BxLxD)
        h_BxLxF = nn.silu(gate_up[..., 0, :]) * gate_up[..., 1, :]
        out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
        return Linear((cfg.d_model,), ("mlp", "embed"), 1, cfg.compute_dtype, out_std, name="down")(h_BxLxF)


class Block(nn.Module):
    """Pre-norm residual block; with `cond_BxD` the norms are adaLN-zero modulated."""

    cfg: TransformerConfig
    mask: MaskSpec | None = None
    layer: int = 0

    @nn.compact
    def __call__(
        self,
        x_BxLxD: Array,
        cond_BxD: Array | None,
        kv_lengths_B: Array | None,
        where: Positions = Positions(),
        visible_LxL: Array | None = None,
    ) -> Array:
        cfg = self.cfg
        dt = cfg.compute_dtype
        if cond_BxD is None:
            h = RMSNorm(dt, cfg.norm_eps, name="attn_norm")(x_BxLxD)
            x_BxLxD = x_BxLxD + Attention(cfg, self.mask, self.layer, name="attn")(h, kv_lengths_B, where, visible_LxL)
            h = RMSNorm(dt, cfg.norm_eps, name="mlp_norm")(x_BxLxD)
            return x_BxLxD + SwiGLU(cfg, name="mlp")(h)
        mod = nn.Dense(
            6 * cfg.d_model,
            dtype=dt,
            kernel_init=_param(nn.initializers.zeros, ("embed", "adaln")),
            bias_init=_param(nn.initializers.zeros, ("adaln",)),
            name="adaln",
        )(cond_BxD)[:, None, :]
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
        h = RMSNorm(dt, cfg.norm_eps, name="attn_norm")(x_BxLxD) * (1 + scale1) + shift1
        x_BxLxD = x_BxLxD + gate1 * Attention(cfg, self.mask, self.layer, name="attn")(h, kv_lengths_B, where, visible_LxL)
        h = RMSNorm(dt, cfg.norm_eps, name="mlp_norm")(x_BxLxD) * (1 + scale2) + shift2
        return x_BxLxD + gate2 * SwiGLU(cfg, name="mlp")(h)


def timestep_embedding(t_B: Array, dim: int, max_period: float = 10_000.0) -> Array:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000), float32[B, dim]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = 1000.0 * t_B.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class HeadKernel(nn.Module):
    """The untied output projection's kernel float32[D, V] (params path head/kernel)."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self) -> Array:
        init = _param(nn.initializers.normal(self.cfg.init_std), ("embed", "vocab"))
        return self.param("kernel", init, (self.cfg.d_model, self.cfg.vocab_size))


def project(x_BxLxD: Array, head_DxV: Array, dtype) -> Array:
    """logits float32[B, L, V] = x @ head, operands in `dtype`, accumulated in float32."""
    batch, length, d = x_BxLxD.shape
    x = x_BxLxD.reshape(-1, d).astype(dtype)
    logits = jnp.dot(x, head_DxV.astype(dtype), preferred_element_type=jnp.float32)
    return logits.reshape(batch, length, -1)


class Transformer(nn.Module):
    """tokens int[B, L] (ids 0..V, V = mask) [, t float[B]] -> logits float32[B, L, V].

    `where` (a `Positions`) places the input elsewhere than 0..L-1 or decodes one block against a
    K/V cache; `mask` replaces the config's causal/bidirectional mask (block diffusion's layouts);
    `visible_LxL` (traced bool[L, L], query x key) further hides keys (attention-mask annealing).
    With `return_hidden=True` it returns the final (normed, modulated) hidden states
    [B, L, D] in the compute dtype instead, for losses that apply the head in chunks
    (`output_head` gives the head from the params).
    """

    cfg: TransformerConfig

    def output_head(self, params) -> Array:
        """The output projection float32[D, V] held in `params` (what `return_hidden` leaves out)."""
        cfg = self.cfg
        return nn.unbox(params["embedding"])[: cfg.vocab_size].T if cfg.tie_embeddings else nn.unbox(params["head"]["kernel"])

    @nn.compact
    def __call__(
        self,
        tokens_BxL: Array,
        t_B: Array | None = None,
        attention_mask_BxL: Array | None = None,
        return_hidden: bool = False,
        where: Positions = Positions(),
        mask: MaskSpec | None = None,
        visible_LxL: Array | None = None,
    ) -> Array:
        cfg = self.cfg
        dt = cfg.compute_dtype
        embed_VxD = self.param(
            "embedding",
            _param(nn.initializers.normal(cfg.init_std), ("vocab", "embed")),
            (cfg.vocab_size + 1, cfg.d_model),
        )
        x_BxLxD = jnp.take(embed_VxD, tokens_BxL, axis=0).astype(dt)
        x_BxLxD = nn.with_logical_constraint(x_BxLxD, ("batch", "length", "embed_act"))

        cond_BxD = None
        if cfg.time_conditioning:
            if t_B is None:
                raise ValueError("this network is time-conditioned: pass t")
            emb = timestep_embedding(t_B, 256).astype(dt)
            dense = lambda name: nn.Dense(  # noqa: E731
                cfg.d_model,
                dtype=dt,
                kernel_init=_param(nn.initializers.normal(cfg.init_std), ("time", "embed")),
                bias_init=_param(nn.initializers.zeros, ("embed",)),
                name=name,
            )
            cond_BxD = nn.silu(dense("time_mlp_out")(nn.silu(dense("time_mlp_in")(emb))))

        policy = REMAT_POLICIES[cfg.remat]
        block_cls = Block if policy is None else nn.remat(Block, policy=policy)
        kv_lengths_B = key_lengths(attention_mask_BxL)
        for i in range(cfg.num_layers):
            x_BxLxD = block_cls(cfg, mask, i, name=f"block_{i}")(x_BxLxD, cond_BxD, kv_lengths_B, where, visible_LxL)
            x_BxLxD = nn.with_logical_constraint(x_BxLxD, ("batch", "length", "embed_act"))

        x_BxLxD = RMSNorm(dt, cfg.norm_eps, name="final_norm")(x_BxLxD)
        if cond_BxD is not None:
            mod = nn.Dense(
                2 * cfg.d_model,
                dtype=dt,
                kernel_init=_param(nn.initializers.zeros, ("embed", "adaln")),
                bias_init=_param(nn.initializers.zeros, ("adaln",)),
                name="final_adaln",
            )(cond_BxD)[:, None, :]
            shift, scale = jnp.split(mod, 2, axis=-1)
            x_BxLxD = x_BxLxD * (1 + scale) + shift
        if return_hidden:
            return x_BxLxD
        head_DxV = embed_VxD[: cfg.vocab_size].T if cfg.tie_embeddings else HeadKernel(cfg, name="head")()
        logits = nn.with_logical_constraint(project(x_BxLxD, head_DxV, dt), ("batch", "length", "vocab"))
        return logits
