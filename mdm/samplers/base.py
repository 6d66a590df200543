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

from mdm.samplers.categorical import filter_logits, sample_categorical

Denoiser = Callable[[Array, Array], Array]
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
    method: str = "exact"  # see samplers.categorical: 'exact', 'gumbel_f32', 'gumbel_high'

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
    positions uniformly at random.
    """
    noise = jax.vmap(lambda k, m: jax.random.uniform(k, m.shape))(keys_B, is_masked_BxL)
    noise = jnp.where(is_masked_BxL, noise, 2.0)
    return jnp.argsort(jnp.argsort(noise, axis=-1), axis=-1).astype(jnp.int32)
