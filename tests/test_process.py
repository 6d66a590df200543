"""Forward process: masking frequency, padding, stratified times, sharding-invariant noise."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from mdm import process
from mdm.schedules import make_schedule


def test_mask_id_is_one_past_the_vocabulary():
    assert process.mask_id(259) == 259


def test_masking_frequency_equals_one_minus_alpha():
    schedule = make_schedule("cosine")
    t = jnp.asarray([0.05, 0.3, 0.6, 0.95])
    n = 20_000
    tokens = jnp.zeros((4, n), jnp.int32)
    uniforms = process.example_uniforms(jax.random.PRNGKey(0), 4, n)
    x_t = process.forward_mask(tokens, schedule.mask_prob(t), uniforms, mask=7, pad=None)
    counts = np.asarray((x_t == 7).sum(-1))
    p = np.asarray(1 - schedule.alpha(t))
    for k, pk in zip(counts, p):
        assert stats.binomtest(int(k), n, float(pk)).pvalue > 1e-3


def test_padding_is_never_masked():
    tokens = jnp.where(jnp.arange(64) < 40, 3, 9)[None].repeat(256, 0)
    uniforms = process.example_uniforms(jax.random.PRNGKey(1), 256, 64)
    x_t = process.forward_mask(tokens, jnp.ones((256,)), uniforms, mask=10, pad=9)
    assert bool(jnp.all(x_t[:, 40:] == 9)) and bool(jnp.all(x_t[:, :40] == 10))


def test_stratified_times_put_one_time_in_each_stratum():
    for seed in range(5):
        t = np.asarray(process.stratified_times(jax.random.PRNGKey(seed), 64, t_min=0.0))
        strata = np.floor(t * 64).astype(int)
        assert sorted(strata) == list(range(64))
    t = np.asarray(process.stratified_times(jax.random.PRNGKey(0), 16, t_min=0.1))
    assert t.min() >= 0.1 and t.max() < 1.0


def test_example_noise_does_not_depend_on_batch_split():
    key = jax.random.PRNGKey(3)
    full = process.example_uniforms(key, 8, 5)
    # Row b depends only on (key, b): recomputing one row alone gives the same numbers.
    row5 = jax.random.uniform(jax.random.fold_in(key, 5), (5,))
    np.testing.assert_array_equal(full[5], row5)
