"""Samplers against exact oracles: laws by enumeration, hitting-time laws, caching, invariances."""

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mdm.networks import Transformer, TransformerConfig
from mdm.samplers import SamplerSettings, TokenSampling, ancestral_sample, confidence_sample, first_hitting_sample, make_sampler
from mdm.samplers.base import _uniform_rank_row, random_positions_rank
from mdm.samplers.first_hitting import hitting_time_update
from mdm.schedules import make_schedule
from oracles import JointOracleModel

L, V = 4, 3
MASK = V


def _oracle(seed=0):
    probs = np.random.default_rng(seed).dirichlet(np.full(V**L, 0.7))
    return JointOracleModel(probs, L, V)


def _denoiser(model):
    return lambda x, t: model.apply(None, x)


def _counts(samples: np.ndarray) -> np.ndarray:
    index = (samples * (V ** np.arange(L - 1, -1, -1))).sum(-1)
    return np.bincount(index, minlength=V**L)


def _chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "sampled an impossible sequence"
    return stats.chisquare(counts[keep], expected[keep]).pvalue


def _sample(fn, n, canvas_row, seed=0, **kw):
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    canvas = jnp.broadcast_to(jnp.asarray(canvas_row, jnp.int32), (n, L))
    out = jax.jit(lambda k, c: fn(keys=k, canvas=c, **kw))(keys, canvas)
    return np.asarray(out.tokens), int(out.nfe)


def _fhs(keys, canvas, model, **kw):
    return first_hitting_sample(_denoiser(model), keys, canvas, mask=MASK, schedule=make_schedule("cosine"), **kw)


def _ancestral(keys, canvas, model, **kw):
    return ancestral_sample(_denoiser(model), keys, canvas, mask=MASK, schedule=make_schedule("linear"), **kw)


def test_first_hitting_sampler_draws_the_exact_joint():
    oracle = _oracle()
    samples, nfe = _sample(_fhs, 40_000, [MASK] * L, model=oracle)
    assert nfe == L
    p = _chi2_pvalue(_counts(samples), oracle.probs)
    assert p > 1e-3, p


def test_first_hitting_infill_draws_the_exact_conditional():
    oracle = _oracle(1)
    samples, nfe = _sample(_fhs, 30_000, [MASK, 2, MASK, MASK], model=oracle)
    assert nfe == L - 1 and np.all(samples[:, 1] == 2)
    conditional = np.where(oracle.seqs[:, 1] == 2, oracle.probs, 0.0)
    assert _chi2_pvalue(_counts(samples), conditional / conditional.sum()) > 1e-3


def test_ancestral_sampler_on_a_fine_grid_draws_the_exact_joint():
    oracle = _oracle(2)
    samples, _ = _sample(_ancestral, 20_000, [MASK] * L, model=oracle, steps=1000)
    assert _chi2_pvalue(_counts(samples), oracle.probs) > 1e-3


def test_parallel_decoding_with_two_tokens_per_call_is_not_exact():
    """The k > 1 approximation shows up on a strongly correlated law (the test can fail)."""
    probs = np.zeros(V**L)
    probs[0], probs[-1] = 0.5, 0.5  # 0000 or 2222: any independent pair draw can mix them
    oracle = JointOracleModel(probs, L, V)
    samples, nfe = _sample(_fhs, 4000, [MASK] * L, model=oracle, tokens_per_step=2)
    assert nfe == 2
    mixed = ~np.all(samples == samples[:, :1], axis=1)
    assert mixed.mean() > 0.3


