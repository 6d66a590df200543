"""AR energies from the library's AR model: plain AR and carry-over AR (coAR).

Plain AR:   E(x0, xt) = -log p_AR(x0) + log p_theta(x0 | xt)
            => p_theta e^-E is proportional to p_AR(x0) on the completions of xt; Z = the AR mass
            of that set (not 1).
coAR:       E(x0, xt) = -sum_{l masked in xt} log p_AR(x0_l | x0_<l) + log p_theta(x0 | xt)
            => p_theta e^-E = prod_{l masked} p_AR(x0_l | x0_<l), which sums to exactly 1 over the
            completions (sum the last masked position out first, then the one before, ...): Z = 1.

The AR model is the library's causal transformer, whose input is the sequence shifted right
with the mask id as the start symbol, so all L positions are scored (none is left out as in
the official code's position 0). Its V outputs never include the mask, so no logit needs
suppressing. The diffusion term is log p_theta, a log-probability (a product of per-position
probabilities would underflow).
Cost: one causal forward pass per candidate, no cache needed.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import Array

from mdm import process
from mdm.energy.model import EnergyModel

ArLogits = Callable[[Array], Array]  # inputs int[N, L] (start symbol, x0[:, :-1]) -> logits float[N, L, V]


def ar_log_probs(ar_logits: ArLogits, x0_NxL: Array, start: int) -> Array:
    """float32[N, L]: log p_AR(x0_l | x0_<l) for every l (l = 0 conditions on the start symbol)."""
    inputs = jnp.concatenate([jnp.full_like(x0_NxL[:, :1], start), x0_NxL[:, :-1]], axis=1)
    logp = jax.nn.log_softmax(ar_logits(inputs).astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, x0_NxL[..., None], axis=-1)[..., 0]


def ar_energy(
    ar_logits: ArLogits, x0_NxL: Array, xt_NxL: Array, denoiser_logp_N: Array, *, mask: int, carry_over: bool = True
) -> Array:
    """float32[N]: the coAR (carry_over=True) or plain AR energy of candidates x0 given xt.

    mask: the mask id (also the AR model's start symbol). denoiser_logp_N: log p_theta(x0 | xt).
    """
    logp_ar = ar_log_probs(ar_logits, x0_NxL, mask)
    if carry_over:
        logp_ar = jnp.where(xt_NxL == mask, logp_ar, 0.0)
    return -logp_ar.sum(-1) + denoiser_logp_N.astype(jnp.float32)


def make_ar_energy(model, *, params=None, carry_over: bool = True) -> EnergyModel:
    """An `EnergyModel` from a causal `Transformer` (an AR run's model) and its params.

    coAR (carry_over=True, the default and the official code's default) is normalised: Z = 1.
    """
    if not model.cfg.causal:
        raise ValueError("the AR energy needs a causal model (an objective='ar' run)")
    mask = process.mask_id(model.cfg.vocab_size)

    def apply(p, x0, xt, logp):
        return ar_energy(lambda inputs: model.apply({"params": p}, inputs), x0, xt, logp, mask=mask, carry_over=carry_over)

    return EnergyModel("coar" if carry_over else "ar", apply, params, normalised=carry_over)
