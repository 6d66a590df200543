"""The EDLM likelihood: the discrete-step chain is a bound (never below the exact NLL of the
T-step model, computed by enumeration), it tightens with the oracle energy, and the Monte Carlo
log Z is biased low as `log_mean_exp` says.

Toy: L = 4, V = 3 (81 sequences); every exact number is a float64 enumeration in numpy.
"""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm.energy import denoiser_log_prob, log_mean_exp, snis_upper
from mdm.energy.autoregressive import make_ar_energy
from mdm.energy.likelihood import BoundSettings, chain_nll
from mdm.networks import Transformer, TransformerConfig
from mdm.schedules import make_schedule
from oracles import JointOracleModel

L, V = 4, 3
MASK = V
SEQS = np.array(list(itertools.product(range(V), repeat=L)), np.int32)
CANVASES = np.array(list(itertools.product(range(V + 1), repeat=L)), np.int32)  # every x_t
LINEAR = make_schedule("linear")
REPS = 48  # chains per sequence for the Monte Carlo means


def _truth():
    equal_pairs = sum((SEQS[:, a] == SEQS[:, b]).astype(float) for a in range(L) for b in range(a + 1, L))
    p = np.exp(equal_pairs + 0.5 * (SEQS == 0).sum(1))
    return p / p.sum()


P_TRUE = _truth()
ORACLE = JointOracleModel(P_TRUE, L, V)
CONSISTENT = np.all((SEQS[None] == CANVASES[:, None]) | (CANVASES[:, None] == MASK), axis=-1)  # [256, 81]


def _canvas_index(c):
    return int((np.asarray(c) * (V + 1) ** np.arange(L - 1, -1, -1)).sum())


def _oracle_energy():
    log_p = jnp.log(jnp.asarray(P_TRUE, jnp.float32))
    return lambda x0, xt, logp: -log_p[_seq_index(x0)] + logp


def _oracle_log_z(xt):
    """Exact log Z(x_t) of the oracle energy: log P_true(x_0 agrees with x_t)."""
    ok = jnp.all((jnp.asarray(SEQS)[None] == xt[:, None]) | (xt[:, None] == MASK), axis=-1)
    return jnp.log((ok * jnp.asarray(P_TRUE, jnp.float32)[None, :]).sum(-1))


def _random_ar():
    model = Transformer(TransformerConfig(vocab_size=V, num_layers=1, d_model=16, num_heads=2, mlp_dim=32, causal=True))
    shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, L), jnp.int32)))["params"])
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(0.0, 0.5, a.shape), a.dtype), shapes)
    return make_ar_energy(model, params=params)


def _seq_index(x):
    return (x * (V ** jnp.arange(L - 1, -1, -1)).reshape((1,) * (jnp.ndim(x) - 1) + (L,))).sum(-1)


def _pair_rows():
    """(x_t, x_0) int32[256 * 81, L]: every x_t against every x_0, row-major in (x_t, x_0)."""
    return jnp.asarray(np.repeat(CANVASES, len(SEQS), axis=0)), jnp.asarray(np.tile(SEQS, (len(CANVASES), 1)))


@functools.lru_cache(maxsize=None)
def _denoiser_logp_table() -> np.ndarray:
    """float32[256, 81]: log p_theta(x_0 | x_t) of the factorised oracle denoiser."""
    xt, x0 = _pair_rows()
    logits = jnp.repeat(ORACLE.apply(None, jnp.asarray(CANVASES)), len(SEQS), axis=0)
    return np.asarray(jax.jit(denoiser_log_prob, static_argnums=3)(logits, x0, xt, MASK)).reshape(len(CANVASES), len(SEQS))


@functools.lru_cache(maxsize=None)
def _energy_table(kind: str) -> np.ndarray:
    """float32[256, 81]: E(x_0, x_t) for every pair; kind 'none' (E = 0), 'oracle' or 'coar'."""
    logp = _denoiser_logp_table()
    if kind == "none":
        return np.zeros_like(logp)
    if kind == "oracle":
        return (-np.log(P_TRUE)[None] + logp).astype(np.float32)
    xt, x0 = _pair_rows()
    energy = _random_ar().bind()
    e = jax.jit(energy)(x0, xt, jnp.asarray(logp.reshape(-1)))
    return np.asarray(e).reshape(logp.shape)


