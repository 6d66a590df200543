"""The energy calling convention, `EnergyModel`, and the log-space quantities built on them.

An `Energy` maps candidates x_0 and their partly masked x_t to one scalar per sequence:

    (x0_NxL int32, xt_NxL int32, denoiser_logp_N float32) -> E_N float32

where `denoiser_logp_N` = log p_theta(x0 | xt) (`denoiser_log_prob`). `log_mean_exp` and
`snis_upper` are the low and high Monte Carlo values of a log normaliser log E[e^a].
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import Array

Energy = Callable[[Array, Array, Array], Array]
EnergyApply = Callable[[Any, Array, Array, Array], Array]


@dataclasses.dataclass(frozen=True)
class EnergyModel:
    """An energy function and its params.

    kind: 'coar' (carry-over AR), 'ar' (plain AR), 'nce' (trained energy network) or a test name.
    normalised: True when Z(x_t) = 1 exactly for every x_t (coAR), so likelihoods are bounds.
    """

    kind: str
    apply: EnergyApply
    params: Any
    normalised: bool = False

    def bind(self, params: Any = None) -> Energy:
        """The `Energy` for `params` (default: the stored ones); call it inside jit with traced params."""
        params = self.params if params is None else params
        return lambda x0, xt, logp: self.apply(params, x0, xt, logp)


def denoiser_log_prob(logits_NxLxV: Array, x0_NxL: Array, xt_NxL: Array, mask: int) -> Array:
    """float32[N]: log p_theta(x0 | xt) = sum over masked l of log softmax(logits)[l, x0_l].

    Carry-over: positions unmasked in xt contribute 0 (x0 must equal xt there). The sum is of
    log-probabilities, never of probabilities (a product of L probabilities underflows float32).
    """
    logp = jax.nn.log_softmax(logits_NxLxV.astype(jnp.float32), axis=-1)
    safe = jnp.clip(x0_NxL, 0, logp.shape[-1] - 1)  # unscored positions may hold any id (even the mask)
    picked = jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    return jnp.where(xt_NxL == mask, picked, 0.0).sum(-1)


def log_mean_exp(a_NxB: Array, axis: int = 0) -> Array:
    """log (1/n sum_j exp(a_j)) along `axis` (n = its length): the MC log-normaliser log Z_n.

    As an estimate of log E[exp(a)] it is biased low (Jensen): about -Var(w) / (2 n Z^2) for
    large n (w = e^a, Z = E[w]); docs/edlm.md gives values for log-normal weights.
    """
    n = a_NxB.shape[axis]
    return jax.nn.logsumexp(a_NxB, axis=axis) - jnp.log(jnp.float32(n))


def snis_upper(a_NxB: Array, axis: int = 0) -> Array:
    """sum_j softmax(a)_j a_j along `axis`: the self-normalised estimate of E_{p e^a / Z}[a].

    E_{p e^a/Z}[a] >= log Z (KL >= 0), so this is an upper value for log Z as n -> infinity
    (not for small n: at n = 1 it equals `log_mean_exp`). It is never below `log_mean_exp`.
    """
    w = jax.nn.softmax(a_NxB, axis=axis)
    return (w * a_NxB).sum(axis)
