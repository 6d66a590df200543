"""The ELBO estimator and the AR loss against closed forms and an enumeration oracle."""

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm.errors import TrainingError
from mdm.metrics import summarize_eval
from mdm.networks import Transformer, TransformerConfig
from mdm.objectives import AutoregressiveObjective, MaskedDiffusionObjective
from mdm.schedules import make_schedule
from oracles import FixedLogitsModel, JointOracleModel

PAD = 99  # an id the toy data never uses


ESTIMATORS = ("continuous", "count")


def _mdm(model, schedule="linear", eps=0.0, t_min=1e-5, k=8, vocab=None, estimator="continuous"):
    v = vocab or model.cfg.vocab_size
    return MaskedDiffusionObjective(
        model=model,
        pad_id=PAD,
        token_bytes=(1,) * v,
        schedule=make_schedule(schedule, eps),
        t_min=t_min,
        eval_t_samples=k,
        eval_estimator=estimator,
    )


def _eval_mean_se(obj, tokens, seed=0):
    """(mean, s.e.) of the per-sequence evaluation NELBO over the rows of `tokens`."""
    sums = jax.jit(obj.eval_sums)(None, {"tokens": jnp.asarray(tokens)}, jax.random.PRNGKey(seed))
    n = float(sums["sequences"])
    mean = float(sums["nats"]) / n
    return mean, float(np.sqrt(max(float(sums["nats_sq"]) / n - mean**2, 0.0) / n))


def _token_nll(logits_LxV, x_L):
    return -(logits_LxV - np.log(np.exp(logits_LxV).sum(-1, keepdims=True)))[np.arange(len(x_L)), x_L]


@pytest.mark.parametrize(
    "schedule,eps", [("linear", 0.0), ("cosine", 0.0), ("linear", 1e-2), ("linear", 0.05), ("cosine", 0.05), ("polynomial", 0.0)]
)
def test_mc_elbo_matches_analytic_integral_for_fixed_logits(schedule, eps):
    rng = np.random.default_rng(0)
    L, V = 6, 5
    logits = rng.normal(size=(L, V)) * 2
    x0 = rng.integers(0, V, size=(1, L))
    c = -(logits - np.log(np.exp(logits).sum(-1, keepdims=True)))[np.arange(L), x0[0]]
    obj = _mdm(FixedLogitsModel(logits), schedule, eps, t_min=1e-3)
    s = obj.schedule
    # E = int_{t_min}^1 -alpha'(t) dt * sum_l c_l = (alpha(t_min) - alpha(1)) * sum_l c_l.
    exact = float(s.alpha(1e-3) - s.alpha(1.0)) * c.sum()
    batch = {"tokens": jnp.asarray(np.repeat(x0, 512, 0), jnp.int32)}
    losses = jax.vmap(lambda k: obj.loss(None, batch, k)[0])(jax.random.split(jax.random.PRNGKey(1), 200))
    per_seq = np.asarray(losses) * L  # loss is per token
    assert abs(per_seq.mean() - exact) < 4 * per_seq.std() / np.sqrt(len(per_seq)) + 1e-6
    # Evaluation is the bound on the samplers' model whatever eps and t_min (they reweight
    # training only). A fixed-logits denoiser samples each position from its own softmax, so
    # -log p(x_0) = sum_l c_l exactly and the bound is tight: both estimators must hit it (the
    # count form's expectation is E_k[(L/k)(k/L) sum_l c_l] = sum_l c_l in closed form).
    nll = c.sum()
    for estimator in ESTIMATORS:
        ev_obj = _mdm(FixedLogitsModel(logits), schedule, eps, t_min=1e-3, estimator=estimator)
        mean, se = _eval_mean_se(ev_obj, batch["tokens"], 2)
        assert abs(mean - nll) < 4 * se + 1e-6, (estimator, mean, nll, se)
    if eps > 0:  # the truncated integral (what eval used to report) is far below -log p
        assert nll - exact > 0.9 * eps * nll


