"""The masked/Gaussian duality (DUO: Sahoo et al., 2025, "The Diffusion Duality", arXiv:2506.10892).

A clean token k gets the latent w_t = a_t e_k + s_t eps (eps ~ N(0, I_V), a_t^2 + s_t^2 = 1, SNR
mu_t = a_t / s_t) and stays visible while argmax(w_t) = k, else it becomes the mask. That holds
iff mu_t > Y = max_{j != k} eps_j - eps_k, so the induced schedule is alpha_t = F_Y(mu_t), with
F_Y(mu) = int phi(e) Phi(mu + e)^(V-1) de strictly increasing (`keep_probability`); every
schedule is the projection of the SNR mu_t = F_Y^-1(alpha_t) (`snr_from_mask_prob`).

`coupled_pair` draws (z_t, z_s), s < t, from shared per-token noise by one of COUPLINGS, with
row b's noise from fold_in(key, b) in each: 'uniform' (one uniform per token, O(B L), z_t is
`process.forward_mask` with the same uniforms), 'gaussian' (Y from e_k and the inverse-CDF
maximum of V - 1 normals, O(B L)) or 'literal' (the argmax of the V-dimensional latent, O(B L V),
for small vocabularies and tests). All three have the same joint law, and z_s reveals a
superset of z_t in every draw. docs/duality.md has the derivation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.special import log_ndtr, ndtr, ndtri
from scipy import special

COUPLINGS = ("uniform", "gaussian", "literal")

# Trapezoid grid over the N(0, 1) variable e of the integral; phi(9) ~ 1e-18, so [-9, 9] loses
# nothing in float32, and 2048 intervals resolve the max-of-normals density (std >= 0.3).
_E_HALF_WIDTH = 9.0
_E_POINTS = 2049
_MU_BRACKET = 40.0  # |mu| beyond which 1 - F_Y or F_Y is below float32's range for any V


def log_normal_cdf(z: Array) -> Array:
    """log Phi(z), accurate in float32 for both signs (log1p(-Phi(-z)) for z > 0, where
    `log_ndtr` takes the log of a float32 number near 1 and loses ~1e-3 relative precision)."""
    return jnp.where(z > 0, jnp.log1p(-ndtr(-jnp.abs(z))), log_ndtr(jnp.minimum(z, 0.0)))


def _quadrature(mu: Array, vocab_size: int) -> tuple[Array, Array, Array]:
    """(F_Y, 1 - F_Y, dF_Y/dmu) at mu by the trapezoid rule over e ~ N(0, 1); elementwise in mu.

    F_Y(mu) = int phi(e) C(mu + e) de with C = Phi^(V-1), kept as log C; the derivative uses
    C' = (V - 1) C phi / Phi, with phi / Phi formed in log space.
    """
    if vocab_size < 2:
        raise ValueError(f"vocab_size={vocab_size}: the duality needs at least 2 tokens")
    mu = jnp.asarray(mu)
    dtype = jnp.result_type(mu.dtype, jnp.float32)
    e = jnp.linspace(-_E_HALF_WIDTH, _E_HALF_WIDTH, _E_POINTS, dtype=dtype)
    step = e[1] - e[0]
    w = jnp.exp(-0.5 * e * e) / jnp.sqrt(2.0 * jnp.pi).astype(dtype) * step
    w = w.at[0].multiply(0.5).at[-1].multiply(0.5)
    grid = (1,) * mu.ndim + (_E_POINTS,)  # e and w broadcast against mu[..., None] explicitly
    e, w = e.reshape(grid), w.reshape(grid)
    z = mu.astype(dtype)[..., None] + e
    log_phi = log_normal_cdf(z)
    log_c = (vocab_size - 1) * log_phi  # log P(M < mu + e), M the max of V - 1 normals
    log_pdf = -0.5 * z * z - 0.5 * jnp.log(2.0 * jnp.pi).astype(dtype)
    density = (vocab_size - 1) * jnp.exp(log_c + log_pdf - log_phi)
    return (w * jnp.exp(log_c)).sum(-1), (w * -jnp.expm1(log_c)).sum(-1), (w * density).sum(-1)


@functools.partial(jax.jit, static_argnums=1)
def keep_probability(mu: Array, vocab_size: int) -> Array:
    """F_Y(mu) = P(argmax(mu e_k + eps) = k): the probability a token is still visible at SNR mu.

    mu: float[...] (+-inf allowed); returns the same shape. The integrand is formed in log space
    (never Phi^(V-1) directly), so it holds for any V.
    """
    return _quadrature(mu, vocab_size)[0]


@functools.partial(jax.jit, static_argnums=1)
def mask_probability(mu: Array, vocab_size: int) -> Array:
    """1 - F_Y(mu), computed without cancellation (accurate where the mask probability is tiny)."""
    return _quadrature(mu, vocab_size)[1]


@functools.partial(jax.jit, static_argnums=1)
def keep_density(mu: Array, vocab_size: int) -> Array:
    """dF_Y/dmu, the density of Y at mu (> 0: F_Y is strictly increasing)."""
    return _quadrature(mu, vocab_size)[2]


@functools.lru_cache(maxsize=16)
def _logit_table(vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(logit F_Y(mu), mu) on a float64 grid of mu in [-15, 15] (host, once per V): Newton's start."""
    mu = np.linspace(-15.0, 15.0, 1201)
    e = np.linspace(-_E_HALF_WIDTH, _E_HALF_WIDTH, _E_POINTS)
    w = np.exp(-0.5 * e * e) / np.sqrt(2.0 * np.pi) * (e[1] - e[0])
    w[0] *= 0.5
    w[-1] *= 0.5
    log_c = (vocab_size - 1) * special.log_ndtr(mu[:, None] + e)
    keep, masked = (w * np.exp(log_c)).sum(-1), (w * -np.expm1(log_c)).sum(-1)
    logit = np.log(np.maximum(keep, 1e-300)) - np.log(np.maximum(masked, 1e-300))
    ok = np.concatenate([[True], np.diff(logit) > 0])  # drop saturated (non-increasing) ends
    return logit[ok], mu[ok]