def _log_z_table(kind: str) -> np.ndarray:
    """float32[256]: the exact log Z(x_t) (coAR: 0; oracle: log P_true(x_0 agrees with x_t))."""
    if kind == "oracle":
        return np.log(np.where(CONSISTENT, P_TRUE[None], 0.0).sum(1)).astype(np.float32)
    return np.zeros(len(CANVASES), np.float32)


def _model_conditionals(kind: str) -> np.ndarray:
    """float64[256, 81]: p(x_0 | x_t) of p_theta e^{-E} / Z for every x_t (0 off its completions)."""
    lw = _denoiser_logp_table().astype(np.float64) - _energy_table(kind).astype(np.float64)
    lw = np.where(CONSISTENT, lw, -np.inf)
    lw -= lw.max(1, keepdims=True)
    w = np.exp(lw)
    return w / w.sum(1, keepdims=True)


def _exact_two_step(cond: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(-log p_T(x_0), the exact chain bound (1)) for T = 2 on the linear grid {1, 1/2, 0}:
    each position is revealed at the first step with probability 1/2, the rest at the second."""
    nll, chain = np.zeros(len(SEQS)), np.zeros(len(SEQS))
    full = CANVASES[_canvas_index([MASK] * L)]
    for i, x0 in enumerate(SEQS):
        prob, bound = 0.0, 0.0
        for subset in itertools.product([0, 1], repeat=L):
            s = np.asarray(subset, bool)
            x1 = np.where(s, x0, MASK)
            j = _canvas_index(x1)
            # marginal of the first step on S = P(x_0 agrees with x1 | all mask)
            first = cond[_canvas_index(full)][CONSISTENT[j]].sum()
            second = cond[j][i]  # everything left is revealed at the last step
            prob += 0.5**L * first * second
            bound += 0.5**L * -(np.log(first) + np.log(second))
        nll[i], chain[i] = -np.log(prob), bound
    return nll, chain


@jax.jit
def _chains(energy_table, log_z_table, keys, x0):
    """The library's 2-step chain (n = 4) with a tabulated energy and exact log Z."""
    canvas_index = lambda x: (x * ((V + 1) ** jnp.arange(L - 1, -1, -1)).reshape((1,) * (jnp.ndim(x) - 1) + (L,))).sum(-1)  # noqa: E731
    return chain_nll(
        lambda x_, t: ORACLE.apply(None, x_),
        lambda x0_, xt_, logp: energy_table[canvas_index(xt_), _seq_index(x0_)],
        keys,
        x0,
        mask=MASK,
        schedule=LINEAR,
        settings=BoundSettings(steps=2, inner_samples=4),
        log_z=lambda xt_: log_z_table[canvas_index(xt_)],
    )


def _oracle_chains(keys, x0, settings: BoundSettings, log_z):
    """The library's chains under the oracle denoiser and the oracle energy, jitted."""
    run = lambda k: chain_nll(  # noqa: E731
        lambda x_, t: ORACLE.apply(None, x_), _oracle_energy(), k, x0, mask=MASK, schedule=LINEAR, settings=settings, log_z=log_z
    )
    return jax.jit(run)(keys)


@functools.lru_cache(maxsize=None)
def _estimates(kind: str):
    """Per-sequence means and standard errors (over REPS chains) of the library's chain terms."""
    x0 = jnp.asarray(np.repeat(SEQS, REPS, axis=0))
    keys = jax.random.split(jax.random.PRNGKey(11), len(x0))
    out = _chains(jnp.asarray(_energy_table(kind)), jnp.asarray(_log_z_table(kind)), keys, x0)
    res = {}
    for name in ("mdm", "edlm"):
        v = np.asarray(out[name], np.float64).reshape(len(SEQS), REPS)
        res[name] = (v.mean(1), v.std(1, ddof=1) / np.sqrt(REPS))
    return res


def _pooled(mean_and_se):
    """E_{x_0 ~ p_true} of a per-sequence estimate, and its standard error."""
    m, se = mean_and_se
    return float(P_TRUE @ m), float(np.sqrt((P_TRUE**2) @ (se**2)))


def test_log_z_n_is_biased_low_like_1_over_n_and_the_snis_value_sits_above():
    """Log-normal weights (sigma = 1, log Z = 1/2): bias of log Z_n = -0.50, -0.29, -0.088, -0.027
    at n = 1, 2, 8, 32 (n = 1: exactly -sigma^2 / 2; docs/edlm.md); the self-normalised value tends to E_p[a] = 1."""
    reps = 40_000
    expected = {1: -0.50, 2: -0.29, 8: -0.088, 32: -0.027}

    @jax.jit
    def estimates(key):
        out = {}
        for n in (*expected, 512):
            a = jax.random.normal(jax.random.fold_in(key, n), (n, reps))
            out[n] = (log_mean_exp(a), snis_upper(a))
        return out

    out = estimates(jax.random.PRNGKey(0))
    for n, bias in expected.items():
        low, high = (np.asarray(v, np.float64) for v in out[n])
        se = low.std() / np.sqrt(reps)
        assert abs(low.mean() - 0.5 - bias) < max(4 * se, 0.005), (n, low.mean() - 0.5)
        assert np.all(high >= low - 1e-6)
    assert 0.9 < float(np.mean(out[512][1])) < 1.0  # -> E_p[a] = sigma^2 = 1 >= log Z = 0.5 (from below, O(1/n))


def test_one_step_chain_with_the_oracle_energy_is_the_exact_nll():
    """T = 1 reveals everything at once: the chain is -log p(x_0 | all mask) = -log p_true(x_0)
    with no Monte Carlo at all, and the MDM's is the product of its marginals."""
    settings = BoundSettings(steps=1, inner_samples=2)
    x0 = jnp.asarray(SEQS)
    keys = jax.random.split(jax.random.PRNGKey(0), len(SEQS))
    out = _oracle_chains(keys, x0, settings, _oracle_log_z)
    np.testing.assert_allclose(np.asarray(out["edlm"], np.float64), -np.log(P_TRUE), rtol=1e-5, atol=1e-5)
    marginals = _model_conditionals("none")[_canvas_index([MASK] * L)]
    np.testing.assert_allclose(np.asarray(out["mdm"], np.float64), -np.log(marginals), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out["tokens"]), L)


