"""The first-hitting sampler (FHS) of Zheng et al. (2024), exact, batched, with a parallel form.

With n masked positions at time tau (start tau = 1), the next unmasking time has
P(tau' <= s) = ((1 - alpha(s)) / (1 - alpha(tau)))^n, drawn as log(1 - alpha(tau')) = log(1 - alpha(tau)) + log(u) / n.
One uniformly chosen masked position is then unmasked with a token from the denoiser's conditional: one network call per
token, no time grid. A time-conditioned network gets tau' (the time of the jump).
Parallel form (approximate for k > 1): k positions per call, uniform without replacement, the time advanced by k successive
first-hitting updates, the k tokens drawn independently from one call; a time-conditioned network gets tau_k, the time of
the call's last hit (exact for k = 1). k is fixed (`tokens_per_step`) or ceil(n / steps_left), so `steps` calls finish
every row. Each row carries its own n, time and key; rows that are done are left unchanged. Positions come from
`random_positions_rank`: an exactly uniform order of the masked positions (64-bit integer keys, redrawn on a tie).
Derivation and choices (why tau_k, its law): docs/samplers.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from mdm.samplers.base import Denoiser, SampleOutput, TokenDraw, TokenSampling, random_positions_rank, row_uniform, split_rows
from mdm.schedules import Schedule


def hitting_time_update(log_mask_prob_B: Array, u_BxK: Array, n_B: Array, k_B: Array) -> Array:
    """log(1 - alpha) after k_b successive first hits among n_b masked tokens (u ~ U(0, 1))."""
    j = jnp.arange(u_BxK.shape[1])
    remaining = jnp.maximum(n_B[:, None] - j[None, :], 1).astype(jnp.float32)
    steps = jnp.where(j[None, :] < k_B[:, None], jnp.log(u_BxK) / remaining, 0.0)
    return log_mask_prob_B + steps.sum(-1)


def first_hitting_sample(
    denoiser: Denoiser,
    keys_B: Array,
    tokens_BxL: Array,
    *,
    mask: int,
    schedule: Schedule,
    tokens_per_step: int = 1,
    steps: int | None = None,
    draw: TokenDraw = TokenSampling(),
) -> SampleOutput:
    """Fills every `mask` position of `tokens_BxL`; other positions (prompt, infill) are kept.

    tokens_per_step: k tokens per network call (1 = exact FHS). steps: if given, k follows
    ceil(n / steps_left) instead, so at most `steps` calls are made. NFE = calls for the batch.
    """
    batch, length = tokens_BxL.shape
    max_k = length if steps is not None else tokens_per_step
    if steps is None and tokens_per_step < 1:
        raise ValueError(f"tokens_per_step={tokens_per_step} must be >= 1")
    if steps is not None and steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")

    def cond(carry):
        x, _, _ = carry
        return jnp.any(x == mask)

    def body(carry):
        x, log_mp, nfe = carry
        is_masked = x == mask
        n = is_masked.sum(-1)
        if steps is None:
            k = jnp.minimum(n, tokens_per_step)
        else:
            left = jnp.maximum(steps - nfe, 1)
            k = jnp.minimum(n, -(-n // left))
        k_time, k_pos, k_tok = split_rows(keys_B, nfe, 3)
        log_mp = hitting_time_update(log_mp, row_uniform(k_time, (max_k,)), n, k)
        t_B = schedule.time_of_mask_prob(jnp.exp(log_mp))
        chosen = is_masked & (random_positions_rank(k_pos, is_masked) < k[:, None])
        logits = denoiser(x, t_B)
        if max_k < length:  # draw only at the chosen positions (k per row)
            idx = jnp.argsort(~chosen, axis=-1, stable=True)[:, :max_k]
            picked = jnp.take_along_axis(logits, idx[..., None], axis=1)
            x0 = draw(k_tok, picked, jnp.take_along_axis(x, idx, axis=1))
            x_new = x.at[jnp.arange(batch)[:, None], idx].set(
                jnp.where(jnp.take_along_axis(chosen, idx, axis=1), x0, jnp.take_along_axis(x, idx, axis=1))
            )
        else:
            x_new = jnp.where(chosen, draw(k_tok, logits, x), x)
        return x_new, log_mp, nfe + 1

    log_mp0 = jnp.full((batch,), jnp.log(schedule.mask_prob(jnp.float32(1.0))), jnp.float32)
    x, _, nfe = jax.lax.while_loop(cond, body, (tokens_BxL, log_mp0, jnp.int32(0)))
    return SampleOutput(x, nfe)
