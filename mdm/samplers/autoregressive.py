"""Left-to-right decoding behind the sampler seam (the AR twin's sampler).

The denoiser here is a next-token model: its logits at position i are p(x_i | tokens[:i]) and
ignore every later position (`AutoregressiveObjective.denoiser`). Masked positions are filled
in order, one full forward pass per position (no KV cache), each token drawn from the row's own
key folded with the position; positions that are not masked (a prompt) are kept.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from mdm.samplers.base import Denoiser, SampleOutput, TokenDraw, TokenSampling


def autoregressive_sample(
    denoiser: Denoiser, keys_B: Array, tokens_BxL: Array, *, mask: int, draw: TokenDraw = TokenSampling()
) -> SampleOutput:
    """Fills the `mask` positions of `tokens_BxL` left to right; NFE is L (one call per position)."""
    batch, length = tokens_BxL.shape
    t_B = jnp.zeros((batch,), jnp.float32)

    def step(i, x_BxL):
        logits = jax.lax.dynamic_slice_in_dim(denoiser(x_BxL, t_B), i, 1, axis=1)
        keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys_B)
        token_B = draw(keys, logits, jax.lax.dynamic_slice_in_dim(x_BxL, i, 1, axis=1))[:, 0]
        return x_BxL.at[:, i].set(jnp.where(x_BxL[:, i] == mask, token_B, x_BxL[:, i]))

    return SampleOutput(jax.lax.fori_loop(0, length, step, tokens_BxL), jnp.int32(length))