def test_coar_chain_is_a_bound_on_the_exact_nll_of_the_two_step_model():
    """coAR (Z = 1 exactly) with a random AR model: for every x_0 the estimate's mean is >= the
    exact chain bound (inner IW gap >= 0) >= -log p_T(x_0), all enumerated; so it is also >= the
    cross-entropy and the entropy of the truth on average."""
    nll, chain = _exact_two_step(_model_conditionals("coar"))
    assert np.all(chain >= nll - 1e-9)
    mean, se = _estimates("coar")["edlm"]
    z = (mean - chain) / np.maximum(se, 1e-6)
    assert z.min() > -4.5, (z.min(), np.argmin(z))  # 81 one-sided checks at 4.5 s.e.
    avg, avg_se = _pooled((mean, se))
    entropy = float(-(P_TRUE * np.log(P_TRUE)).sum())
    assert avg > float(P_TRUE @ nll) - 4 * avg_se and avg > entropy
    # The MDM's own 2-step chain estimate matches its exact value (the same enumeration, E = 0).
    _, mdm_chain = _exact_two_step(_model_conditionals("none"))
    m, m_se = _pooled(_estimates("coar")["mdm"])
    assert abs(m - float(P_TRUE @ mdm_chain)) < 4 * m_se + 1e-4