@functools.partial(jax.jit, static_argnums=(1, 2))
def _snr_from_logit(target: Array, vocab_size: int, newton_steps: int) -> Array:
    """mu with logit F_Y(mu) = target: a start interpolated from a float64 table, then Newton steps."""
    table_logit, table_mu = _logit_table(vocab_size)
    mu = jnp.interp(target, jnp.asarray(table_logit, target.dtype), jnp.asarray(table_mu, target.dtype))

    def newton(_, mu):
        # logit F = log F - log(1 - F), each side from its cancellation-free sum; d logit F = F' / (F (1 - F)).
        keep, masked, density = _quadrature(mu, vocab_size)
        value, slope = jnp.log(keep) - jnp.log(masked), density / (keep * masked)
        return jnp.clip(mu - (value - target) / slope, -_MU_BRACKET, _MU_BRACKET)

    return jax.lax.fori_loop(0, newton_steps, newton, mu)


def snr_from_mask_prob(mask_prob: Array, vocab_size: int, newton_steps: int = 3) -> Array:
    """mu = F_Y^-1(1 - mask_prob): the Gaussian SNR whose projection masks with `mask_prob`.

    Solves logit F_Y(mu) = log(1 - m) - log(m), which keeps relative precision where m is tiny
    (logit F_Y is smooth and increasing; a tabulated start and `newton_steps` Newton steps reach
    float32 accuracy). mask_prob 0 gives +inf and 1 gives -inf. float[...] in, same shape out.
    """
    m = jnp.asarray(mask_prob, jnp.result_type(jnp.asarray(mask_prob).dtype, jnp.float32))
    m_in = jnp.where((m > 0) & (m < 1), m, 0.5)
    mu = _snr_from_logit(jnp.log1p(-m_in) - jnp.log(m_in), vocab_size, newton_steps)
    return jnp.where(m <= 0.0, jnp.inf, jnp.where(m >= 1.0, -jnp.inf, mu))


def signal_and_noise(mu: Array) -> tuple[Array, Array]:
    """(a, s) with a / s = mu and a^2 + s^2 = 1 (variance preserving); mu = +-inf gives (+-1, 0)."""
    mu = jnp.asarray(mu)
    big = jnp.abs(mu) > 1.0
    inv = jnp.where(big, 1.0 / jnp.where(big, mu, 1.0), 0.0)  # 1/mu where |mu| > 1 (0 at +-inf)
    root_small = jnp.sqrt(1.0 + jnp.where(big, 0.0, mu) ** 2)
    root_big = jnp.sqrt(1.0 + inv**2)
    a = jnp.where(big, jnp.sign(mu) / root_big, mu / root_small)
    s = jnp.where(big, jnp.abs(inv) / root_big, 1.0 / root_small)
    return a, s


