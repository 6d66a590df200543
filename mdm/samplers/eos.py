"""Variable-length generation: EOS suppressed before a minimum length, samples trimmed after the first EOS.

A sample's length is the number of tokens up to and including the first EOS the sampler generated (positions
the canvas fixed, such as a prompt, never count as a stop), or L when it generated none; everything after it
becomes PAD. Both rules work on any sampler's output and on block decoding, where a finished block holding
EOS also stops its row.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from mdm.process import Denoiser


def suppress_eos(logits_BxLxV: Array, positions_L: Array, eos: int, min_length: int) -> Array:
    """The logits with EOS impossible at positions < `min_length` (positions_L: canvas index of each column)."""
    if min_length <= 0:
        return logits_BxLxV
    early_L = positions_L < min_length
    return logits_BxLxV.at[..., eos].set(jnp.where(early_L[None, :], -jnp.inf, logits_BxLxV[..., eos]))


def suppressing_eos(denoiser: Denoiser, positions_L: Array, eos: int, min_length: int) -> Denoiser:
    """`denoiser` with `suppress_eos` applied to its logits (positions_L: canvas index of each column)."""
    return lambda tokens, t: suppress_eos(denoiser(tokens, t), positions_L, eos, min_length)


def sample_lengths(tokens_BxL: Array, generated_BxL: Array, eos: int) -> Array:
    """int32[B]: 1 + the index of the first generated EOS, or L where there is none."""
    length = tokens_BxL.shape[1]
    stop_BxL = (tokens_BxL == eos) & generated_BxL
    return jnp.where(stop_BxL.any(-1), jnp.argmax(stop_BxL, -1) + 1, length).astype(jnp.int32)


def trim_after_eos(tokens_BxL: Array, generated_BxL: Array, eos: int, pad: int) -> Array:
    """int[B, L]: PAD after each row's first generated EOS."""
    lengths_B = sample_lengths(tokens_BxL, generated_BxL, eos)
    return jnp.where(jnp.arange(tokens_BxL.shape[1])[None, :] < lengths_B[:, None], tokens_BxL, pad)