@pytest.mark.parametrize("schedule,eps", [("cosine", 0.0), ("cosine", 0.05), ("linear", 0.05)])
def test_oracle_denoiser_scores_the_true_entropy(schedule, eps):
    """The exact denoiser's NELBO is -log p(x_0) for every x_0 (chain rule in every order), so
    both estimators must average to the entropy, with or without eps, and agree."""
    rng = np.random.default_rng(1)
    L, V = 3, 3
    probs = rng.dirichlet(np.ones(V**L))
    oracle = JointOracleModel(probs, L, V)
    x0 = oracle.sample(rng, 20_000)
    h = oracle.entropy()
    got = {e: _eval_mean_se(_mdm(oracle, schedule, eps, k=4, estimator=e), x0) for e in ESTIMATORS}
    for mean, se in got.values():
        assert abs(mean - h) < 4 * se, (got, h)
        # A wrong weight (e.g. forgetting 1/(1 - alpha)) would be far off; the estimate is tight.
        assert se < 0.02 * h
    (m1, s1), (m2, s2) = got.values()
    assert abs(m1 - m2) < 4 * np.hypot(s1, s2), got


def _exact_nelbo_and_nll(model, L, V):
    """Per x_0 in V^L (enumeration order): the time-agnostic NELBO, by summing over every masked
    subset S with weight 1/(|S| C(L, |S|)), and the samplers' exact -log p(x_0), the uniform
    mixture over the L! unmasking orders of the product of the revealed tokens' probabilities."""
    xs = np.array(list(itertools.product(range(V), repeat=L)), np.int32)
    subsets = [s for r in range(1, L + 1) for s in itertools.combinations(range(L), r)]
    rows = np.repeat(xs, len(subsets), 0)
    for j, sub in enumerate(subsets):
        rows[j :: len(subsets), list(sub)] = V
    logp = np.asarray(jax.nn.log_softmax(model.apply(None, jnp.asarray(rows)), -1), np.float64)
    logp = logp.reshape(len(xs), len(subsets), L, V)
    lp = np.take_along_axis(logp, np.broadcast_to(xs[:, None, :, None], logp.shape[:3] + (1,)), -1)[..., 0]  # [X, S, L]
    index = {sub: j for j, sub in enumerate(subsets)}
    nelbo = sum(-lp[:, index[sub], list(sub)].sum(-1) / (len(sub) * math.comb(L, len(sub))) for sub in subsets)
    orders = []
    for order in itertools.permutations(range(L)):  # reveal order[0] first, with all masked
        orders.append(sum(lp[:, index[tuple(sorted(order[i:]))], order[i]] for i in range(L)))
    nll = -np.log(np.exp(np.stack(orders)).mean(0))
    return xs, nelbo, nll


@pytest.mark.parametrize("eps", [0.0, 0.05])
def test_both_estimators_bound_the_nll_of_an_imperfect_denoiser(eps):
    """An inconsistent denoiser (another joint's exact one, plus fixed logit noise) has a strict
    bound: both estimators match the exact NELBO (enumerated over masks), which is >= its NLL."""
    rng = np.random.default_rng(5)
    L, V = 3, 3
    data = JointOracleModel(rng.dirichlet(np.ones(V**L)), L, V)
    noise = jnp.asarray(rng.normal(size=(L, V)), jnp.float32)

    class Noisy(JointOracleModel):
        def apply(self, variables, tokens_BxL, t_B=None, attention_mask_BxL=None, return_hidden=False):
            return super().apply(variables, tokens_BxL) + noise[None]

    model = Noisy(rng.dirichlet(np.ones(V**L)), L, V)
    _, nelbo_x, nll_x = _exact_nelbo_and_nll(model, L, V)
    assert np.all(nelbo_x >= nll_x - 1e-9) and np.any(nelbo_x > nll_x + 1e-3)
    exact_nelbo, exact_nll = float(data.probs @ nelbo_x), float(data.probs @ nll_x)
    x0 = data.sample(rng, 20_000)
    for estimator in ESTIMATORS:
        mean, se = _eval_mean_se(_mdm(model, "cosine", eps, k=4, estimator=estimator), x0)
        assert abs(mean - exact_nelbo) < 4 * se, (estimator, mean, exact_nelbo, se)
        assert mean > exact_nll - 4 * se


class TimeLogitsModel(FixedLogitsModel):
    """A time-conditioned 'network': logits a + t b, the same for every input."""

    def __init__(self, a, b):
        super().__init__(a)
        self.slope = jnp.asarray(b, jnp.float32)
        self.cfg = dataclasses.replace(self.cfg, time_conditioning=True)

    def apply(self, variables, tokens_BxL, t_B=None, attention_mask_BxL=None, return_hidden=False):
        return super().apply(variables, tokens_BxL) + t_B[:, None, None] * self.slope[None]


