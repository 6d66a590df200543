"""The masked/Gaussian duality: F_Y against float64 quadrature, closed forms, Monte Carlo argmax and
published cache values; its inverse; and the coupled pairs (marginals, monotonicity, joint law)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize, special, stats

from mdm import duality, process
from mdm.schedules import make_schedule


def _f_y_float64(mu: float, vocab: int, masked: bool = False) -> float:
    """Independent reference: adaptive float64 quadrature of int phi(e) Phi(mu + e)^(V-1) de."""

    def integrand(e):
        log_c = (vocab - 1) * special.log_ndtr(mu + e)
        pdf = np.exp(-0.5 * e * e) / np.sqrt(2.0 * np.pi)
        return pdf * (-np.expm1(log_c) if masked else np.exp(log_c))

    return integrate.quad(integrand, -14, 14, epsabs=0, epsrel=1e-12, limit=400)[0]


@pytest.mark.parametrize("vocab", [2, 3, 100, 50257])
def test_keep_probability_matches_float64_quadrature(vocab):
    mus = np.array([-3.0, -0.5, 0.0, 1.0, 2.529, 4.229, 5.945, 8.0])
    keep = np.asarray(duality.keep_probability(jnp.asarray(mus, jnp.float32), vocab), np.float64)
    masked = np.asarray(duality.mask_probability(jnp.asarray(mus, jnp.float32), vocab), np.float64)
    ref_keep = np.array([_f_y_float64(m, vocab) for m in mus])
    ref_masked = np.array([_f_y_float64(m, vocab, masked=True) for m in mus])
    # float32 quadrature, relative error in both tails (measured <= 5e-7).
    np.testing.assert_allclose(keep, ref_keep, rtol=2e-6)
    np.testing.assert_allclose(masked, ref_masked, rtol=2e-6)


def test_keep_probability_closed_forms():
    mus = jnp.linspace(-4.0, 4.0, 17)
    # V = 2: Y = eps_j - eps_k ~ N(0, 2), so F_Y and its density are those of N(0, 2).
    np.testing.assert_allclose(
        duality.keep_probability(mus, 2), stats.norm.cdf(np.asarray(mus) / np.sqrt(2.0)), rtol=1e-6, atol=1e-8
    )
    np.testing.assert_allclose(duality.keep_density(mus, 2), stats.norm.pdf(np.asarray(mus), scale=np.sqrt(2.0)), rtol=2e-6)
    # Any V: the density is the derivative of F_Y (central differences of the float64 reference).
    for vocab, mu in ((100, 2.0), (50257, 4.229)):
        h = 1e-4
        fd = (_f_y_float64(mu + h, vocab) - _f_y_float64(mu - h, vocab)) / (2 * h)
        assert abs(float(duality.keep_density(mu, vocab)) / fd - 1) < 1e-5
    # mu = 0: every index is equally likely to be the argmax.
    for vocab in (3, 7, 1000):
        np.testing.assert_allclose(float(duality.keep_probability(0.0, vocab)), 1.0 / vocab, rtol=1e-6)
    assert float(duality.keep_probability(jnp.inf, 50)) == 1.0 and float(duality.keep_probability(-jnp.inf, 50)) == 0.0


@pytest.mark.parametrize("vocab,mu", [(3, -0.5), (3, 1.5), (20, 0.5), (20, 3.0)])
def test_keep_probability_matches_monte_carlo_argmax(vocab, mu):
    """The literal projection: P(argmax(mu e_k + eps) = k) over 4e5 sampled latents, within 4.5 s.e."""
    n = 400_000
    eps = jax.random.normal(jax.random.PRNGKey(vocab + int(10 * mu)), (n, vocab))
    keep = np.asarray(jnp.argmax(eps.at[:, 0].add(mu), axis=-1) == 0)
    p = float(duality.keep_probability(mu, vocab))
    assert abs(keep.mean() - p) < 4.5 * np.sqrt(p * (1 - p) / n), (keep.mean(), p)


def test_published_calibration_values_for_gpt2_vocabulary():
    """DUO's cached values of alpha = F_Y(exp(-gamma / 2)) (arXiv:2506.10892, its GPT-2 integral cache),
    and the SNR mu with F_Y(mu) = alpha from an independent computation (3 decimals), V = 50,257."""
    vocab = 50257
    cache = {-4.0: 0.998694, -1.0: 0.006206}  # gamma -> alpha^mask, DUO's cache (6 digits)
    for gamma, alpha in cache.items():
        assert abs(float(duality.keep_probability(jnp.exp(-0.5 * jnp.asarray(gamma)), vocab)) - alpha) < 2e-6
    table = {0.01: 1.827, 0.05: 2.529, 0.50: 4.229, 0.95: 5.945, 0.99: 6.663}  # alpha -> mu (3 decimals)
    mus = duality.snr_from_mask_prob(1.0 - jnp.asarray(list(table)), vocab)
    np.testing.assert_allclose(np.asarray(mus), list(table.values()), atol=6e-4)


@pytest.mark.parametrize("vocab", [2, 100, 50257])
def test_inverse_matches_float64_root_and_round_trips(vocab):
    masks = np.array([1e-6, 1e-3, 0.05, 0.3, 0.5, 0.7, 0.95, 0.999, 1 - 1e-5])
    mus = np.asarray(duality.snr_from_mask_prob(jnp.asarray(masks, jnp.float32), vocab), np.float64)
    ref = [
        optimize.brentq(lambda x, m=m: _f_y_float64(x, vocab, masked=True) - m, -25, 25, xtol=1e-12)
        for m in np.asarray(np.float32(masks), np.float64)
    ]
    np.testing.assert_allclose(mus, ref, atol=3e-6)
    # mu -> F_Y -> mu, and m -> mu -> 1 - F_Y -> m (relative, both tails).
    back = np.asarray(duality.mask_probability(jnp.asarray(mus, jnp.float32), vocab), np.float64)
    np.testing.assert_allclose(back, np.float32(masks), rtol=5e-6)
    # mu -> 1 - F_Y -> mu where 1 - F_Y is the small side (F_Y >= 1/2).
    grid = jnp.linspace(-3.0, 7.0, 21)
    upper = np.asarray(duality.keep_probability(grid, vocab)) >= 0.5
    again = duality.snr_from_mask_prob(duality.mask_probability(grid, vocab), vocab)
    np.testing.assert_allclose(np.asarray(again)[upper], np.asarray(grid)[upper], atol=2e-4)
    edges = duality.snr_from_mask_prob(jnp.asarray([0.0, 1.0]), vocab)
    assert np.asarray(edges).tolist() == [np.inf, -np.inf]


@pytest.mark.parametrize("name", ["linear", "cosine", "polynomial"])
def test_any_schedule_is_a_gaussian_snr_and_back(name):
    schedule, vocab = make_schedule(name, eps=1e-3), 256
    t = jnp.linspace(0.01, 1.0, 25)
    mu = duality.snr_from_mask_prob(schedule.mask_prob(t), vocab)
    np.testing.assert_allclose(duality.keep_probability(mu, vocab), schedule.alpha(t), rtol=1e-5, atol=1e-7)
    assert np.all(np.diff(np.asarray(mu)) < 0)  # SNR falls as alpha falls
    a, s = duality.signal_and_noise(mu)
    np.testing.assert_allclose(a**2 + s**2, 1.0, rtol=1e-6)
    np.testing.assert_allclose(a / s, mu, rtol=1e-5)
    # alpha(0) = 1 is the clean end: infinite SNR, a = 1, s = 0.
    mu0 = duality.snr_from_mask_prob(schedule.mask_prob(jnp.zeros((), jnp.float32)), vocab)
    a0, s0 = duality.signal_and_noise(mu0)
    assert float(mu0) == np.inf and float(a0) == 1.0 and float(s0) == 0.0


def test_max_of_normals_sampler_matches_brute_force():
    """The 'gaussian' coupling's inverse-CDF maximum of 999 normals vs the brute-force maximum: two-sample KS."""
    n = 20_000
    u = jax.random.uniform(jax.random.PRNGKey(0), (n,), minval=1e-30, maxval=1.0)
    fast = np.asarray(duality.max_of_normals(u, 999))
    brute = np.asarray(jnp.max(jax.random.normal(jax.random.PRNGKey(1), (n, 999)), axis=-1))
    assert stats.ks_2samp(fast, brute).pvalue > 1e-3
    assert abs(fast.mean() - 3.242) < 0.01 and abs(fast.std() - 0.353) < 0.01  # that maximum's mean and std