def test_oracle_energy_tightens_the_bound_to_the_entropy():
    """With the oracle energy the exact chain equals -log p_true(x_0) (chain rule), so the
    estimate sits just above the entropy (the inner IW gap), far below the MDM's 2-step bound."""
    cond = _model_conditionals("oracle")
    nll, chain = _exact_two_step(cond)
    np.testing.assert_allclose(chain, -np.log(P_TRUE), rtol=1e-6)
    np.testing.assert_allclose(nll, -np.log(P_TRUE), rtol=1e-6)
    est = _estimates("oracle")
    edlm, edlm_se = _pooled(est["edlm"])
    mdm, _ = _pooled(est["mdm"])
    entropy = float(-(P_TRUE * np.log(P_TRUE)).sum())
    print(f"2-step chain, nats/sequence: entropy {entropy:.4f}, EDLM-oracle {edlm:.4f} ± {edlm_se:.4f}, MDM {mdm:.4f}")
    assert edlm > entropy - 4 * edlm_se  # a bound: never below the exact NLL
    assert edlm - entropy < 0.25 * (mdm - entropy)  # much tighter than the factorised model's
    coar, _ = _pooled(_estimates("coar")["edlm"])
    assert edlm < coar  # the oracle beats a random AR energy


@pytest.mark.slow
def test_mc_log_z_gives_a_labelled_interval_not_a_bound():
    """Without a known Z the chain reports log Z_n (low) and the self-normalised value (high), and
    the report labels the EDLM number an estimate with both ends; with Z = 1 it is a bound."""
    settings = BoundSettings(steps=2, inner_samples=2, log_z_samples=8)
    x0 = jnp.asarray(np.repeat(SEQS[::9], 4, axis=0))
    keys = jax.random.split(jax.random.PRNGKey(1), len(x0))

    def chains(log_z):
        return _oracle_chains(keys, x0, settings, log_z)

    out = chains(None)
    assert np.all(np.asarray(out["edlm_upper"]) >= np.asarray(out["edlm"]) - 1e-5)
    assert np.any(np.asarray(out["edlm_upper"]) > np.asarray(out["edlm"]) + 1e-3)
    exact = chains(_oracle_log_z)  # the same chains with the exact log Z: the interval closes
    np.testing.assert_allclose(np.asarray(exact["edlm_upper"]), np.asarray(exact["edlm"]), atol=1e-5)

    # The label follows whether log Z is Monte Carlo: the same AR network as a plain AR energy
    # (Z unknown, estimated from log_z_samples) and as coAR (Z = 1 exactly).
    from mdm.energy.likelihood import format_report, likelihood_report
    from mdm.objectives import MaskedDiffusionObjective

    vocab, length = 7, 8
    cfg = TransformerConfig(vocab_size=vocab, num_layers=1, d_model=16, num_heads=2, mlp_dim=32)
    mdm = MaskedDiffusionObjective(model=Transformer(cfg), pad_id=6, token_bytes=(1,) * vocab, schedule=LINEAR, eval_t_samples=2)
    params = nn.unbox(mdm.model.init(jax.random.PRNGKey(0), jnp.zeros((1, length), jnp.int32)))["params"]
    batches = [{"tokens": jnp.asarray(np.random.default_rng(0).integers(0, 6, (4, length)), jnp.int32)}]
    ar = Transformer(TransformerConfig(vocab_size=vocab, num_layers=1, d_model=16, num_heads=2, mlp_dim=32, causal=True))
    ar_params = nn.unbox(ar.init(jax.random.PRNGKey(1), jnp.zeros((1, length), jnp.int32)))["params"]
    settings = BoundSettings(steps=2, inner_samples=2, log_z_samples=3)

    def report(carry_over):
        energy = make_ar_energy(ar, params=ar_params, carry_over=carry_over)
        return likelihood_report(mdm, params, energy, batches, jax.random.PRNGKey(2), settings)

    mc = report(carry_over=False)
    assert mc["edlm_is"] == "estimate" and mc["log_z_samples"] == 3
    assert mc["edlm_upper_chain_bits_per_token"] > mc["edlm_chain_bits_per_token"]
    edlm_line = [line for line in format_report(mc).splitlines() if line.startswith("EDLM-ar ")]
    assert len(edlm_line) == 1, format_report(mc)
    line = edlm_line[0]
    assert "ESTIMATE" in line and "not a bound" in line and "chain bound" not in line
    assert "3-sample MC, biased low" in line
    assert "K -> infinity" in format_report(mc)  # the sampler the chain scores is stated
    assert f"{mc['edlm_chain_bits_per_token']:.4f}" in line and f"{mc['edlm_upper_chain_bits_per_token']:.4f}" in line
    known = report(carry_over=True)
    assert known["edlm_is"] == "bound" and known["log_z_samples"] is None
    assert known["edlm_upper_chain_bits_per_token"] == pytest.approx(known["edlm_chain_bits_per_token"], abs=1e-6)
    line = [line for line in format_report(known).splitlines() if line.startswith("EDLM-coar ")][0]
    assert "chain bound" in line and "Z = 1 exactly" in line and "ESTIMATE" not in line and "not a bound" not in line


