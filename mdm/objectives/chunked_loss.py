"""Per-token losses from the final hidden states and the output head, a chunk of positions at a time.

A [B, L, V] float32 logits tensor is the largest activation of a large-vocabulary model (12 GiB
for GPT-2's vocabulary at 64 x 1024, more with its gradient). Here the head is applied to C
positions of every row at a time inside a `lax.scan` whose body is rematerialised, so only one
chunk's [B, C, V] logits exist at once, in the forward and in the backward pass; operands are in
the compute dtype and the products accumulate in float32.

Positions whose loss is not needed (unmasked or padding positions of the MDM objective) can be
skipped with static shapes: each row's needed positions are moved to the front (a stable
permutation), and a chunk that lies past every row's count of needed positions is not computed
(`lax.cond`), so an MDM batch with half its tokens masked pays for about half of the head.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import Array

from mdm.networks.transformer import project
from mdm.sharding import batch_shards

# Logits per chunk that `auto_chunk` aims at on one device (2^27 float32 = 512 MiB).
TARGET_CHUNK_LOGITS = 2**27


def auto_chunk(batch: int, length: int, vocab: int, target: int = TARGET_CHUNK_LOGITS) -> int:
    """Positions per chunk: the largest divisor of `length` whose [local batch, C, V] logits stay
    within `target` elements (the whole length when it fits: no scan at all)."""
    shards = batch_shards()
    local = batch // shards if batch % shards == 0 else batch
    most = max(1, target // max(1, local * vocab))
    return max(d for d in range(1, min(most, length) + 1) if length % d == 0)


def resolve_chunk(chunk: int, batch: int, length: int, vocab: int) -> int:
    """Positions per chunk for a requested `chunk` (0: `auto_chunk`), made a divisor of `length`."""
    return math.gcd(chunk or auto_chunk(batch, length, vocab), length)


def chunked_token_values(
    fn: Callable[..., Array], xs: tuple[Array, ...], chunk: int, needed_BxL: Array | None = None
) -> Array:
    """float32[B, L]: `fn(*[x[:, chunk] for x in xs]) -> [B, C]` over chunks of C positions.

    Every x in `xs` is [B, L, ...]. With `needed_BxL`, values at positions it marks False are 0
    and chunks holding only such positions are skipped. `chunk` must divide L.
    """
    batch, length = xs[0].shape[:2]
    if length % chunk:
        raise ValueError(f"loss chunk {chunk} does not divide the length {length}")
    if chunk >= length and needed_BxL is None:
        return fn(*xs).astype(jnp.float32)
    if chunk >= length:
        return jnp.where(needed_BxL, fn(*xs), 0.0).astype(jnp.float32)
    if needed_BxL is not None:
        order_BxL = jnp.argsort(~needed_BxL, axis=-1, stable=True)  # needed positions first
        xs = tuple(jax.vmap(lambda x, o: x[o])(x, order_BxL) for x in xs)
        count = needed_BxL.sum(-1).max()
    num = length // chunk
    stacked = tuple(x.reshape(batch, num, chunk, *x.shape[2:]).swapaxes(0, 1) for x in xs)
    body = jax.checkpoint(lambda args: fn(*args).astype(jnp.float32))

    def step(carry, inputs):
        j, args = inputs
        if needed_BxL is None:
            return carry, body(args)
        skip = lambda a: jnp.zeros((batch, chunk), jnp.float32)  # noqa: E731
        return carry, jax.lax.cond(j * chunk < count, body, skip, args)

    _, out_NxBxC = jax.lax.scan(step, None, (jnp.arange(num), stacked))
    out_BxL = out_NxBxC.swapaxes(0, 1).reshape(batch, length)
    if needed_BxL is None:
        return out_BxL
    out_BxL = jax.vmap(lambda y, o: jnp.zeros_like(y).at[o].set(y))(out_BxL, order_BxL)  # undo the permutation
    return jnp.where(needed_BxL, out_BxL, 0.0)


def head_logits(hidden_BxCxD: Array, head_DxV: Array | None) -> Array:
    """float32 logits [B, C, V] = hidden @ head in the hidden states' dtype, accumulated in
    float32; `head_DxV` None: the hidden states already are the logits (exact test oracles)."""
    if head_DxV is None:
        return hidden_BxCxD.astype(jnp.float32)
    return project(hidden_BxCxD, head_DxV, hidden_BxCxD.dtype)


def nll_from_logits(logits_BxCxV: Array, targets_BxC: Array) -> Array:
    """-log softmax(logits)[target], float32[B, C]."""
    logits = logits_BxCxV.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, targets_BxC[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked


def chunked_token_nll(
    hidden_BxLxD: Array, head_DxV: Array | None, targets_BxL: Array, chunk: int = 0, needed_BxL: Array | None = None
) -> Array:
    """float32[B, L]: -log softmax(hidden @ head)[target] without the [B, L, V] logits.

    Operands in `hidden_BxLxD.dtype` (the compute dtype), float32 accumulation; `head_DxV` None
    means the hidden states already are the logits (exact test oracles). `chunk`: see
    `resolve_chunk`; with `needed_BxL`, other positions give 0 and cost nothing where a whole
    chunk is unneeded.
    """
    batch, length, _ = hidden_BxLxD.shape
    vocab = hidden_BxLxD.shape[-1] if head_DxV is None else head_DxV.shape[-1]
    chunk = resolve_chunk(chunk, batch, length, vocab)
    nll = lambda h, y: nll_from_logits(head_logits(h, head_DxV), y)  # noqa: E731
    return chunked_token_values(nll, (hidden_BxLxD, targets_BxL), chunk, needed_BxL)