# -- coupled pairs ------------------------------------------------------------------------------

MASK = 50


def _pairs(method, vocab, mask_t, mask_s, rows=1000, length=64, seed=0):
    key = jax.random.PRNGKey(seed)
    tokens = jax.random.randint(jax.random.fold_in(key, 1), (rows, length), 0, vocab)
    m_t = jnp.full((rows,), mask_t, jnp.float32)
    m_s = jnp.full((rows,), mask_s, jnp.float32)
    z_t, z_s = duality.coupled_pair(key, tokens, m_t, m_s, mask=MASK, pad=None, method=method, vocab_size=vocab)
    return np.asarray(tokens), np.asarray(z_t), np.asarray(z_s)


def _cells(z_t, z_s):
    """Counts of (visible at t and s, visible only at s, masked at both, visible only at t)."""
    vt, vs = z_t != MASK, z_s != MASK
    return np.array([(vt & vs).sum(), (~vt & vs).sum(), (~vt & ~vs).sum(), (vt & ~vs).sum()])


@pytest.mark.parametrize("method", duality.COUPLINGS)
@pytest.mark.parametrize("mask_t,mask_s", [(0.7, 0.2), (0.95, 0.9), (0.3, 0.0)])
def test_coupled_pair_marginals_joint_law_and_monotonicity(method, mask_t, mask_s):
    tokens, z_t, z_s = _pairs(method, 5, mask_t, mask_s, seed=int(100 * mask_t))
    cells = _cells(z_t, z_s)
    assert cells[3] == 0  # z_s reveals a superset of z_t in every draw
    assert np.all((z_t == tokens) | (z_t == MASK)) and np.all((z_s == tokens) | (z_s == MASK))
    n = cells.sum()
    # Each marginal masks with probability 1 - alpha (z-tests at 4.5 s.e.).
    for frac, p in (((z_t == MASK).mean(), mask_t), ((z_s == MASK).mean(), mask_s)):
        assert abs(frac - p) <= 4.5 * np.sqrt(p * (1 - p) / n) + 1e-4, (frac, p)
    # The joint law of (z_t, z_s) per token: (alpha_t, alpha_s - alpha_t, 1 - alpha_s), chi-square.
    expected = np.array([1 - mask_t, mask_t - mask_s, mask_s]) * n
    keep = expected > 0
    assert cells[:3][~keep].sum() == 0
    if keep.sum() > 1:
        assert stats.chisquare(cells[:3][keep], expected[keep]).pvalue > 1e-3


