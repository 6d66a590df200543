"""The absorbing-state forward process: time sampling and masking.

Token ids 0..V-1 are the ones the network predicts (specials such as BOS/EOS/PAD included); the
mask id is V, one past the vocabulary, so no output logit can ever name it. Randomness for
example b is derived from `fold_in(key, b)`, so the noise of an example does not depend on how
the batch is split over devices or micro-batches.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

# A denoiser maps (tokens int[B, L], t float[B]) to logits float[B, L, V] over the V real tokens;
# a time-agnostic network ignores t. Samplers and likelihood bounds take one.
Denoiser = Callable[[Array, Array], Array]


class BlockDenoiser(NamedTuple):
    """A block-autoregressive model as block decoding sees it. `context` is whatever the model
    keeps about the finished blocks (an exact K/V cache, or the committed tokens themselves).

    start(canvas int[B, L], first int32) -> context holding positions [0, first) of the canvas;
    logits(block int[B, b], first int32, context) -> float[B, b, V] for the block at [first, first + b);
    commit(block int[B, b], first int32, context) -> context holding that finished block too.
    """

    start: Callable[[Array, Array], Any]
    logits: Callable[[Array, Array, Any], Array]
    commit: Callable[[Array, Array, Any], Any]


def mask_id(vocab_size: int) -> int:
    """The id of the absorbing mask token for a network with `vocab_size` outputs."""
    return vocab_size


def stratified_times(key: Array, batch: int, t_min: float = 0.0) -> Array:
    """Antithetic (stratified) times: one t in each interval of [t_min, 1] of width (1-t_min)/B.

    Returns float32[batch]; t_b = t_min + (1 - t_min) * ((u + b / B) mod 1) with one u ~ U[0, 1).
    """
    u = jax.random.uniform(key, ())
    grid = jnp.mod(u + jnp.arange(batch, dtype=jnp.float32) / batch, 1.0)
    return t_min + (1.0 - t_min) * grid


def example_uniforms(key: Array, batch: int, length: int) -> Array:
    """float32[batch, length] uniforms; row b comes from fold_in(key, b) alone."""
    return jax.vmap(lambda b: jax.random.uniform(jax.random.fold_in(key, b), (length,)))(jnp.arange(batch))


def forward_mask(tokens: Array, mask_prob: Array, uniforms: Array, mask: int, pad: int | None) -> Array:
    """Samples x_t ~ q(x_t | x_0): each token becomes `mask` with probability mask_prob[b].

    tokens: int[B, L] clean tokens x_0; mask_prob: float[B] = 1 - alpha(t_b);
    uniforms: float[B, L] in [0, 1). Padding (id `pad`) is never masked. Returns int[B, L].
    """
    masked = uniforms < mask_prob[:, None]
    if pad is not None:
        masked &= tokens != pad
    return jnp.where(masked, mask, tokens)
