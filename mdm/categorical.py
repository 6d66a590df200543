"""Categorical sampling that is exact in float32, plus logit filters (temperature, top-k, top-p).

Every sampler draws its tokens through `sample_categorical`. The default method, "exact", is an
exponential race whose noise comes from 48 random bits per draw, so it has no float32 tail
truncation. The float32 Gumbel-max of `jax.random.categorical(mode="low")` stays selectable as
"gumbel_f32" to demonstrate that truncation: its uniforms sit on a 2^-23 grid, so its Exp(1)
noise E = -log u never goes below ~2^-23. A token whose weight is r times the rest's is then drawn
at x / (e^x - 1) of its rate, x = 2^-23 / r (7.5% at r = 2^-25), which lowers the effective
temperature (Zheng et al., "Masked Diffusion Models are Secretly Time-Agnostic Masked Models and
Exploit Inaccurate Categorical Sampling", arXiv:2409.02908, show the effect on MDM samples).

With JAX's default threefry layout the same key gives "exact" and "gumbel_f32" the same leading
bits (a JAX implementation detail, not relied on), so the two usually draw the same index and
differ on the rare tail events the float32 path truncates: a paired demonstration of the bias.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

METHODS = ("exact", "gumbel_f32", "gumbel_high")

_HALF = np.uint32(1 << 23)  # hi >= 2^23  <=>  u >= 1/2
_TOP = np.uint32((1 << 24) - 1)
_TWO_M24 = np.float32(2.0**-24)
_TWO_M48 = np.float32(2.0**-48)


def exponential_from_bits(hi: Array, lo: Array) -> Array:
    """float32 Exp(1) noise from 24-bit integers hi, lo (uint32 in [0, 2^24), same shape).

    The pair is the 48-bit integer n = hi 2^24 + lo, read as the uniform u = (n + 1/2) 2^-48 in
    (0, 1). E = -log u when u < 1/2 (large E), and E = -log1p(-v) with v = 1 - u = (m + 1/2) 2^-48,
    m = 2^48 - 1 - n, when u >= 1/2 (small E). v is formed from the complemented integers, never
    as 1 - u in float, so both tails keep float32 relative precision.
    """
    small = hi >= _HALF
    hi = jnp.where(small, _TOP - hi, hi).astype(jnp.float32)
    lo = jnp.where(small, _TOP - lo, lo).astype(jnp.float32)
    w = hi * _TWO_M24 + (lo + 0.5) * _TWO_M48  # u or v, in (0, 1/2]
    return jnp.where(small, -jnp.log1p(-w), -jnp.log(w))


def exponential_noise(key: Array, shape: tuple[int, ...]) -> Array:
    """float32[*shape] i.i.d. Exp(1) noise from two 24-bit uniforms per draw (48 random bits).

    Resolution: the uniform u lies on a 2^-48 grid (cell midpoints). Small tail: the smallest
    value is 2^-49 ~ 1.8e-15 and P(E < x) = x (1 + O(2^-48 / x)) for x >= 2^-48, e.g. to 4e-6
    at x = 2^-30. Large tail: the largest value is 49 ln 2 ~ 33.96 and P(E > y) = e^-y
    (1 + O(2^-48 e^y)), to 1e-3 up to y ~ 26 and coarser up to ~33 (u ~ 2^-47). Each value
    carries float32 relative precision (a few ulp). The float32 Gumbel path
    (`jax.random.gumbel(mode="low")`) stops at E ~ 2^-23 and (bar one atom) E ~ 15.9 instead.
    """
    bits = jax.random.bits(key, (2, *shape), jnp.uint32) >> 8
    return exponential_from_bits(bits[0], bits[1])


def sample_categorical(key: Array, logits: Array, *, method: str = "exact", axis: int = -1) -> Array:
    """int32 index drawn from softmax(logits) along `axis`; shape = logits.shape without `axis`.

    logits: float32 log-weights, unnormalised; -inf entries are never drawn (a row that is all
    -inf has no law and gives index 0). `method` must be static under jit:

    - "exact": exponential race argmax(logits - log E), E i.i.d. `exponential_noise`. With
      weights w_i = exp(logits_i), E_i / w_i ~ Exp(w_i), and the smallest of independent
      exponentials is index i with probability w_i / sum(w). The only departures are float32
      ones. (a) Noise grid: the 48-bit uniform scales the rate of a token whose weight is r times
      the rest's by x / (2 sinh(x / 2)) ~ 1 - x^2 / 24, x = 2^-48 / r: < 1e-6 for r > 1e-12 (vs a
      total loss below r ~ 1e-7 for "gumbel_f32"). (b) E and log E carry a few ulp of rounding,
      a relative change of each weight of at most ~|log E| 2^-24 <~ 2e-6, the size of the float32
      rounding of the logits themselves. (c) Rounding the final scores is monotone, so it only
      creates ties (taken by the lower index), with probability of the same order. So the law is
      that of the logits as rounded to float32, to ~1e-6 relative, with no tail truncation.
    - "gumbel_f32": `jax.random.categorical(mode="low")`, the standard float32 Gumbel-max: its
      uniforms lie on a 2^-23 grid, so E >= ~2^-23 and tokens with relative weight below ~1e-7
      are under-drawn (biased; kept to demonstrate the bias).
    - "gumbel_high": `jax.random.categorical(mode="high")`: small-E resolution 2^-46, large E
      capped at 23 ln 2 ~ 15.9; about twice the cost of "low".
    """
    if method == "exact":
        noise = exponential_noise(key, jnp.shape(logits))
        return jnp.argmax(logits - jnp.log(noise), axis=axis).astype(jnp.int32)
    if method == "gumbel_f32":
        return jax.random.categorical(key, logits, axis=axis, mode="low").astype(jnp.int32)
    if method == "gumbel_high":
        return jax.random.categorical(key, logits, axis=axis, mode="high").astype(jnp.int32)
    raise ValueError(f"unknown categorical method {method!r}; choose one of {', '.join(METHODS)}")


def filter_logits(logits: Array, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Array:
    """logits[..., V] / temperature, then top-k, then top-p; removed entries become -inf.

    All three settings are static Python numbers (validated here, so not traced).
    - temperature > 0 (finite). T = 0 is not a temperature: greedy decoding is `argmax(logits)`.
    - top_k: 0 = off, else keep the entries >= the k-th largest value. Ties at the boundary are
      all kept, so more than k entries survive only on exact ties, and the result does not
      depend on the vocabulary order.
    - top_p in (0, 1], 1 = off: on softmax of the (temperature-scaled, top-k filtered) logits,
      keep the smallest set of highest-probability entries whose mass is >= top_p, always at
      least one; entries tied with the last one kept are also kept (as for top-k).
    """
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature={temperature} must be a finite number > 0 (for greedy decoding use argmax)")
    if not (isinstance(top_k, (int, np.integer)) and top_k >= 0):
        raise ValueError(f"top_k={top_k} must be an integer >= 0 (0 = off)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must lie in (0, 1] (1 = off)")
    logits = logits / temperature
    neg_inf = jnp.array(-jnp.inf, logits.dtype)
    if 0 < top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits >= kth, logits, neg_inf)
    if top_p < 1:
        desc = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
        probs = jax.nn.softmax(desc.astype(jnp.float32), axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1)[..., :-1]
        mass_before = jnp.concatenate([jnp.zeros_like(probs[..., :1]), mass_before], axis=-1)
        kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)
        last = jnp.take_along_axis(desc, kept - 1, axis=-1)
        logits = jnp.where(logits >= last, logits, neg_inf)
    return logits