def test_the_three_constructions_agree_on_pair_statistics():
    """Contingency tables of (cell counts, and the pattern of two neighbouring positions) across methods."""
    tables, patterns = [], []
    for i, method in enumerate(duality.COUPLINGS):
        _, z_t, z_s = _pairs(method, 5, 0.6, 0.35, seed=7 + i)
        tables.append(_cells(z_t, z_s)[:3])
        # joint state of positions (0, 1): 3 states each -> 9 patterns, tests independence across positions too
        state = (z_t != MASK).astype(int) + (z_s != MASK).astype(int)
        patterns.append(np.bincount(3 * state[:, 0] + state[:, 1], minlength=9))
    assert stats.chi2_contingency(np.stack(tables)).pvalue > 1e-3
    assert stats.chi2_contingency(np.stack(patterns)).pvalue > 1e-3
    # and the pattern law is the product of the per-token law (independent positions)
    per = np.array([0.35, 0.25, 0.4])  # states 0 (masked both), 1 (visible at s only), 2 (visible at both)
    for counts in patterns:
        assert stats.chisquare(counts, np.outer(per, per).ravel() * counts.sum()).pvalue > 1e-3


def test_uniform_coupling_is_the_forward_process_and_sharding_invariant():
    key = jax.random.PRNGKey(3)
    tokens = jax.random.randint(key, (8, 16), 0, 5)
    tokens = tokens.at[2, -4:].set(99)  # padding
    m_t, m_s = jnp.linspace(0.2, 0.9, 8), jnp.linspace(0.1, 0.5, 8)
    z_t, z_s = duality.coupled_pair(key, tokens, m_t, m_s, mask=MASK, pad=99, method="uniform", vocab_size=5)
    ref = process.forward_mask(tokens, m_t, process.example_uniforms(key, 8, 16), MASK, 99)
    assert np.array_equal(np.asarray(z_t), np.asarray(ref))
    assert np.all(np.asarray(z_s)[2, -4:] == 99) and np.all(np.asarray(z_t)[2, -4:] == 99)  # padding never masked
    for method in ("uniform", "gaussian"):  # 'literal' draws its rows the same way (tests only)
        full = duality.coupled_pair(key, tokens, m_t, m_s, mask=MASK, pad=99, method=method, vocab_size=5)
        head = duality.coupled_pair(key, tokens[:3], m_t[:3], m_s[:3], mask=MASK, pad=99, method=method, vocab_size=5)
        assert all(np.array_equal(np.asarray(a)[:3], np.asarray(b)) for a, b in zip(full, head))


def test_pairs_at_equal_times_are_equal_and_a_later_time_masks_more():
    for method in duality.COUPLINGS:
        _, z_t, z_s = _pairs(method, 5, 0.5, 0.5)
        assert np.array_equal(z_t, z_s)
    # Per-row times, s < t drawn at random: superset in every draw (no violation in 6.4e4 tokens).
    key = jax.random.PRNGKey(11)
    t = jax.random.uniform(key, (1000,))
    s = t * jax.random.uniform(jax.random.fold_in(key, 1), (1000,))
    sched = make_schedule("cosine")
    tokens = jax.random.randint(key, (1000, 64), 0, 5)
    for method in ("uniform", "gaussian"):
        z_t, z_s = duality.coupled_pair(
            key, tokens, sched.mask_prob(t), sched.mask_prob(s), mask=MASK, pad=None, method=method, vocab_size=5
        )
        assert not np.any((np.asarray(z_t) != MASK) & (np.asarray(z_s) == MASK))
