"""EDLM's importance sampler against exact enumeration on a toy language, and its batching and sign.

Toy: L = 4, V = 3, a random joint p_true over the 81 sequences; the denoiser is the exact
*factorised* one (each position's true conditional given x_t, drawn independently), so its
joint is wrong; the oracle energy E = -log p_true(x0) + log p_theta(x0 | xt) makes
p_theta e^{-E} proportional to p_true on the completions of x_t. Statistical tests fail at
p < 1e-3 and are sized so that the factorised sampler fails them.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mdm.energy import denoiser_log_prob
from mdm.energy.network import EnergyNetwork, make_network_energy
from mdm.networks import Transformer, TransformerConfig
from mdm.samplers import SamplerSettings, ancestral_sample, importance_sample, make_sampler
from mdm.samplers.importance import ImportanceDraw, pick_candidates
from mdm.schedules import make_schedule
from oracles import JointOracleModel

L, V = 4, 3
MASK = V
SEQS = np.array(list(itertools.product(range(V), repeat=L)), np.int32)
LINEAR = make_schedule("linear")


def _truth(seed=0, concentration=1.0):
    return np.random.default_rng(seed).dirichlet(np.full(V**L, concentration))


def _index(x):
    return (x * (V ** jnp.arange(L - 1, -1, -1)).reshape((1,) * (jnp.ndim(x) - 1) + (L,))).sum(-1)


def _oracle_energy(p_true):
    log_p = jnp.log(jnp.asarray(p_true, jnp.float32))
    return lambda x0, xt, logp: -log_p[_index(x0)] + logp


def _denoiser(model):
    return lambda x, t: model.apply(None, x)


def _counts(samples):
    return np.bincount(np.asarray(_index(jnp.asarray(samples))), minlength=V**L)


def _conditional(p_true, canvas):
    ok = np.all((SEQS == np.asarray(canvas)) | (np.asarray(canvas) == MASK), axis=1)
    p = np.where(ok, p_true, 0.0)
    return p / p.sum()


def _product_of_marginals(oracle, canvas):
    logits = np.asarray(oracle.apply(None, jnp.asarray([canvas], jnp.int32)))[0]
    mu = np.exp(logits - logits.max(-1, keepdims=True))
    mu /= mu.sum(-1, keepdims=True)
    free = np.asarray(canvas) == MASK
    p = np.prod(np.where(free, mu[np.arange(L), SEQS], 1.0), axis=1)
    return np.where(np.all((SEQS == np.asarray(canvas)) | free, axis=1), p, 0.0)


def _chi2_pvalue(counts, probs):
    probs = np.asarray(probs, np.float64)
    expected = probs / probs.sum() * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "sampled an impossible sequence"
    return stats.chisquare(counts[keep], expected[keep]).pvalue


def _tv(counts, probs):
    return 0.5 * np.abs(counts / counts.sum() - probs).sum()


P_TRUE = _truth(0)
ORACLE = JointOracleModel(P_TRUE, L, V)
ENERGY = _oracle_energy(P_TRUE)


@functools.lru_cache(maxsize=None)
def _draw_fn(k, constant_energy=False):
    energy = (lambda x0, xt, lp: jnp.zeros(x0.shape[:1])) if constant_energy else ENERGY
    draw = ImportanceDraw(energy, MASK, num_candidates=k)
    return jax.jit(lambda keys, x: draw(keys, ORACLE.apply(None, x), x))


def _importance_draws(canvas, k, n, seed=0, constant_energy=False):
    x = jnp.broadcast_to(jnp.asarray(canvas, jnp.int32), (n, L))
    return np.asarray(_draw_fn(k, constant_energy)(jax.random.split(jax.random.PRNGKey(seed), n), x))


@functools.lru_cache(maxsize=None)
def _sampler_fn(steps, k=None, window=1.0, cache=True):
    """The jitted EDLM sampler on the toy (k=None: the plain ancestral sampler)."""
    kw = dict(mask=MASK, schedule=LINEAR, steps=steps, cache=cache)
    if k is None:
        return jax.jit(lambda keys, c: ancestral_sample(_denoiser(ORACLE), keys, c, **kw))
    return jax.jit(
        lambda keys, c: importance_sample(_denoiser(ORACLE), keys, c, energy=ENERGY, num_candidates=k, window=window, **kw)
    )


@pytest.mark.parametrize("canvas", [[MASK] * L, [MASK, 1, MASK, MASK]])
def test_importance_step_with_large_k_samples_the_true_conditional(canvas):
    target = _conditional(P_TRUE, canvas)
    n = 10_000
    big = _counts(_importance_draws(canvas, 48, n))
    assert _chi2_pvalue(big, target) > 1e-3
    one = _counts(_importance_draws(canvas, 1, n, seed=1))
    assert _chi2_pvalue(one, target) < 1e-6  # the factorised draw is detectably wrong (power)
    # K = 1 is the plain denoiser: its law is the product of the marginals.
    assert _chi2_pvalue(one, _product_of_marginals(ORACLE, canvas)) > 1e-3
    assert _tv(one, target) > 8 * _tv(big, target)  # measured: about 0.36 vs 0.02


@pytest.mark.slow
def test_total_variation_shrinks_with_k():
    canvas = [MASK] * L
    target = _conditional(P_TRUE, canvas)
    tvs = [_tv(_counts(_importance_draws(canvas, k, 10_000, seed=10 + k)), target) for k in (1, 4, 48)]
    assert tvs[0] > 2 * tvs[1] > 4 * tvs[2], tvs  # measured: about 0.36, 0.12, 0.02


@pytest.mark.slow
def test_constant_energy_keeps_the_plain_denoiser_law():
    canvas = [MASK] * L
    counts = _counts(_importance_draws(canvas, 8, 10_000, seed=3, constant_energy=True))
    assert _chi2_pvalue(counts, _product_of_marginals(ORACLE, canvas)) > 1e-3


N_ROWS = 10_000
ROW_KEYS = jax.random.split(jax.random.PRNGKey(4), N_ROWS)
ALL_MASK = jnp.full((N_ROWS, L), MASK, jnp.int32)


@pytest.mark.parametrize("k,w", [(1, 1.0), pytest.param(4, 0.0, marks=pytest.mark.slow)])
def test_k1_or_empty_window_is_exactly_the_ancestral_sampler(k, w):
    plain = _sampler_fn(2)(ROW_KEYS, ALL_MASK)
    out = _sampler_fn(2, k, w)(ROW_KEYS, ALL_MASK)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(plain.tokens))
    assert int(out.nfe) == int(plain.nfe) == 2 and int(out.energy_nfe) == 0


def test_full_sampler_moves_the_few_step_law_to_the_truth():
    """Two ancestral steps with the factorised denoiser are far from p_true; with the oracle
    energy, w = 1 and large K every step draws x_0 from p_true(. | x_t), so the law is p_true."""
    plain = _counts(np.asarray(_sampler_fn(2)(ROW_KEYS, ALL_MASK).tokens))
    out = _sampler_fn(2, 48, 1.0)(ROW_KEYS, ALL_MASK)
    edlm = _counts(np.asarray(out.tokens))
    assert _chi2_pvalue(plain, P_TRUE) < 1e-6
    assert _chi2_pvalue(edlm, P_TRUE) > 1e-3
    assert _tv(edlm, P_TRUE) < 0.5 * _tv(plain, P_TRUE)
    assert int(out.energy_nfe) == 2 * 48  # both steps reveal tokens, K passes each


@pytest.mark.slow
def test_window_limits_the_energy_calls():
    # w = 0.4 on the grid {1, 0.5, 0}: only the step from t = 1 uses the energy.
    half = _sampler_fn(2, 48, 0.4)(ROW_KEYS, ALL_MASK)
    assert int(half.energy_nfe) == 48 and not np.any(np.asarray(half.tokens) == MASK)


def test_batched_rows_equal_batch_one_runs_on_the_toy():
    canvas = ALL_MASK.at[::3, 1].set(2)  # every third row has an infill context
    fn = _sampler_fn(2, 48, 1.0)
    batched = np.asarray(fn(ROW_KEYS, canvas).tokens)
    for b in range(6):
        alone = np.asarray(fn(ROW_KEYS[b : b + 1], canvas[b : b + 1]).tokens)
        np.testing.assert_array_equal(alone[0], batched[b])
    assert np.all(batched[::3, 1] == 2)


def test_pick_frequencies_follow_softmax_of_minus_energy():
    energies = jnp.asarray([0.0, 1.0, 2.0, -0.5])[:, None]
    temperature = 0.7
    n = 40_000
    e_kxb = jnp.broadcast_to(energies, (4, n))
    picks = np.asarray(jax.jit(pick_candidates, static_argnums=2)(jax.random.split(jax.random.PRNGKey(6), n), e_kxb, temperature))
    weights = np.exp(-np.asarray(energies[:, 0], np.float64) / temperature)
    expected = weights / weights.sum()  # float64, so expected * n sums to n as chisquare demands
    counts = np.bincount(picks, minlength=4)
    assert stats.chisquare(counts, expected * n).pvalue > 1e-3
    assert counts.argmax() == 3 and counts.argmin() == 2  # lowest energy most often: the sign is right


def test_lower_energy_token_is_chosen_in_the_right_proportion():
    """One masked position, uniform proposal over 2 tokens, E(0) = 0, E(1) = 1, K = 2, T = 0.5:
    both candidates agree with prob 1/2, else 0 wins with prob sigmoid((E1 - E0) / T), so
    P(0) = 1/4 + 1/2 sigmoid(2) = 0.6904."""
    n = 40_000
    logits = jnp.zeros((n, 1, 2))
    energy = lambda x0, xt, lp: x0[:, 0].astype(jnp.float32)  # noqa: E731
    draw = ImportanceDraw(energy, mask=2, num_candidates=2, temperature=0.5)
    x0 = np.asarray(jax.jit(draw)(jax.random.split(jax.random.PRNGKey(7), n), logits, jnp.full((n, 1), 2, jnp.int32)))
    p0 = 0.25 + 0.5 / (1 + np.exp(-2.0))
    zeros = int((x0[:, 0] == 0).sum())
    assert stats.binomtest(zeros, n, p0).pvalue > 1e-3
    assert abs(zeros / n - p0) < 0.01


def test_energy_receives_the_denoiser_log_probabilities():
    """The diffusion term is sum over masked l of log softmax(logits) at x0 (<= 0), checked in float64."""
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(5, L, V)).astype(np.float32)
    xt = np.array([[MASK, 1, MASK, 0]] * 5, np.int32)
    seen = {}

    def energy(x0, xt_, logp):
        seen["x0"], seen["logp"] = x0, logp
        return jnp.zeros(x0.shape[:1])

    draw = ImportanceDraw(energy, MASK, num_candidates=3)

    @jax.jit
    def run(keys, lg, x):
        draw.energies(draw.candidates(keys, lg, x), lg, x)
        return seen["x0"], seen["logp"]

    seen["x0"], seen["logp"] = run(jax.random.split(jax.random.PRNGKey(9), 5), jnp.asarray(logits), jnp.asarray(xt))
    x0 = np.asarray(seen["x0"]).reshape(3, 5, L)
    ref_logp = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
    ref = np.where(xt == MASK, np.take_along_axis(ref_logp[None], x0[..., None], -1)[..., 0], 0.0).sum(-1)
    np.testing.assert_allclose(np.asarray(seen["logp"]).reshape(3, 5), ref, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(seen["logp"]) <= 0)
    assert np.all(x0[..., 1] == 1) and np.all(x0[..., 3] == 0)  # carry-over
    clean = jnp.asarray(x0[0])  # nothing masked: log p_theta(x0 | x0) = 0
    np.testing.assert_array_equal(np.asarray(denoiser_log_prob(jnp.asarray(logits), clean, clean, MASK)), 0.0)


def _tiny(vocab, causal=False):
    return TransformerConfig(vocab_size=vocab, num_layers=1, d_model=16, num_heads=2, mlp_dim=32, causal=causal)


@pytest.mark.slow
def test_batched_rows_equal_batch_one_runs_with_a_network_energy():
    vocab, length = 11, 12
    cfg = _tiny(vocab)
    den_model = Transformer(cfg)
    den_params = den_model.init(jax.random.PRNGKey(0), jnp.zeros((1, length), jnp.int32))["params"]
    net = EnergyNetwork(cfg)
    e_params = net.init(jax.random.PRNGKey(1), jnp.zeros((1, length), jnp.int32))["params"]
    # Give the zero-initialised projection weights, so energies differ between candidates.
    e_params = dict(e_params, energy_proj={"kernel": jax.random.normal(jax.random.PRNGKey(2), (16, 16))})
    energy = make_network_energy(net, e_params).bind()
    settings = SamplerSettings("edlm", steps=6, is_k=3, is_window=0.5)
    sampler = make_sampler(settings, mask=vocab, schedule=LINEAR, energy=energy)
    den = lambda x, t: den_model.apply({"params": den_params}, x)  # noqa: E731
    fn = jax.jit(lambda k, c: sampler(den, k, c))
    canvas = np.full((4, length), vocab, np.int32)
    canvas[0, :2] = [1, 2]
    canvas[1, :7] = [3, 4, 5, 6, 7, 8, 9]
    canvas[2, 5] = 4
    keys = jax.random.split(jax.random.PRNGKey(7), 4)
    batched = fn(keys, jnp.asarray(canvas))
    assert int(batched.energy_nfe) > 0
    tokens = np.asarray(batched.tokens)
    for b in range(4):
        alone = fn(keys[b : b + 1], jnp.asarray(canvas[b : b + 1]))
        np.testing.assert_array_equal(np.asarray(alone.tokens)[0], tokens[b])
    fixed = canvas != vocab
    np.testing.assert_array_equal(tokens[fixed], canvas[fixed])
    assert np.all(tokens < vocab)


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"is_k": 0}, "is_k=0 must be an integer >= 1"),
        ({"is_window": 1.5}, "is_window=1.5 must lie in [0, 1]"),
        ({"is_window": -0.1}, "is_window=-0.1 must lie in [0, 1]"),
        ({"is_temp": 0.0}, "is_temp=0.0 must be > 0"),
    ],
)
def test_bad_importance_settings_are_one_line(kw, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SamplerSettings("edlm", steps=4, **kw).validate(8)


def test_edlm_sampler_without_energy_names_the_fix():
    with pytest.raises(ValueError, match="--energy ar|nce"):
        make_sampler(SamplerSettings("edlm", steps=4), mask=MASK, schedule=LINEAR)
