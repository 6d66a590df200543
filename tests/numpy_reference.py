"""A float64 NumPy forward pass of `mdm.networks.Transformer`, written from its architecture alone.

Nothing here calls library code: it reads the params dict (Flax layout, any array type) and
recomputes the logits in float64, so tests can measure how far the float32 model is from exact.

Architecture: token embedding [V + 1, D] (row V is the mask id); optional adaLN-zero time
conditioning (sinusoidal embedding of 1000 t, two SiLU Dense layers); pre-norm blocks of
RMSNorm (eps 1e-6) -> multi-head attention (fused QKV kernel [D, 3, N, H], half-split RoPE,
scale 1/sqrt(H), bidirectional or causal, right-padding keys hidden by per-row lengths, out
kernel [N, H, D]) and RMSNorm -> SwiGLU (fused gate/up kernel [D, 2, F], down [F, D]); a final
RMSNorm; the head is embedding[:V].T (tied) or head/kernel [D, V].
Shapes: B batch, L length, D model width, N heads, H head dim, F MLP width, V vocabulary.
"""

from __future__ import annotations

import math

import numpy as np

RMS_EPS = 1e-6


def f64(x) -> np.ndarray:
    """Any array (a Flax `Partitioned` box included) as float64 NumPy."""
    x = getattr(x, "value", x)
    return np.asarray(x, np.float64)


