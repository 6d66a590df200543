"""SMDM's unsupervised classifier-free guidance, checked against a two-call reference and an
exact oracle law."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mdm.errors import ConfigError
from mdm.generation import generate
from mdm.networks import Transformer, TransformerConfig
from mdm.objectives import AutoregressiveObjective, MaskedDiffusionObjective
from mdm.samplers import SamplerSettings, make_sampler
from mdm.samplers.guidance import guided_denoiser
from mdm.schedules import make_schedule
from oracles import JointOracleModel

L, V = 3, 3
MASK = V


def _oracle_objective(seed: int = 0) -> MaskedDiffusionObjective:
    probs = np.random.default_rng(seed).dirichlet(np.full(V**L, 0.5))
    return MaskedDiffusionObjective(
        model=JointOracleModel(probs, L, V), pad_id=-1, token_bytes=(1,) * V, schedule=make_schedule("linear")
    )


def test_guided_logits_equal_the_formula_with_two_separate_calls():
    """(1 + w) f(x) - w f(x with the context masked), for a real network, in one 2B-row call."""
    cfg = TransformerConfig(vocab_size=11, num_layers=2, d_model=32, num_heads=2, mlp_dim=64, time_conditioning=True)
    model = Transformer(cfg)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 10), 0, 12)  # 11 is the mask id
    t = jax.random.uniform(jax.random.PRNGKey(2), (4,))
    params = model.init(jax.random.PRNGKey(0), tokens, t)["params"]
    context = jnp.zeros((4, 10), bool).at[:, :3].set(True).at[2, 5].set(True)
    f = lambda x, t: model.apply({"params": params}, x, t)  # noqa: E731
    with jax.default_matmul_precision("highest"):
        for w in (0.0, 0.5, 2.0):
            got = guided_denoiser(f, context, w, 11)(tokens, t)
            want = (1 + w) * f(tokens, t) - w * f(jnp.where(context, 11, tokens), t)
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", ["fhs", "ancestral", "confidence"])
def test_scale_zero_gives_the_same_tokens_as_no_guidance(sampler):
    objective = _oracle_objective()
    denoiser = objective.denoiser(None)
    settings = SamplerSettings(sampler, steps=None if sampler == "fhs" else L)
    run = jax.jit(make_sampler(settings, mask=MASK, schedule=objective.schedule), static_argnums=0)
    keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.PRNGKey(3), r))(jnp.arange(64))
    canvas = jnp.broadcast_to(jnp.asarray([1, MASK, MASK], jnp.int32), (64, L))
    plain = run(denoiser, keys, canvas).tokens
    guided = run(guided_denoiser(denoiser, canvas != MASK, 0.0, MASK), keys, canvas).tokens
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(guided))
    out = generate(objective, None, settings, np.asarray([1, MASK, MASK], np.int32), 8, seed=5, progress=False)
    again = generate(
        objective,
        None,
        SamplerSettings(**{**vars(settings), "cfg_scale": 0.0}),
        np.asarray([1, MASK, MASK]),
        8,
        seed=5,
        progress=False,
    )
    np.testing.assert_array_equal(out["tokens"], again["tokens"])


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_a_guided_step_draws_from_the_tilted_conditional(scale):
    """One ancestral step from [c, M, M] reveals both positions from the guided logits of one
    call: each is drawn from p(x_l | c)^(1 + w) / p(x_l)^w, normalised (chi-square, exact law)."""
    objective = _oracle_objective(seed=4)
    probs = objective.model.probs.reshape((V,) * L)
    context = 2
    conditional = probs[context] / probs[context].sum()  # p(x_1, x_2 | x_0 = c)
    marginal = probs.sum(0)  # p(x_1, x_2)
    tilted = []
    for axis in (1, 0):  # position 1 sums out x_2, position 2 sums out x_1
        p_c, p_u = conditional.sum(axis), marginal.sum(axis)
        q = p_c ** (1 + scale) / p_u**scale
        tilted.append(q / q.sum())
    expected = np.outer(*tilted).ravel()
    n = 20_000
    settings = SamplerSettings("ancestral", steps=1, cfg_scale=scale)
    out = generate(objective, None, settings, np.asarray([context, MASK, MASK], np.int32), n, batch_size=n, progress=False)
    tokens = out["tokens"]
    assert np.all(tokens[:, 0] == context)
    counts = np.bincount(tokens[:, 1] * V + tokens[:, 2], minlength=V * V)
    assert stats.chisquare(counts, expected * n).pvalue > 1e-3
    # and the tilt is visible: the plain conditional is rejected at this sample size
    plain = np.outer(conditional.sum(1), conditional.sum(0)).ravel()
    assert stats.chisquare(counts, plain * n).pvalue < 1e-6


def test_bad_guidance_requests_are_one_line_errors():
    objective = _oracle_objective()
    canvas = np.asarray([1, MASK, MASK], np.int32)
    with pytest.raises(ConfigError, match="cfg_scale=-0.5 must be >= 0"):
        generate(objective, None, SamplerSettings("fhs", cfg_scale=-0.5), canvas, 1, progress=False)
    cfg = TransformerConfig(vocab_size=V, num_layers=1, d_model=16, num_heads=2, mlp_dim=32, causal=True)
    ar = AutoregressiveObjective(model=Transformer(cfg), pad_id=-1, token_bytes=(1,) * V)
    with pytest.raises(ConfigError, match="--cfg_scale guides a masked diffusion model"):
        generate(ar, None, SamplerSettings("fhs", cfg_scale=1.0), canvas, 1, progress=False)