def test_caching_changes_nfe_but_not_the_law():
    oracle = _oracle(3)
    cached, nfe_cached = _sample(_ancestral, 20_000, [MASK] * L, model=oracle, steps=50, cache=True, seed=1)
    fresh, nfe_fresh = _sample(_ancestral, 20_000, [MASK] * L, model=oracle, steps=50, cache=False, seed=2)
    assert nfe_fresh == 50
    table = np.stack([_counts(cached), _counts(fresh)])
    table = table[:, table.sum(0) > 0]
    assert stats.chi2_contingency(table).pvalue > 1e-3
    # One row at a time: E[NFE] = T (1 - (1 - 1/T)^L) for the linear schedule on a uniform grid.
    steps, length = 50, 16
    keys = jax.random.split(jax.random.PRNGKey(4), 3000)
    den = lambda x, t: jnp.zeros(x.shape + (V,))  # noqa: E731  (uniform logits: cost-free)
    nfe = jax.jit(
        jax.vmap(
            lambda k: (
                ancestral_sample(
                    den, k[None], jnp.full((1, length), MASK, jnp.int32), mask=MASK, schedule=make_schedule("linear"), steps=steps
                ).nfe
            )
        )
    )(keys)
    expected = steps * (1 - (1 - 1 / steps) ** length)
    nfe = np.asarray(nfe, np.float64)
    assert abs(nfe.mean() - expected) < 3 * nfe.std() / np.sqrt(len(nfe)), (nfe.mean(), expected)


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("schedule", ["linear", "cosine", "polynomial"])
def test_first_hitting_times_follow_the_stated_law(schedule, k):
    """After k first hits among n masked tokens from t0, mask_prob(tau_k) / mask_prob(t0) is the
    k-th largest of n iid U(0, 1), Beta(n - k + 1, k) (k = 1: CDF x^n). u has n columns, so the
    columns past k must be ignored."""
    sch = make_schedule(schedule)
    n, t0, draws = 7, 0.8, 20_000
    u = jax.random.uniform(jax.random.PRNGKey(0), (draws, n), minval=1e-12)
    log_mp = hitting_time_update(jnp.full((draws,), jnp.log(sch.mask_prob(t0))), u, jnp.full((draws,), n), jnp.full((draws,), k))
    tau = np.asarray(sch.time_of_mask_prob(jnp.exp(log_mp)), np.float64)
    mp = lambda s: np.asarray(sch.mask_prob(jnp.asarray(s, jnp.float32)), np.float64)  # noqa: E731
    cdf = lambda s: stats.beta.cdf(mp(np.clip(s, 0, t0)) / mp(t0), n - k + 1, k)  # noqa: E731
    assert stats.kstest(tau, cdf).pvalue > 1e-3
    if schedule == "cosine" and k == 1:  # closed form: time_of_mask_prob(mask_prob(t0) q^(1/n)), n = 7
        np.testing.assert_allclose(
            np.quantile(tau, [0.1, 0.25, 0.5, 0.75, 0.9]), [0.6647, 0.7148, 0.7559, 0.7813, 0.7931], atol=3e-3
        )


# A time-conditioned denoiser on L = 3, V = 2: P(token 1 at l) = sigmoid(logit), the logit moving
# with t (through cos 3 pi t) and with the number of 1s already revealed.
_TC_BIAS = np.array([-0.5, 0.3, 0.8])


def _tc_logit(bias, ones_revealed, t, xp):
    return bias + 2.5 * xp.cos(3 * np.pi * t) + 1.2 * ones_revealed - 0.6


def _tc_denoiser(x, t):
    ones = (x == 1).sum(-1, keepdims=True)
    logit = _tc_logit(jnp.asarray(_TC_BIAS, jnp.float32)[None], ones, t[:, None], jnp)
    return jnp.stack([jnp.zeros_like(logit), logit], -1)


def _tc_fhs_law(schedule, quad=24):
    """The law of exact FHS with `_tc_denoiser`, by enumeration and quadrature.

    From the all-masked canvas the hits are at w_j = mask_prob(tau_j) / mask_prob(1), the
    descending order statistics of 3 iid U(0, 1) (density 3! on w1 > w2 > w3), the order of
    positions is uniform and independent of the times, and the j-th token is drawn from the
    denoiser at tau_j. Coordinates w1 = a, w2 = a b, w3 = a b c with a = r^2, b = s^2, c = q^2
    (Gauss-Legendre in r, s, q) keep the integrand smooth where t(w) ~ sqrt(w).
    """
    g, gw = np.polynomial.legendre.leggauss(quad)
    g, gw = (g + 1) / 2, gw / 2
    r, s, q = np.meshgrid(g, g, g, indexing="ij")
    a, b, c = r**2, s**2, q**2
    weight = 6 * a**2 * b * 8 * r * s * q * np.einsum("i,j,k->ijk", gw, gw, gw)
    mp1 = float(schedule.mask_prob(jnp.float32(1.0)))
    t = [np.asarray(schedule.time_of_mask_prob(jnp.asarray(w * mp1, jnp.float32)), np.float64) for w in (a, a * b, a * b * c)]
    law = np.zeros(2**3)
    for code, x0 in enumerate(itertools.product(range(2), repeat=3)):
        for order in itertools.permutations(range(3)):
            prob, ones = np.ones_like(a), 0
            for j, pos in enumerate(order):
                p1 = 1 / (1 + np.exp(-_tc_logit(_TC_BIAS[pos], ones, t[j], np)))
                prob = prob * (p1 if x0[pos] == 1 else 1 - p1)
                ones += x0[pos]
            law[code] += (prob * weight).sum() / 6
    return law