@pytest.mark.parametrize("eps", [0.0, 0.05])
def test_time_conditioned_network_gets_the_samplers_time(eps):
    """With t fed to the network, the full-path NELBO is int_0^1 m'(t) sum_l c_l(t) dt, m(t) the
    eps = 0 mask level (the samplers' t); the count form must reach it too through its
    Beta(k, L - k + 1) mask level."""
    rng = np.random.default_rng(6)
    L, V = 5, 4
    a, b = rng.normal(size=(L, V)), 3 * rng.normal(size=(L, V))
    x = rng.integers(0, V, size=(1, L))
    ts = np.linspace(0.0, 1.0, 20_001)
    c_t = np.array([_token_nll(a + t * b, x[0]).sum() for t in ts])
    exact = np.trapezoid(0.5 * np.pi * np.sin(0.5 * np.pi * ts) * c_t, ts)  # cosine: m'(t)
    for estimator in ESTIMATORS:
        mean, se = _eval_mean_se(_mdm(TimeLogitsModel(a, b), "cosine", eps, estimator=estimator), np.repeat(x, 2048, 0), 3)
        assert abs(mean - exact) < 4 * se, (estimator, mean, exact, se)
    assert np.ptp(c_t) > 20 * se  # the time matters far beyond the noise


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_eval_bound_with_padding_counts_real_tokens_only(estimator):
    L, V = 8, 5
    logits = np.random.default_rng(7).normal(size=(L, V)) * 2
    x = np.random.default_rng(8).integers(0, V, (4, L))
    lengths = np.array([8, 5, 2, 1])
    x = np.where(np.arange(L) < lengths[:, None], x, PAD)
    exact = np.mean([_token_nll(logits[:n], x[i, :n]).sum() for i, n in enumerate(lengths)])
    obj = dataclasses.replace(_mdm(FixedLogitsModel(logits), "linear", 0.05, estimator=estimator), mask_padding=True)
    mean, se = _eval_mean_se(obj, np.repeat(x, 1024, 0), 4)
    assert abs(mean - exact) < 4 * se, (mean, exact, se)


def test_unmasked_positions_carry_over_and_add_nothing():
    """Changing the network's logits at positions that stay unmasked leaves the loss unchanged."""
    L, V = 8, 6
    base = np.random.default_rng(2).normal(size=(L, V))
    x0 = jnp.asarray(np.random.default_rng(3).integers(0, V, (16, L)), jnp.int32)

    class Perturbed(FixedLogitsModel):
        def apply(self, variables, tokens, t=None, attention_mask_BxL=None, return_hidden=False):
            out = super().apply(variables, tokens, t)
            return jnp.where((tokens == V)[..., None], out, out + 1e3 * jnp.arange(V)[None, None, :])

    key = jax.random.PRNGKey(0)
    a = _mdm(FixedLogitsModel(base)).loss(None, {"tokens": x0}, key)[0]
    b = _mdm(Perturbed(base)).loss(None, {"tokens": x0}, key)[0]
    assert float(a) == float(b)


class ParamLogitsModel(FixedLogitsModel):
    """Logits come from the params, so gradients show which positions enter the loss."""

    def apply(self, variables, tokens_BxL, t_B=None, attention_mask_BxL=None, return_hidden=False):
        return jnp.broadcast_to(variables["params"], tokens_BxL.shape + variables["params"].shape[-1:])


def test_padding_is_excluded_from_the_loss():
    L, V, pad = 8, 6, 5
    logits = jnp.asarray(np.random.default_rng(4).normal(size=(L, V)), jnp.float32)
    obj = MaskedDiffusionObjective(
        model=ParamLogitsModel(np.zeros((L, V))), pad_id=pad, token_bytes=(1,) * V, schedule=make_schedule("linear")
    )
    x = jnp.asarray([[0, 1, 2, 3, pad, pad, pad, pad]] * 64, jnp.int32)
    grads = jax.grad(lambda p: obj.loss(p, {"tokens": x}, jax.random.PRNGKey(0))[0])(logits)
    assert bool(jnp.all(grads[4:] == 0)) and bool(jnp.all(jnp.any(grads[:4] != 0, -1)))
    sums = obj.eval_sums(logits, {"tokens": x}, jax.random.PRNGKey(1))
    assert float(sums["tokens"]) == 64 * 4 and float(sums["bytes"]) == 64 * 4


def _tiny_model(causal=False, time=False, dtype="float32", vocab=11):
    return Transformer(
        TransformerConfig(
            vocab_size=vocab,
            num_layers=2,
            d_model=32,
            num_heads=4,
            mlp_dim=64,
            causal=causal,
            time_conditioning=time,
            dtype=dtype,
        )
    )


