"""The sampler seam: types shared by every sampler.

A denoiser maps (tokens int[B, L], t float[B]) to logits float[B, L, V] over the V real tokens;
the mask id is V. A time-agnostic network ignores t. A sampler takes a denoiser, per-row keys
and a canvas `tokens` int[B, L] in which the positions to generate hold the mask id and every
other position (a prompt, infilling context) is kept. It returns a `SampleOutput`.

Each row's randomness comes from its own key, so a row gives the same sample alone or in any
batch. The token draw is a `TokenDraw`, so a later sampler can replace how x_0 is proposed
(an energy-reweighted importance step) without touching the time/position logic.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from mdm.categorical import filter_logits, sample_categorical
from mdm.process import Denoiser as Denoiser  # the seam's input type, re-exported

# (keys uint32[B, 2], logits float[B, L, V], tokens int[B, L]) -> proposed x_0 int[B, L]
TokenDraw = Callable[[Array, Array, Array], Array]


class SampleOutput(NamedTuple):
    tokens: Array  # int32[B, L], no mask left
    nfe: Array  # int32 scalar: denoiser calls made for the whole batch


@dataclasses.dataclass(frozen=True)
class TokenSampling:
    """How a token is drawn from the denoiser's logits: temperature, top-k/top-p, precision."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    method: str = "exact"  # see mdm.categorical: 'exact', 'gumbel_f32', 'gumbel_high'

    def __call__(self, keys_B: Array, logits_BxLxV: Array, tokens_BxL: Array) -> Array:
        del tokens_BxL
        logits = filter_logits(logits_BxLxV.astype(jnp.float32), temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return jax.vmap(lambda k, lg: sample_categorical(k, lg, method=self.method))(keys_B, logits)


def split_rows(keys_B: Array, step: Array | int, num: int) -> tuple[Array, ...]:
    """`num` fresh per-row key arrays for step `step`: fold_in(key_b, step), then split."""
    folded = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys_B)
    parts = jax.vmap(lambda k: jax.random.split(k, num))(folded)  # [B, num, 2]
    return tuple(parts[:, i] for i in range(num))


def row_uniform(keys_B: Array, shape: tuple[int, ...] = ()) -> Array:
    """float32[B, *shape] uniforms in (0, 1), one draw per row key."""
    tiny = jnp.finfo(jnp.float32).tiny
    return jax.vmap(lambda k: jax.random.uniform(k, shape, minval=tiny, maxval=1.0))(keys_B)


def random_positions_rank(keys_B: Array, is_masked_BxL: Array) -> Array:
    """int32[B, L]: a uniformly random order of each row's masked positions (0 = first).

    Unmasked positions rank after all masked ones. Taking rank < k picks k distinct masked
    positions uniformly at random. The order is exactly uniform (see `_uniform_rank_row`), not
    merely up to float ties. One key per row, static shapes, jittable.
    """
    return jax.vmap(_uniform_rank_row)(keys_B, is_masked_BxL)


def _uniform_rank_row(key: Array, is_masked_L: Array, word_bits: int = 32) -> Array:
    """int32[L]: rank of each position in an exactly uniform random order of the masked ones.

    Each masked position gets an iid 64-bit key (two uint32 words from `jax.random.bits`) and
    the masked positions are sorted by it. If two masked keys tie (probability about
    m^2 / 2^65 for m masked positions, ~2^-37 at m = 16k) the whole draw is rejected and redrawn
    from fold_in(key, attempt): given that all keys are distinct, iid keys are exchangeable, so
    the sorted order is exactly a uniform permutation, and no index-based tie-break can bias
    it. Unmasked positions sort after the masked ones (by index). `word_bits` < 32 keeps only
    that many low bits per word; it exists so tests can force ties (it needs
    2^(2 word_bits) >= m, or no draw is tie-free).
    """
    length = is_masked_L.shape[0]
    pos = jnp.arange(length, dtype=jnp.int32)
    unmasked = jnp.where(is_masked_L, 0, 1).astype(jnp.uint32)

    def draw(attempt):
        bits = jax.random.bits(jax.random.fold_in(key, attempt), (2, length), jnp.uint32)
        if word_bits < 32:
            bits = bits & jnp.uint32((1 << word_bits) - 1)
        hi, lo = (jnp.where(is_masked_L, w, jnp.uint32(0)) for w in bits)
        s_un, s_hi, s_lo, order = jax.lax.sort((unmasked, hi, lo, pos), num_keys=3, is_stable=True)
        # Masked positions come first, so a masked pair is adjacent with s_un == 0 on both sides.
        tie = jnp.any((s_un[1:] == 0) & (s_hi[1:] == s_hi[:-1]) & (s_lo[1:] == s_lo[:-1]))
        return order, tie

    def redraw(carry):
        attempt, _, _ = carry
        return (attempt + 1, *draw(attempt))

    order, tie = draw(jnp.int32(0))
    _, order, _ = jax.lax.while_loop(lambda c: c[2], redraw, (jnp.int32(1), order, tie))
    return jnp.zeros(length, jnp.int32).at[order].set(pos)