@pytest.mark.slow
def test_likelihood_report_on_a_tiny_transformer():
    from mdm.energy.likelihood import format_report, likelihood_report
    from mdm.energy.network import EnergyNetwork, make_network_energy
    from mdm.objectives import AutoregressiveObjective, MaskedDiffusionObjective

    vocab, length = 7, 8
    cfg = TransformerConfig(vocab_size=vocab, num_layers=1, d_model=16, num_heads=2, mlp_dim=32)
    mdm = MaskedDiffusionObjective(model=Transformer(cfg), pad_id=6, token_bytes=(1,) * vocab, schedule=LINEAR, eval_t_samples=2)
    params = nn.unbox(mdm.model.init(jax.random.PRNGKey(0), jnp.zeros((1, length), jnp.int32)))["params"]
    batches = [{"tokens": jnp.asarray(np.random.default_rng(i).integers(0, 6, (4, length)), jnp.int32)} for i in range(2)]
    settings = BoundSettings(steps=4, inner_samples=2, log_z_samples=4)
    ar = Transformer(TransformerConfig(vocab_size=vocab, num_layers=1, d_model=16, num_heads=2, mlp_dim=32, causal=True))
    ar_params = nn.unbox(ar.init(jax.random.PRNGKey(1), jnp.zeros((1, length), jnp.int32)))["params"]
    report = likelihood_report(mdm, params, make_ar_energy(ar, params=ar_params), batches, jax.random.PRNGKey(2), settings)
    assert report["edlm_is"] == "bound" and report["tokens"] == 8 * length
    assert "(Z = 1 exactly" in format_report(report)
    # One step: the EDLM-coAR chain is exactly the AR model's NLL (no Monte Carlo).
    one = likelihood_report(
        mdm, params, make_ar_energy(ar, params=ar_params), batches, jax.random.PRNGKey(2), BoundSettings(steps=1)
    )
    ar_obj = AutoregressiveObjective(model=ar, pad_id=6, token_bytes=(1,) * vocab)
    ar_nats = sum(float(ar_obj.nll_per_example(ar_params, b["tokens"]).sum()) for b in batches)
    assert one["edlm_chain_bits_per_token"] == pytest.approx(ar_nats / (8 * length) / np.log(2), rel=1e-5)
    assert "no inner estimate" in format_report(one)
    net = EnergyNetwork(cfg)
    e_params = nn.unbox(net.init(jax.random.PRNGKey(3), jnp.zeros((1, length), jnp.int32)))["params"]
    report = likelihood_report(mdm, params, make_network_energy(net, e_params), batches, jax.random.PRNGKey(2), settings)
    assert report["edlm_is"] == "estimate" and "not a bound" in format_report(report)
    # A fresh energy network is E = 0, so Z_S = Z = 1 and the EDLM chain is the MDM chain plus
    # only the importance-weighting gap of the -log Z_S estimate (>= 0 in expectation, small).
    assert -1e-3 < report["edlm_minus_mdm_chain_bits_per_token"] < 0.05