def max_of_normals(u: Array, count: int) -> Array:
    """The max of `count` i.i.d. N(0, 1) by inverse CDF from u ~ U(0, 1): Phi^-1(u^(1/count)).

    Computed as -Phi^-1(-expm1(log(u) / count)), so u^(1/count) close to 1 keeps its precision.
    """
    return -ndtri(-jnp.expm1(jnp.log(u) / count))


def _rows(key: Array, batch: int, fn) -> Array:
    """Stacks fn(fold_in(key, b)) over rows b, so a row's noise never depends on the batch split."""
    return jax.vmap(lambda b: fn(jax.random.fold_in(key, b)))(jnp.arange(batch))


@functools.partial(jax.jit, static_argnames=("method", "vocab_size"))
def coupled_keep(
    key: Array, tokens_BxL: Array, mask_prob_t_B: Array, mask_prob_s_B: Array, *, method: str, vocab_size: int
) -> tuple[Array, Array]:
    """(visible_t, visible_s), bool[B, L], of a coupled pair from shared per-token noise.

    mask_prob_*_B: float[B] = 1 - alpha at each row's times (mask_prob_s <= mask_prob_t for s < t).
    `method` is one of COUPLINGS (module docstring); all give the same joint law and
    visible_t implies visible_s in every draw whenever mask_prob_s <= mask_prob_t.
    """
    batch, length = tokens_BxL.shape
    m_t, m_s = mask_prob_t_B[:, None], mask_prob_s_B[:, None]
    if method == "uniform":
        u = _rows(key, batch, lambda k: jax.random.uniform(k, (length,)))
        return u >= m_t, u >= m_s
    if method == "gaussian":

        def noise(k):
            k_e, k_u = jax.random.split(k)
            tiny = jnp.finfo(jnp.float32).tiny
            return jax.random.normal(k_e, (length,)), jax.random.uniform(k_u, (length,), minval=tiny, maxval=1.0)

        e_k, u = jax.vmap(lambda b: noise(jax.random.fold_in(key, b)))(jnp.arange(batch))
        y = max_of_normals(u, vocab_size - 1) - e_k  # [B, L]: visible at SNR mu iff mu > Y
        mu_t, mu_s = snr_from_mask_prob(jnp.stack([m_t, m_s]), vocab_size)
        return mu_t > y, mu_s > y
    if method == "literal":
        eps = _rows(key, batch, lambda k: jax.random.normal(k, (length, vocab_size)))  # [B, L, V]
        onehot = jax.nn.one_hot(jnp.clip(tokens_BxL, 0, vocab_size - 1), vocab_size, dtype=eps.dtype)

        def visible(mu):
            a, s = signal_and_noise(mu)
            w = a[..., None] * onehot + s[..., None] * eps
            return jnp.argmax(w, axis=-1) == jnp.clip(tokens_BxL, 0, vocab_size - 1)

        mu_t, mu_s = snr_from_mask_prob(jnp.stack([m_t, m_s]), vocab_size)
        return visible(mu_t), visible(mu_s)
    raise ValueError(f"unknown coupling {method!r}; choose one of {', '.join(COUPLINGS)}")


@functools.partial(jax.jit, static_argnames=("mask", "pad", "method", "vocab_size"))
def coupled_pair(
    key: Array,
    tokens_BxL: Array,
    mask_prob_t_B: Array,
    mask_prob_s_B: Array,
    *,
    mask: int,
    pad: int | None,
    method: str = "uniform",
    vocab_size: int,
) -> tuple[Array, Array]:
    """(z_t, z_s), int[B, L]: x_0 masked at times t > s along one shared noise path.

    Padding (id `pad`) is never masked. With method='uniform', z_t equals
    `process.forward_mask(tokens, mask_prob_t, u, mask, pad)` for the same per-row uniforms.
    """
    visible_t, visible_s = coupled_keep(key, tokens_BxL, mask_prob_t_B, mask_prob_s_B, method=method, vocab_size=vocab_size)
    if pad is not None:
        is_pad = tokens_BxL == pad
        visible_t, visible_s = visible_t | is_pad, visible_s | is_pad
    return jnp.where(visible_t, tokens_BxL, mask), jnp.where(visible_s, tokens_BxL, mask)
