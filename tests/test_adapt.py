"""AR -> MDM adaptation: the shift reuses the AR head, attention anneals from causal to bidirectional.

References: the AR twin's own causal forward (`is_causal`, not the dense annealing mask), a
bidirectional MDM without annealing, and a binomial test of the annealed mask's density.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm.errors import ConfigError
from mdm.loop import run
from mdm.metrics import read_metrics
from mdm.networks import Transformer, TransformerConfig
from mdm.objectives import AutoregressiveObjective, MaskedDiffusionObjective
from mdm.schedules import make_schedule
from mdm.state import init_state, make_train_step
from test_loop import tiny_config

V, L, PAD = 13, 16, 12
CFG = TransformerConfig(vocab_size=V, num_layers=2, d_model=32, num_heads=4, mlp_dim=64)


def _mdm(cfg=CFG, **fields) -> MaskedDiffusionObjective:
    fields = {"shift": True, "anneal_steps": 10, **fields}
    return MaskedDiffusionObjective(
        model=Transformer(cfg), pad_id=PAD, token_bytes=(1,) * V, schedule=make_schedule("linear", 0.0, 2.0), **fields
    )


def _params(seed=0):
    return Transformer(CFG).init(jax.random.PRNGKey(seed), jnp.zeros((1, L), jnp.int32))["params"]


def _tokens(batch=4, seed=1):
    return jax.random.randint(jax.random.PRNGKey(seed), (batch, L), 0, PAD)  # no padding


def test_at_step_zero_the_adapted_mdm_on_a_clean_prefix_is_the_ar_model():
    """Causal mask (step 0) + shift: logits at positions 0..P (clean x_<l) equal the AR twin's
    next-token logits, whatever the masked suffix holds."""
    params, x = _params(), _tokens()
    ar = AutoregressiveObjective(model=Transformer(dataclasses.replace(CFG, causal=True)), pad_id=PAD, token_bytes=(1,) * V)
    obj = _mdm()
    visible = obj.annealed_visible(jnp.int32(0), jax.random.PRNGKey(5), L)
    with jax.default_matmul_precision("highest"):
        want = np.asarray(ar.denoiser(params)(x, None))
        for prefix in (0, 5, L - 1):
            x_t = x.at[:, prefix:].set(obj.mask_id)
            got = np.asarray(obj.network_logits(params, x_t, visible_LxL=visible))
            scale = np.abs(want).max()
            np.testing.assert_allclose(got[:, : prefix + 1], want[:, : prefix + 1], rtol=1e-5, atol=1e-5 * scale)
        # Bidirectional (evaluation, sampling): position 0 now reads the later clean tokens.
        free = np.asarray(obj.denoiser(params)(x, None))
    assert np.abs(free[:, 0] - want[:, 0]).max() > 1e-3


def test_the_annealing_schedule_reaches_bidirectional_at_the_configured_step_and_stays():
    obj = _mdm(anneal_steps=40)
    ratios = [float(obj.anneal_ratio(jnp.int32(s))) for s in (0, 10, 20, 39, 40, 41, 400)]
    assert ratios == pytest.approx([0.0, 0.25, 0.5, 39 / 40, 1.0, 1.0, 1.0])
    key = jax.random.PRNGKey(3)
    tril = np.tril(np.ones((64, 64), bool))
    np.testing.assert_array_equal(np.asarray(obj.annealed_visible(jnp.int32(0), key, 64)), tril)
    for step in (40, 41, 4000):
        assert np.asarray(obj.annealed_visible(jnp.int32(step), key, 64)).all()
    # Half way: each later key visible with probability 1/2 (2016 of them; 5 sigma = 0.056).
    half = np.asarray(obj.annealed_visible(jnp.int32(20), key, 64))
    assert half[tril].all()
    assert abs(half[~tril].mean() - 0.5) < 0.056
    other = np.asarray(obj.annealed_visible(jnp.int32(20), jax.random.PRNGKey(4), 64))
    assert (other != half).any()  # a fresh draw per batch


def test_the_training_loss_follows_the_anneal_from_the_ar_model_to_the_mdm():
    """Same rng, same params: the annealed loss at step 0 equals the loss of the causal network
    (attention by `is_causal`), at and after anneal_steps that of the bidirectional one, and in
    between neither."""
    params, x = _params(), _tokens(8)
    batch, rng = {"tokens": x}, jax.random.PRNGKey(7)
    obj = _mdm(anneal_steps=10)
    causal = _mdm(dataclasses.replace(CFG, causal=True), anneal_steps=0)
    bidirectional = _mdm(anneal_steps=0)
    with jax.default_matmul_precision("highest"):
        loss = lambda o, step: float(o.loss(params, batch, rng, None if step is None else jnp.int32(step))[0])  # noqa: E731
        want_causal, want_free = loss(causal, None), loss(bidirectional, None)
        assert loss(obj, 0) == pytest.approx(want_causal, rel=1e-5)
        assert loss(obj, 10) == pytest.approx(want_free, rel=1e-5)
        assert loss(obj, 25) == pytest.approx(want_free, rel=1e-5)
        middle = loss(obj, 5)
    assert abs(middle - want_causal) > 1e-4 and abs(middle - want_free) > 1e-4
    # Evaluation never anneals: the bound is the bidirectional model's, whatever the step.
    sums = [obj.eval_sums(params, batch, rng, jnp.int32(s))["nats"] for s in (0, 5)]
    assert float(sums[0]) == float(sums[1]) == pytest.approx(float(bidirectional.eval_sums(params, batch, rng)["nats"]), rel=1e-6)


def test_the_train_step_counts_updates_in_the_frozen_tree():
    import optax

    obj = _mdm(anneal_steps=3)
    state = init_state(obj, optax.adam(1e-3), jax.random.PRNGKey(0), L, _params())
    assert int(state.frozen) == 0
    step = jax.jit(make_train_step(obj, optax.adam(1e-3), 0.9, 1))
    for i in range(1, 4):
        state, _ = step(state, {"tokens": _tokens(4, i)}, jax.random.PRNGKey(i))
        assert int(state.frozen) == i == int(state.step)


def test_the_shift_reads_the_padding_mask_one_position_later():
    """Pad mode: the shifted input holds the start symbol and the n real tokens, all visible."""
    obj = _mdm(anneal_steps=0, mask_padding=True)
    x = _tokens(2).at[0, 9:].set(PAD)
    inputs, mask = obj.network_inputs(x, obj.attention_mask(x))
    np.testing.assert_array_equal(np.asarray(inputs[:, 1:]), np.asarray(x[:, :-1]))
    assert (np.asarray(inputs[:, 0]) == obj.mask_id).all()
    np.testing.assert_array_equal(np.asarray(mask).sum(-1), [10, L])


def test_an_ar_run_adapts_into_an_mdm_that_resumes_exactly(tmp_path):
    """train.py's path: an MDM starts from an AR run only with the shift; a run killed mid-anneal
    (step 6 of 8, resumed from step 4) resumes exactly: the counter is saved. Another shift or
    anneal length on resume, or from a shifted run, is one line."""
    run(tiny_config(objective="ar"), tmp_path / "ar")
    plain = tiny_config(**{"init.workdir": str(tmp_path / "ar")})
    with pytest.raises(ConfigError, match="configs/adapt.py") as e:
        run(plain, tmp_path / "plain")
    assert "\n" not in str(e.value)
    adapt = tiny_config(**{"init.workdir": str(tmp_path / "ar"), "diffusion.shift": True, "diffusion.anneal_steps": 8})
    run(adapt, tmp_path / "straight")
    run(adapt, tmp_path / "killed", stop_at_step=6)
    run(adapt, tmp_path / "killed")
    strip = lambda rs: [{k: v for k, v in r.items() if k != "train/tokens_per_s"} for r in rs]  # noqa: E731
    straight = strip(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    assert strip(read_metrics(tmp_path / "killed" / "metrics.jsonl")) == straight
    assert any("eval/nats_per_token" in r for r in straight)
    from mdm.errors import CheckpointError

    with pytest.raises(CheckpointError, match="diffusion.anneal_steps=8") as e:
        run(tiny_config(**{"init.workdir": str(tmp_path / "ar"), "diffusion.shift": True}), tmp_path / "straight")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="--config.diffusion.shift=true") as e:
        run(tiny_config(**{"init.workdir": str(tmp_path / "straight")}), tmp_path / "unshifted")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"objective": "ar", "diffusion.shift": True}, "not 'ar'"),
        ({"objective": "bd3lm", "diffusion.anneal_steps": 10}, "not 'bd3lm'"),
        ({"diffusion.anneal_steps": -1}, "diffusion.anneal_steps=-1"),
    ],
)
def test_bad_adaptation_settings_are_one_line(overrides, needle):
    with pytest.raises(ConfigError) as e:
        tiny_config(**overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_distilling_or_energy_training_from_a_shifted_mdm_is_refused():
    from mdm.config import base_config
    from mdm.objectives.mcd import check_teacher_config
    from mdm.objectives.nce import NCEObjective

    mine, teacher = base_config(), base_config()
    mine.objective, mine.init.workdir = "mcd", "runs/adapt"
    teacher.diffusion.shift = True
    with pytest.raises(ConfigError, match="AR-adapted"):
        check_teacher_config(mine, teacher)
    with pytest.raises(ConfigError, match="AR-adapted"):
        NCEObjective.check_source(None, mine, teacher)
