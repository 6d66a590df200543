"""The ancestral (MDLM/D3PM) sampler on a T-step time grid, with the exact factorised step.

Between grid times t > s each masked position is unmasked with probability (alpha_s - alpha_t) / (1 - alpha_t),
independently of the token, which is drawn from the denoiser's categorical over the V real tokens (both draws
float32-safe). The last step (s = 0, alpha = 1) unmasks everything.
Caching (cache=True): a step's unmasking decisions are drawn first; a step that reveals nothing makes no call, and a step
that reveals tokens reuses the last logits if no token changed since they were computed (valid for a time-agnostic
network). NFE is the number of steps that reveal a token: for one unconditional row, linear schedule, uniform grid,
E[NFE] = T (1 - (1 - 1/T)^L); for B rows, L -> L B.
greedy_last=True replaces the token draw of the last step by the argmax of the logits ("greedy tail", DUO's
`noise_removal=greedy`). Off by default.
Why the step and the caching are exact: docs/samplers.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from mdm.samplers.base import Denoiser, SampleOutput, TokenDraw, TokenSampling, row_uniform, split_rows
from mdm.schedules import Schedule
from mdm.time_grids import time_grid

def ancestral_sample(
    denoiser: Denoiser,
    keys_B: Array,
    tokens_BxL: Array,
    *,
    mask: int,
    schedule: Schedule,
    steps: int,
    grid: str = "uniform",
    cache: bool = True,
    draw: TokenDraw = TokenSampling(),
    greedy_last: bool = False,
) -> SampleOutput:
    """Fills the `mask` positions of `tokens_BxL` in `steps` grid steps; NFE counts network calls.

    cache=True reuses the last logits while no token has changed (only valid for a
    time-agnostic denoiser: pass cache=False for a time-conditioned one). greedy_last=True takes
    the argmax instead of a draw at the last step.
    """
    batch = tokens_BxL.shape[0]
    times = time_grid(steps, grid)

    def tokens(i, k_tok, logits, x):
        drawn = draw(k_tok, logits, x)
        if not greedy_last:
            return drawn
        return jnp.where(i == steps - 1, jnp.argmax(logits, axis=-1).astype(drawn.dtype), drawn)

    def step(i, carry):
        x, logits, valid, nfe = carry
        t, s = times[i], times[i + 1]
        p_unmask = jnp.where(s > 0, 1.0 - schedule.mask_prob(s) / schedule.mask_prob(t), 1.0)
        k_unmask, k_tok = split_rows(keys_B, i, 2)
        unmask = (x == mask) & (row_uniform(k_unmask, x.shape[1:]) < p_unmask)
        t_B = jnp.full((batch,), t)
        if not cache:
            logits = denoiser(x, t_B).astype(jnp.float32)
            return jnp.where(unmask, tokens(i, k_tok, logits, x), x), logits, valid, nfe + 1
        # Call the network only when a token is revealed and x changed since the last call.
        need_call = jnp.any(unmask) & ~valid
        logits = jax.lax.cond(need_call, lambda: denoiser(x, t_B).astype(jnp.float32), lambda: logits)
        x_new = jax.lax.cond(jnp.any(unmask), lambda: jnp.where(unmask, tokens(i, k_tok, logits, x), x), lambda: x)
        return x_new, logits, (valid | need_call) & jnp.all(x_new == x), nfe + need_call.astype(jnp.int32)

    vocab = jax.eval_shape(denoiser, tokens_BxL, jnp.ones((batch,), jnp.float32)).shape[-1]
    init = (tokens_BxL, jnp.zeros(tokens_BxL.shape + (vocab,), jnp.float32), jnp.bool_(False), jnp.int32(0))
    x, _, _, nfe = jax.lax.fori_loop(0, steps, step, init)
    return SampleOutput(x, nfe)