def test_first_hitting_with_a_time_conditioned_network_draws_the_exact_law():
    """k = 1 is exact for a time-conditioned network too: each token is drawn at its own jump
    time. Handing the network the time before the jump, or any fixed time, changes the law."""
    sch = make_schedule("cosine")
    law = _tc_fhs_law(sch)
    assert abs(law.sum() - 1) < 1e-6 and abs(_tc_fhs_law(sch, quad=40) - law).max() < 1e-5
    n = 40_000
    out = jax.jit(lambda k: first_hitting_sample(_tc_denoiser, k, jnp.full((n, 3), 2, jnp.int32), mask=2, schedule=sch))(
        jax.random.split(jax.random.PRNGKey(11), n)
    )
    samples = np.asarray(out.tokens)
    assert int(out.nfe) == 3 and np.all(samples < 2)
    counts = np.bincount((samples * [4, 2, 1]).sum(-1), minlength=8)
    assert stats.chisquare(counts, law * n).pvalue > 1e-3


@pytest.mark.parametrize(
    "mode,hits",
    [({"tokens_per_step": 1}, [1, 2, 3, 4, 5, 6]), ({"tokens_per_step": 2}, [2, 4, 6]), ({"steps": 4}, [2, 4, 5, 6])],
)
def test_a_time_conditioned_network_gets_the_time_of_the_last_hit_of_each_call(mode, hits):
    """The parallel form hands the network the time of the k-th of its k hits: after h hits in
    all (from t = 1, L masked), mask_prob(t) / mask_prob(1) ~ Beta(L - h + 1, h). The times the
    denoiser actually receives are recorded and KS-tested against that law, call by call."""
    length, vocab, n = 6, 2, 4000
    sch = make_schedule("cosine")
    seen = []

    def den(x, t):
        jax.debug.callback(lambda x_, t_: seen.append((np.asarray(x_), np.asarray(t_, np.float64))), x, t)
        return jnp.zeros(x.shape + (vocab,))

    out = jax.jit(
        lambda k: first_hitting_sample(den, k, jnp.full((n, length), vocab, jnp.int32), mask=vocab, schedule=sch, **mode)
    )(jax.random.split(jax.random.PRNGKey(12), n))
    jax.effects_barrier()
    assert int(out.nfe) == len(hits) == len(seen)
    seen.sort(key=lambda xt: -(xt[0] == vocab).sum())  # callbacks need not arrive in order
    mp = lambda s: np.asarray(sch.mask_prob(jnp.asarray(s, jnp.float32)), np.float64)  # noqa: E731
    for before, h, (x, t) in zip([0] + hits[:-1], hits, seen):
        assert np.all((x == vocab).sum(-1) == length - before)
        p = stats.kstest(t, lambda s: stats.beta.cdf(mp(np.clip(s, 0, 1)) / mp(1.0), length - h + 1, h)).pvalue
        assert p > 1e-3, (h, p)


def test_position_order_is_exactly_uniform_even_when_keys_tie():
    """Keys cut to 1 bit per word (4 values for 4 masked positions) tie in ~90% of draws. The
    redraw on a tie keeps the order exactly uniform, where a tie-break by index would favour
    index order. Unmasked positions rank last; at full width ranks are a permutation too."""
    is_masked = jnp.asarray([True, False, True, True, True])
    n = 12_000
    rank = jax.jit(jax.vmap(partial(_uniform_rank_row, word_bits=1), in_axes=(0, None)))(
        jax.random.split(jax.random.PRNGKey(13), n), is_masked
    )
    rank = np.asarray(rank)
    assert np.all(np.sort(rank, axis=1) == np.arange(5)) and np.all(rank[:, 1] == 4)
    codes = (rank[:, [0, 2, 3, 4]] * 4 ** np.arange(4)).sum(1)
    _, counts = np.unique(codes, return_counts=True)
    assert len(counts) == 24 and stats.chisquare(counts).pvalue > 1e-3

    masks = jax.random.bernoulli(jax.random.PRNGKey(14), 0.6, (16, 300))
    full = np.asarray(jax.jit(random_positions_rank)(jax.random.split(jax.random.PRNGKey(15), 16), masks))
    masks = np.asarray(masks)
    assert full.dtype == np.int32 and np.all(np.sort(full, axis=1) == np.arange(300))
    for m_row, r_row in zip(masks, full):
        assert np.all(r_row[m_row] < m_row.sum()) and np.all(np.diff(r_row[~m_row]) > 0)


def _toy_transformer(vocab=11):
    model = Transformer(TransformerConfig(vocab_size=vocab, num_layers=2, d_model=32, num_heads=4, mlp_dim=64))
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    params = jax.tree.map(lambda p: getattr(p, "value", p), params, is_leaf=lambda p: hasattr(p, "value"))
    return lambda x, t: model.apply({"params": params}, x)


