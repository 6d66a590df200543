"""Energy-based residual heads on a frozen masked-diffusion denoiser (EDLM, Xu et al., 2024).

The corrected denoiser is p(x_0 | x_t) = p_theta(x_0 | x_t) exp(-E(x_0, x_t)) / Z(x_t), with
p_theta the factorised MDM denoiser (carry-over: positions unmasked in x_t are kept) and E one
scalar per sequence. Every energy here has one calling convention, `Energy`:

    (x0_NxL int32, xt_NxL int32, denoiser_logp_N float32) -> E_N float32

where `denoiser_logp_N` = log p_theta(x0 | xt), the sum over the masked positions of xt of the
denoiser's log-probabilities (never probabilities; pitfalls §4). An `EnergyModel` pairs a pure
`apply(params, x0, xt, logp)` with its params, so samplers can take the params as jit
arguments. Modules:

- `autoregressive`: the AR and carry-over AR (coAR, Z = 1 exactly) energies from an AR model.
- `network`: the NCE energy network (the library's backbone reading x_t and x_0).
- `likelihood`: a discrete-step NLL bound of the energy-corrected model beside the MDM's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import Array

Energy = Callable[[Array, Array, Array], Array]
EnergyApply = Callable[[Any, Array, Array, Array], Array]

KINDS = ("ar", "coar", "nce")


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

    Carry-over: positions unmasked in xt contribute 0 (x0 must equal xt there).
    """
    logp = jax.nn.log_softmax(logits_NxLxV.astype(jnp.float32), axis=-1)
    safe = jnp.clip(x0_NxL, 0, logp.shape[-1] - 1)  # unscored positions may hold any id (even the mask)
    picked = jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    return jnp.where(xt_NxL == mask, picked, 0.0).sum(-1)


def log_mean_exp(a_NxB: Array, axis: int = 0) -> Array:
    """log (1/n sum_j exp(a_j)) along `axis` (n = its length): the MC log-normaliser log Z_n.

    As an estimate of log E[exp(a)] it is biased low (Jensen): about -Var(w) / (2 n Z^2) for
    large n, e.g. -0.50, -0.29, -0.088 at n = 1, 2, 8 for log-normal weights with sigma = 1.
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


__all__ = ["Energy", "EnergyApply", "EnergyModel", "KINDS", "denoiser_log_prob", "log_mean_exp", "snis_upper"]
