"""Confidence-ordered parallel decoding (MaskGIT / LLaDA style), optionally block by block.

Each step calls the network, draws a candidate token at every masked position, and keeps the
candidates at the k most confident eligible positions: k = ceil(n_eligible / steps_left_in_block).
Orders: 'top_prob' (probability of the drawn token), 'margin' (top-1 minus top-2 probability),
'entropy' (negative entropy of the position's distribution). With `block_length` < L the
sequence is decoded left to right in blocks (semi-autoregressive), `steps / num_blocks` steps
each; only masked positions of the current block are eligible. This family is not an exact
sampler of the model's joint; it trades fidelity for few steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from mdm.samplers.base import Denoiser, SampleOutput, TokenDraw, TokenSampling, split_rows
from mdm.schedules import Schedule

ORDERS = ("top_prob", "margin", "entropy")


def confidence_scores(logits_BxLxV: Array, x0_BxL: Array, order: str) -> Array:
    """float32[B, L]: higher = more confident."""
    logp = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
    if order == "top_prob":
        return jnp.take_along_axis(logp, x0_BxL[..., None], axis=-1)[..., 0]
    if order == "margin":
        top2 = jax.lax.top_k(logp, 2)[0]
        return jnp.exp(top2[..., 0]) - jnp.exp(top2[..., 1])
    if order == "entropy":
        return jnp.sum(jnp.exp(logp) * jnp.where(jnp.isfinite(logp), logp, 0.0), axis=-1)
    raise ValueError(f"unknown confidence order {order!r}; choose one of {', '.join(ORDERS)}")


def confidence_sample(
    denoiser: Denoiser,
    keys_B: Array,
    tokens_BxL: Array,
    *,
    mask: int,
    schedule: Schedule,
    steps: int,
    order: str = "top_prob",
    block_length: int | None = None,
    draw: TokenDraw = TokenSampling(),
) -> SampleOutput:
    """Fills the `mask` positions in `steps` network calls (NFE = steps).

    Confidences come from the model's own (untempered) probabilities; `draw` (temperature,
    top-k/top-p) only decides the candidate tokens.
    """
    batch, length = tokens_BxL.shape
    block = length if block_length is None else block_length
    if not 1 <= block <= length:
        raise ValueError(f"block_length={block_length} must lie in [1, {length}]")
    num_blocks = -(-length // block)
    if steps % num_blocks:
        raise ValueError(f"steps={steps} must be a multiple of the number of blocks ({num_blocks})")
    if order not in ORDERS:
        raise ValueError(f"unknown confidence order {order!r}; choose one of {', '.join(ORDERS)}")
    per_block = steps // num_blocks
    position = jnp.arange(length)

    def step(i, x):
        b = i // per_block
        left = per_block - i % per_block
        is_masked = x == mask
        in_block_L = (position >= b * block) & (position < (b + 1) * block)
        eligible = is_masked & in_block_L[None, :]
        n = eligible.sum(-1)
        k = -(-n // left)
        t_B = schedule.time_of_mask_prob(is_masked.mean(-1).astype(jnp.float32))
        logits = denoiser(x, t_B).astype(jnp.float32)
        (k_tok,) = split_rows(keys_B, i, 1)
        x0 = draw(k_tok, logits, x)
        scores = confidence_scores(logits, x0, order)
        scores = jnp.where(eligible, scores, -jnp.inf)
        rank = jnp.argsort(jnp.argsort(-scores, axis=-1, stable=True), axis=-1, stable=True)
        chosen = eligible & (rank < k[:, None])
        return jnp.where(chosen, x0, x)

    x = jax.lax.fori_loop(0, steps, step, tokens_BxL)
    return SampleOutput(x, jnp.int32(steps))
