"""The ancestral (MDLM/D3PM) sampler with the factorised exact step.

On a uniform grid 1 = t_0 > t_1 > ... > t_T = 0, each masked position is unmasked between t and
s < t with probability (alpha_s - alpha_t) / (1 - alpha_t), independently of the token, which is
drawn from the denoiser's categorical over the V real tokens. The last step (alpha = 1) unmasks
everything, so no mask survives.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import Array

from mdm.schedules import Schedule

Denoiser = Callable[[Array, Array], Array]  # (tokens int[B, L], t float[B]) -> logits float[B, L, V]


def ancestral_sample(
    denoiser: Denoiser,
    key: Array,
    tokens_BxL: Array,
    mask: int,
    schedule: Schedule,
    steps: int,
) -> tuple[Array, Array]:
    """Fills the positions of `tokens_BxL` equal to `mask`; returns (tokens int[B, L], NFE int).

    Positions that are not `mask` on input (a prompt or infill context) are kept. NFE counts the
    denoiser calls (one per step).
    """
    batch = tokens_BxL.shape[0]

    def step(i, x):
        t = 1.0 - i / steps
        s = 1.0 - (i + 1) / steps
        t_B = jnp.full((batch,), t, jnp.float32)
        p_unmask = (schedule.mask_prob(t) - schedule.mask_prob(s)) / schedule.mask_prob(t)
        k_pos, k_tok = jax.random.split(jax.random.fold_in(key, i))
        is_masked = x == mask
        unmask = is_masked & (jax.random.uniform(k_pos, x.shape) < p_unmask)
        x0 = jax.random.categorical(k_tok, denoiser(x, t_B).astype(jnp.float32), axis=-1)
        return jnp.where(unmask, x0, x)

    out = jax.lax.fori_loop(0, steps, step, tokens_BxL)
    return out, jnp.asarray(steps, jnp.int32)
