"""One transformer backbone: bidirectional for the masked diffusion denoiser, causal for AR.

Pre-norm blocks with RMSNorm, rotary position embeddings, SwiGLU MLPs and attention through
`jax.nn.dot_product_attention`. The input vocabulary has one extra row (the mask id, `V`), the
output has `V` logits, so the mask token can never be predicted. Optional time conditioning is
adaLN-zero (DiT): each block's norms get a shift, a scale and a gate from an embedding of t,
initialised to zero so the network starts time-agnostic.

Every parameter carries logical axis names ('vocab', 'embed', 'heads', 'kv', 'mlp', ...); the
sharding rules map them to mesh axes, so this file never names a device axis.
Shapes: B batch, L length, D model width, N heads, H head dim, F MLP width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

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
    mlp_dim: int = 704
    causal: bool = False
    tie_embeddings: bool = True
    time_conditioning: bool = False
    rope_base: float = 10_000.0
    dtype: str = "float32"
    remat: str = "none"  # a key of REMAT_POLICIES
    init_std: float = 0.02
    attention_chunk: int = 0  # >0: attend over chunks of this many sequences (see `attend`)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]


def _param(init_fn, names: tuple[str, ...]):
    return nn.with_logical_partitioning(init_fn, names)


class RMSNorm(nn.Module):
    """RMSNorm with a learned per-channel scale; statistics in float32."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD: Array) -> Array:
        scale = self.param("scale", _param(nn.initializers.ones, ("norm",)), (x_BxLxD.shape[-1],))
        x = x_BxLxD.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)
        return (x * scale).astype(self.dtype)


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


def rope(x_BxLxNxH: Array, base: float) -> Array:
    """Rotary position embedding (half-split convention) at positions 0..L-1."""
    length, head_dim = x_BxLxNxH.shape[1], x_BxLxNxH.shape[3]
    half = head_dim // 2
    freq_h = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle_LxH = jnp.arange(length, dtype=jnp.float32)[:, None] * freq_h[None, :]
    sin, cos = jnp.sin(angle_LxH)[None, :, None, :], jnp.cos(angle_LxH)[None, :, None, :]
    x = x_BxLxNxH.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxNxH.dtype)


def _batch_shards() -> int:
    """Ways the batch is split over devices under the ambient mesh and logical rules (1 if none)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return 1
    axes = nn.logical_to_mesh_axes(("batch",))[0]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(mesh.shape[a] for a in axes if a in mesh.shape)


def attend(q: Array, k: Array, v: Array, key_mask_BxL: Array | None, causal: bool, chunk: int) -> Array:
    """`jax.nn.dot_product_attention` over [B, L, N, H] inputs, optionally in batch chunks.

    With `chunk` > 0 each device processes its rows `chunk` sequences at a time (the largest
    divisor of its local batch not above it) under `jax.checkpoint`, so each chunk's L x L
    scores stay in cache and are recomputed in the backward pass. On CPUs this is faster; on
    accelerators leave it at 0. Chunk i holds rows i, i + m, i + 2m, ... (m chunks), so every
    chunk spans all batch shards equally and the loop over chunks needs no communication.
    """

    def one(args):
        q_, k_, v_, m_ = args
        mask = None if m_ is None else m_[:, None, None, :]
        return jax.nn.dot_product_attention(q_, k_, v_, mask=mask, is_causal=causal)

    batch = q.shape[0]
    shards = _batch_shards()
    local = batch // shards if batch % shards == 0 else batch
    if chunk <= 0 or chunk >= local:
        return one((q, k, v, key_mask_BxL))
    size = max(d for d in range(1, chunk + 1) if local % d == 0)
    m = local // size  # chunks; divides the local batch, so row i + j m lives on shard j m // local
    split = lambda x: None if x is None else x.reshape(batch // m, m, *x.shape[1:]).swapaxes(0, 1)  # noqa: E731
    out = jax.lax.map(jax.checkpoint(one), tuple(split(x) for x in (q, k, v, key_mask_BxL)))
    return out.swapaxes(0, 1).reshape(q.shape)


class Attention(nn.Module):
    """Multi-head self-attention with a fused QKV projection."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x_BxLxD: Array, attention_mask_BxL: Array | None) -> Array:
        cfg = self.cfg
        qkv = Linear(
            (3, cfg.num_heads, cfg.head_dim), ("embed", "qkv", "heads", "kv"), 1, cfg.compute_dtype, cfg.init_std, name="qkv"
        )(x_BxLxD)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q, k = rope(q, cfg.rope_base), rope(k, cfg.rope_base)
        out_BxLxNxH = attend(q, k, v, attention_mask_BxL, cfg.causal, cfg.attention_chunk)
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

    @nn.compact
    def __call__(self, x_BxLxD: Array, cond_BxD: Array | None, attention_mask_BxL: Array | None) -> Array:
        cfg = self.cfg
        dt = cfg.compute_dtype
        if cond_BxD is None:
            h = RMSNorm(dt, name="attn_norm")(x_BxLxD)
            x_BxLxD = x_BxLxD + Attention(cfg, name="attn")(h, attention_mask_BxL)
            h = RMSNorm(dt, name="mlp_norm")(x_BxLxD)
            return x_BxLxD + SwiGLU(cfg, name="mlp")(h)
        mod = nn.Dense(
            6 * cfg.d_model,
            dtype=dt,
            kernel_init=_param(nn.initializers.zeros, ("embed", "adaln")),
            bias_init=_param(nn.initializers.zeros, ("adaln",)),
            name="adaln",
        )(cond_BxD)[:, None, :]
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
        h = RMSNorm(dt, name="attn_norm")(x_BxLxD) * (1 + scale1) + shift1
        x_BxLxD = x_BxLxD + gate1 * Attention(cfg, name="attn")(h, attention_mask_BxL)
        h = RMSNorm(dt, name="mlp_norm")(x_BxLxD) * (1 + scale2) + shift2
        return x_BxLxD + gate2 * SwiGLU(cfg, name="mlp")(h)


def timestep_embedding(t_B: Array, dim: int, max_period: float = 10_000.0) -> Array:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000), float32[B, dim]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = 1000.0 * t_B.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class Transformer(nn.Module):
    """tokens int[B, L] (ids 0..V, V = mask) [, t float[B]] -> logits float32[B, L, V]."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, tokens_BxL: Array, t_B: Array | None = None, attention_mask_BxL: Array | None = None) -> Array:
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
        for i in range(cfg.num_layers):
            x_BxLxD = block_cls(cfg, name=f"block_{i}")(x_BxLxD, cond_BxD, attention_mask_BxL)
            x_BxLxD = nn.with_logical_constraint(x_BxLxD, ("batch", "length", "embed_act"))

        x_BxLxD = RMSNorm(dt, name="final_norm")(x_BxLxD)
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
        if cfg.tie_embeddings:
            head_VxD = embed_VxD[: cfg.vocab_size]
            batch, length, d = x_BxLxD.shape
            logits = (x_BxLxD.reshape(-1, d) @ head_VxD.astype(dt).T).reshape(batch, length, -1)
        else:
            logits = Linear((cfg.vocab_size,), ("embed", "vocab"), 1, dt, cfg.init_std, name="head")(x_BxLxD)
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        return logits.astype(jnp.float32)
