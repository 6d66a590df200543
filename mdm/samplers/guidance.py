"""SMDM's unsupervised classifier-free guidance (Nie et al., "Scaling up Masked Diffusion Models
on Text"): no extra training, the unconditional model is the same network with the context hidden.

For a canvas whose context positions (a prompt, infill text: everything not generated) are
`context_BxL`, the guided denoiser returns (1 + w) * f(x, t) - w * f(x_u, t), where x_u is x with
the context replaced by the mask id; both passes go through one call of 2B rows. Per position
the guided categorical is proportional to p(x | c)^(1 + w) / p(x)^w. w = 0 is no guidance.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from mdm.process import Denoiser


def guided_denoiser(denoiser: Denoiser, context_BxL: Array, scale: float, mask: int) -> Denoiser:
    """The guided denoiser of `denoiser` at scale w = `scale` >= 0 (float32 logits)."""

    def call(x_BxL: Array, t_B: Array) -> Array:
        batch = x_BxL.shape[0]
        unconditional = jnp.where(context_BxL, mask, x_BxL)
        t_B = jnp.broadcast_to(jnp.asarray(t_B, jnp.float32), (batch,))
        both = denoiser(jnp.concatenate([x_BxL, unconditional]), jnp.concatenate([t_B, t_B])).astype(jnp.float32)
        return (1.0 + scale) * both[:batch] - scale * both[batch:]

    return call