@pytest.mark.parametrize(
    "settings",
    [
        SamplerSettings("fhs"),
        SamplerSettings("fhs", steps=4),
        SamplerSettings("ancestral", steps=10),
        SamplerSettings("confidence", steps=6, block_length=4, order="margin"),
        SamplerSettings("confidence", steps=12, order="entropy"),
    ],
)
def test_a_row_samples_the_same_alone_or_batched_with_longer_prompts(settings):
    vocab, length = 11, 12
    den = _toy_transformer(vocab)
    sampler = jax.jit(make_sampler(settings, mask=vocab, schedule=make_schedule("linear")), static_argnums=0)
    canvas = np.full((3, length), vocab, np.int32)
    canvas[0, :2] = [1, 2]  # short prompt
    canvas[1, :7] = [3, 4, 5, 6, 7, 8, 9]  # long prompt
    canvas[2, 5] = 4  # infill context
    keys = jax.random.split(jax.random.PRNGKey(7), 3)
    batched = np.asarray(sampler(den, keys, jnp.asarray(canvas)).tokens)
    for b in range(3):
        alone = np.asarray(sampler(den, keys[b : b + 1], jnp.asarray(canvas[b : b + 1])).tokens)
        np.testing.assert_array_equal(alone[0], batched[b])
    assert np.all(batched < vocab)
    fixed = canvas != vocab
    np.testing.assert_array_equal(batched[fixed], canvas[fixed])


@pytest.mark.parametrize(
    "sampler,steps",
    [
        ("ancestral", 1),
        ("ancestral", 2),
        ("ancestral", 7),
        ("ancestral", 12),
        ("ancestral", 1000),
        ("fhs", None),
        ("fhs", 1),
        ("fhs", 7),
        ("confidence", 1),
        ("confidence", 12),
    ],
)
@pytest.mark.parametrize("batch", [1, 5])
def test_no_mask_survives_any_sampler(sampler, steps, batch):
    vocab, length = 11, 12
    fn = make_sampler(SamplerSettings(sampler, steps=steps), mask=vocab, schedule=make_schedule("linear", eps=1e-3))
    out = jax.jit(fn, static_argnums=0)(
        _toy_transformer(vocab), jax.random.split(jax.random.PRNGKey(0), batch), jnp.full((batch, length), vocab, jnp.int32)
    )
    assert not np.any(np.asarray(out.tokens) == vocab)
    if sampler == "fhs" and steps is None:
        assert int(out.nfe) == length


def test_confidence_order_unmasks_the_most_confident_positions_first():
    """The denoiser proposes token = number of positions already filled; confidence is highest
    at positions 3 and 0, so with 2 calls for 4 positions those two are filled first."""
    length, vocab = 4, 5
    sharp = jnp.asarray([4.0, 1.0, 0.5, 6.0])

    def den(x, t):
        filled = (x != vocab).sum(-1)
        target = jax.nn.one_hot(filled, vocab)[:, None, :]
        return target * sharp[None, :, None]

    for order in ("top_prob", "margin", "entropy"):
        out = confidence_sample(
            den,
            jax.random.split(jax.random.PRNGKey(0), 1),
            jnp.full((1, length), vocab, jnp.int32),
            mask=vocab,
            schedule=make_schedule("linear"),
            steps=2,
            order=order,
            draw=TokenSampling(temperature=1e-3),
        )
        np.testing.assert_array_equal(np.asarray(out.tokens)[0], [0, 2, 2, 0], err_msg=order)


def test_first_hitting_unmasks_positions_in_a_uniformly_random_order():
    """Token = number of positions already filled, so the output spells the unmasking order."""
    length, vocab = 4, 4

    def den(x, t):
        return 50.0 * jax.nn.one_hot((x != vocab).sum(-1), vocab)[:, None, :].repeat(length, 1)

    n = 24_000
    out = jax.jit(
        lambda k: first_hitting_sample(
            den, k, jnp.full((n, length), vocab, jnp.int32), mask=vocab, schedule=make_schedule("linear")
        )
    )(jax.random.split(jax.random.PRNGKey(5), n))
    orders = np.asarray(out.tokens)
    assert np.all(np.sort(orders, axis=1) == np.arange(length))  # a permutation per row
    codes = (orders * (length ** np.arange(length))).sum(1)
    _, counts = np.unique(codes, return_counts=True)
    assert len(counts) == 24 and stats.chisquare(counts).pvalue > 1e-3
