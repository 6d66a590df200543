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
    remat: bool = False
    init_std: float = 0.02

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


class Attention(nn.Module):
    """Multi-head self-attention with a fused QKV projection."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x_BxLxD: Array, attention_mask_BxL: Array | None) -> Array:
        cfg = self.cfg
        init = nn.initializers.normal(cfg.init_std)
        qkv = nn.DenseGeneral(
            features=(3, cfg.num_heads, cfg.head_dim),
            use_bias=False,
            dtype=cfg.compute_dtype,
            kernel_init=_param(init, ("embed", "qkv", "heads", "kv")),
            name="qkv",
        )(x_BxLxD)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q, k = rope(q, cfg.rope_base), rope(k, cfg.rope_base)
        mask = None
        if attention_mask_BxL is not None:
            mask = attention_mask_BxL[:, None, None, :]
        out_BxLxNxH = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=cfg.causal)
        out_init = nn.initializers.normal(cfg.init_std / math.sqrt(2 * cfg.num_layers))
        return nn.DenseGeneral(
            features=cfg.d_model,
            axis=(-2, -1),
            use_bias=False,
            dtype=cfg.compute_dtype,
            kernel_init=_param(out_init, ("heads", "kv", "embed")),
            name="out",
        )(out_BxLxNxH)


class SwiGLU(nn.Module):
    """SwiGLU MLP with a fused gate/up projection."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x_BxLxD: Array) -> Array:
        cfg = self.cfg
        init = nn.initializers.normal(cfg.init_std)
        gate_up = nn.DenseGeneral(
            features=(2, cfg.mlp_dim),
            use_bias=False,
            dtype=cfg.compute_dtype,
            kernel_init=_param(init, ("embed", "gate", "mlp")),
            name="gate_up",
        )(x_BxLxD)
        h_BxLxF = nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1]
        out_init = nn.initializers.normal(cfg.init_std / math.sqrt(2 * cfg.num_layers))
        return nn.DenseGeneral(
            features=cfg.d_model,
            use_bias=False,
            dtype=cfg.compute_dtype,
            kernel_init=_param(out_init, ("mlp", "embed")),
            name="down",
        )(h_BxLxF)


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
    def __call__(
        self, tokens_BxL: Array, t_B: Array | None = None, attention_mask_BxL: Array | None = None
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

        block_cls = nn.remat(Block) if cfg.remat else Block
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
            logits = jnp.einsum("bld,vd->blv", x_BxLxD, head_VxD.astype(dt))
        else:
            logits = nn.DenseGeneral(
                cfg.vocab_size,
                use_bias=False,
                dtype=dt,
                kernel_init=_param(nn.initializers.normal(cfg.init_std), ("embed", "vocab")),
                name="head",
            )(x_BxLxD)
        return logits.astype(jnp.float32)
