"""Softmax attention in plain XLA ops whose backward recomputes the probabilities.

`lean_attention(q, k, v, visible)` equals `jax.nn.dot_product_attention(implementation='xla')` with a
boolean mask, but its custom VJP keeps only the output and the per-query log-sum-exp (as flash attention
does) and computes the softmax gradient from rowsum(dO * O), an [B, L, N] reduction, instead of
rowsum(dP * P) over the [B, N, L, L] scores. On CPUs that backward does less work than autodiff of the
XLA path under `jax.checkpoint` (benchmarks/attention_cpu.py; docs/quickstart.md). Shapes: B batch, L length, N heads,
H head dim; scores, softmax and log-sum-exp are float32 whatever the input dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array

_F32 = jnp.float32


def _scores(q_BxLxNxH: Array, k_BxLxNxH: Array, visible: Array | None) -> Array:
    """f32[B, N, L, L] of q k^T / sqrt(H), hidden keys at the lowest float32 (finite: a query that
    sees nothing gets uniform weights rather than NaN)."""
    scale = 1.0 / math.sqrt(q_BxLxNxH.shape[-1])
    s = jnp.einsum("bqnh,bknh->bnqk", q_BxLxNxH, k_BxLxNxH, preferred_element_type=_F32) * scale
    return s if visible is None else jnp.where(visible, s, jnp.finfo(_F32).min)


def _forward(q: Array, k: Array, v: Array, visible: Array | None) -> tuple[Array, tuple[Array, Array]]:
    """(output [B, L, N, H] in q's dtype, (top, log total): f32[B, N, L, 1] each, the row maximum of
    the scores and the log of the row's sum of exp(s - top); kept apart because top + log total
    would round back to top in a row that sees no key)."""
    s = _scores(q, k, visible)
    top = jax.lax.stop_gradient(s.max(-1, keepdims=True))
    p = jnp.exp(s - top)
    total = p.sum(-1, keepdims=True)
    out = jnp.einsum("bnqk,bknh->bqnh", (p / total).astype(v.dtype), v, preferred_element_type=_F32)
    return out.astype(q.dtype), (top, jnp.log(total))


@jax.custom_vjp
def lean_attention(q_BxLxNxH: Array, k_BxLxNxH: Array, v_BxLxNxH: Array, visible: Array | None = None) -> Array:
    """softmax(q k^T / sqrt(H), keys where `visible`) v: [B, L, N, H] each, `visible` a bool array
    broadcastable to [B, N, L(query), L(key)] or None (all keys)."""
    return _forward(q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, visible)[0]


def _fwd(q: Array, k: Array, v: Array, visible: Array | None):
    out, (top, log_total) = _forward(q, k, v, visible)
    return out, (q, k, v, visible, out, top, log_total)


def _bwd(residuals, d_out: Array):
    q, k, v, visible, out, top, log_total = residuals
    scale = 1.0 / math.sqrt(q.shape[-1])
    p = jnp.exp(_scores(q, k, visible) - top - log_total)  # f32[B, N, L, L], the forward's weights
    d_v = jnp.einsum("bnqk,bqnh->bknh", p.astype(d_out.dtype), d_out, preferred_element_type=_F32)
    d_p = jnp.einsum("bqnh,bknh->bnqk", d_out, v, preferred_element_type=_F32)
    row = jnp.einsum("bqnh,bqnh->bnq", d_out.astype(_F32), out.astype(_F32))[..., None]  # rowsum(dP * P)
    d_s = p * (d_p - row) * scale
    if visible is not None:  # a hidden key's score is a constant: no gradient (matters in a row that sees none)
        d_s = jnp.where(visible, d_s, 0.0)
    d_s = d_s.astype(q.dtype)
    d_q = jnp.einsum("bnqk,bknh->bqnh", d_s, k, preferred_element_type=_F32)
    d_k = jnp.einsum("bnqk,bqnh->bknh", d_s, q, preferred_element_type=_F32)
    return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), None


lean_attention.defvjp(_fwd, _bwd)