def rms_norm(x_BxLxD: np.ndarray, scale_D) -> np.ndarray:
    return x_BxLxD / np.sqrt(np.mean(x_BxLxD**2, axis=-1, keepdims=True) + RMS_EPS) * f64(scale_D)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def rope(x_BxLxNxH: np.ndarray, base: float) -> np.ndarray:
    """Half-split rotary embedding at positions 0..L-1: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    length, head_dim = x_BxLxNxH.shape[1], x_BxLxNxH.shape[3]
    half = head_dim // 2
    freq_h = float(base) ** (-np.arange(half, dtype=np.float64) / half)
    angle_LxH = np.arange(length, dtype=np.float64)[:, None] * freq_h[None, :]
    cos, sin = np.cos(angle_LxH)[None, :, None, :], np.sin(angle_LxH)[None, :, None, :]
    x1, x2 = x_BxLxNxH[..., :half], x_BxLxNxH[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attention(p: dict, x_BxLxD: np.ndarray, causal: bool, lengths_B, rope_base: float) -> np.ndarray:
    qkv_DxThreexNxH = f64(p["qkv"]["kernel"])
    qkv = np.einsum("bld,dtnh->bltnh", x_BxLxD, qkv_DxThreexNxH)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, L, N, H]
    q, k = rope(q, rope_base), rope(k, rope_base)
    batch, length, _, head_dim = q.shape
    scores_BxNxLxL = np.einsum("bqnh,bknh->bnqk", q, k) / math.sqrt(head_dim)
    pos = np.arange(length)
    allowed_BxLxL = np.ones((batch, length, length), bool)
    if causal:
        allowed_BxLxL &= pos[None, None, :] <= pos[None, :, None]
    if lengths_B is not None:
        allowed_BxLxL &= pos[None, None, :] < np.asarray(lengths_B)[:, None, None]
    scores_BxNxLxL = np.where(allowed_BxLxL[:, None], scores_BxNxLxL, -np.inf)
    scores_BxNxLxL -= scores_BxNxLxL.max(-1, keepdims=True)
    probs = np.exp(scores_BxNxLxL)
    probs /= probs.sum(-1, keepdims=True)
    out_BxLxNxH = np.einsum("bnqk,bknh->bqnh", probs, v)
    return np.einsum("blnh,nhd->bld", out_BxLxNxH, f64(p["out"]["kernel"]))


def swiglu(p: dict, x_BxLxD: np.ndarray) -> np.ndarray:
    gate_up = np.einsum("bld,dgf->blgf", x_BxLxD, f64(p["gate_up"]["kernel"]))
    h_BxLxF = silu(gate_up[..., 0, :]) * gate_up[..., 1, :]
    return h_BxLxF @ f64(p["down"]["kernel"])


def timestep_embedding(t_B: np.ndarray, dim: int = 256, max_period: float = 10_000.0) -> np.ndarray:
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(half, dtype=np.float64) / half)
    args = 1000.0 * np.asarray(t_B, np.float64)[:, None] * freqs[None, :]
    return np.concatenate([np.cos(args), np.sin(args)], axis=-1)


def dense(p: dict, x: np.ndarray) -> np.ndarray:
    return x @ f64(p["kernel"]) + f64(p["bias"])


def forward(
    params: dict,
    tokens_BxL,
    *,
    vocab_size: int,
    num_layers: int,
    causal: bool = False,
    tie_embeddings: bool = True,
    lengths_B=None,
    t_B=None,
    rope_base: float = 10_000.0,
) -> np.ndarray:
    """float64 logits [B, L, V]. `lengths_B`: real tokens per row (padding is a suffix; logits
    at padding positions are not meaningful); `t_B`: times for a time-conditioned network."""
    embed = f64(params["embedding"])
    x = embed[np.asarray(tokens_BxL)]
    cond_BxD = None
    if t_B is not None:
        emb = timestep_embedding(t_B)
        cond_BxD = silu(dense(params["time_mlp_out"], silu(dense(params["time_mlp_in"], emb))))
    for i in range(num_layers):
        p = params[f"block_{i}"]
        if cond_BxD is None:
            x = x + attention(p["attn"], rms_norm(x, p["attn_norm"]["scale"]), causal, lengths_B, rope_base)
            x = x + swiglu(p["mlp"], rms_norm(x, p["mlp_norm"]["scale"]))
            continue
        shift1, scale1, gate1, shift2, scale2, gate2 = np.split(dense(p["adaln"], cond_BxD)[:, None, :], 6, axis=-1)
        h = rms_norm(x, p["attn_norm"]["scale"]) * (1 + scale1) + shift1
        x = x + gate1 * attention(p["attn"], h, causal, lengths_B, rope_base)
        h = rms_norm(x, p["mlp_norm"]["scale"]) * (1 + scale2) + shift2
        x = x + gate2 * swiglu(p["mlp"], h)
    x = rms_norm(x, params["final_norm"]["scale"])
    if cond_BxD is not None:
        shift, scale = np.split(dense(params["final_adaln"], cond_BxD)[:, None, :], 2, axis=-1)
        x = x * (1 + scale) + shift
    head_DxV = embed[:vocab_size].T if tie_embeddings else f64(params["head"]["kernel"])
    return x @ head_DxV


def token_nll(logits_BxLxV: np.ndarray, targets_BxL) -> np.ndarray:
    """float64 -log softmax(logits)[target] per position [B, L]."""
    m = logits_BxLxV.max(-1, keepdims=True)
    lse = np.log(np.exp(logits_BxLxV - m).sum(-1)) + m[..., 0]
    picked = np.take_along_axis(logits_BxLxV, np.asarray(targets_BxL)[..., None], axis=-1)[..., 0]
    return lse - picked


def per_example_sums(nats_B, tokens_B, bytes_B) -> dict[str, float]:
    """The pooled sums an objective's `eval_sums` returns, in float64."""
    nats_B, tokens_B, bytes_B = (np.asarray(a, np.float64) for a in (nats_B, tokens_B, bytes_B))
    return {
        "nats": nats_B.sum(),
        "tokens": tokens_B.sum(),
        "bytes": bytes_B.sum(),
        "nats_sq": (nats_B**2).sum(),
        "nats_tokens": (nats_B * tokens_B).sum(),
        "tokens_sq": (tokens_B**2).sum(),
        "sequences": float(nats_B.shape[0]),
    }