def test_ar_loss_is_the_exact_chain_rule_nll():
    model = _tiny_model(causal=True)
    obj = AutoregressiveObjective(model=model, pad_id=10, token_bytes=(1,) * 11)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 10, (2, 6)), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), tokens)["params"]
    params = jax.tree.map(lambda p: getattr(p, "value", p), params, is_leaf=lambda p: hasattr(p, "value"))
    # Reference: score token l with the inputs after the prefix replaced by junk (one compile).
    apply = jax.jit(lambda x: model.apply({"params": params}, x))
    junk = np.random.default_rng(1).integers(0, 10, (6,))
    ref = 0.0
    for b in range(2):
        for pos in range(6):
            inputs = np.concatenate([[11], np.asarray(tokens[b, :pos]), junk[: 5 - pos]])[None]
            logits = apply(jnp.asarray(inputs, jnp.int32))[0, pos]
            ref -= float(jax.nn.log_softmax(logits)[tokens[b, pos]])
    got = float(obj.eval_sums(params, {"tokens": tokens}, None)["nats"])
    np.testing.assert_allclose(got, ref, rtol=1e-4)


@pytest.mark.parametrize("time", [False, True])
def test_bf16_forward_and_backward_are_finite_on_extreme_rows(time):
    model = _tiny_model(time=time, dtype="bfloat16")
    obj = MaskedDiffusionObjective(model=model, pad_id=10, token_bytes=(1,) * 11, schedule=make_schedule("cosine"))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 10, (3, 16)), jnp.int32)
    from mdm.state import init_params

    params, _ = init_params(obj, jax.random.PRNGKey(0), 16)

    @jax.jit
    def value_and_grad(p, t):
        return jax.value_and_grad(
            lambda q: obj.nelbo_per_example(
                q, tokens, jnp.full((3,), t), jnp.broadcast_to(jnp.linspace(0.0, 0.99, 16), (3, 16))
            ).sum()
        )(p)

    for t in (1e-5, 0.5, 1.0):  # nothing, part and everything masked
        value, grads = value_and_grad(params, t)
        assert np.isfinite(float(value))
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_markov_oracle_denoiser_scores_the_true_entropy_rate():
    from mdm.data import MarkovLanguage
    from oracles import MarkovOracleModel

    lang = MarkovLanguage(vocab=5, seed=3)
    L = 16
    x0 = lang.sample(4000, L, seed=1)
    obj = _mdm(MarkovOracleModel(lang), "linear", k=2)
    sums = jax.jit(lambda x: obj.eval_sums(None, {"tokens": x}, jax.random.PRNGKey(0)))(jnp.asarray(x0))
    n = float(sums["sequences"])
    mean = float(sums["nats"]) / n
    se = np.sqrt((float(sums["nats_sq"]) / n - mean**2) / n)
    exact = lang.entropy(L)
    assert abs(mean - exact) < 4 * se, (mean, exact, se)
    assert se < 0.02 * exact


def test_nan_params_never_evaluate_as_perfect():
    """A NaN network must not score 0 nats (a masked row's NaN used to be zeroed): the sums stay
    NaN and the summary refuses them with one line."""
    L, V = 6, 5
    obj = _mdm(FixedLogitsModel(np.full((L, V), np.nan)))
    x0 = jnp.asarray(np.random.default_rng(0).integers(0, V, (8, L)), jnp.int32)
    sums = obj.eval_sums(None, {"tokens": x0}, jax.random.PRNGKey(0))
    assert np.isnan(float(sums["nats"]))
    with pytest.raises(TrainingError, match="non-finite") as err:
        summarize_eval({k: float(v) for k, v in sums.items()}, "eval")
    assert "\n" not in str(err.value)


def test_each_objective_says_what_its_evaluation_number_is():
    """Pad mode shows the MDM each row's length, so its number is conditional on it; AR is exact."""
    L, V = 6, 5
    model = FixedLogitsModel(np.zeros((L, V)))
    mdm_pack, mdm_pad = _mdm(model), dataclasses.replace(_mdm(model), mask_padding=True)
    ar = AutoregressiveObjective(model=model, pad_id=V - 1, token_bytes=(1,) * V)
    assert mdm_pack.likelihood == "upper bound on -log p(x)"
    assert mdm_pad.likelihood == "upper bound on -log p(x | length)"
    assert ar.likelihood == "exact -log p(x)"
