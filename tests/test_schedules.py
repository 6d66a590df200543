"""Schedules: endpoints, derivatives, inverses and the ELBO weight against float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm.errors import ConfigError
from mdm.schedules import CosineSchedule, PolynomialSchedule, make_schedule

SCHEDULES = {
    "linear": make_schedule("linear"),
    "loglinear": make_schedule("linear", eps=1e-3),
    "cosine": make_schedule("cosine"),
    "cosine_eps": make_schedule("cosine", eps=1e-3),
    "poly2": make_schedule("polynomial", power=2.0),
    "poly_half_eps": make_schedule("polynomial", eps=1e-2, power=0.5),
}


def _raw_alpha(schedule, t):
    """alpha(t) from the textbook formula, written independently of the class (float64)."""
    if isinstance(schedule, CosineSchedule):
        a = np.cos(np.pi * t / 2)
    else:
        a = 1.0 - t**schedule.power
    return schedule.eps + (1.0 - schedule.eps) * a


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_alpha_matches_textbook_formula_and_endpoints(name):
    s = SCHEDULES[name]
    t = np.linspace(0.0, 1.0, 101)
    with jax.enable_x64(True):
        got = np.asarray(s.alpha(jnp.asarray(t)))
    np.testing.assert_allclose(got, _raw_alpha(s, t), rtol=1e-12, atol=1e-14)
    assert got[0] == 1.0
    np.testing.assert_allclose(got[-1], s.eps, atol=1e-15)
    assert np.all(np.diff(got) < 0)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_derivative_and_weight_match_autodiff_in_float64(name):
    s = SCHEDULES[name]
    t = np.linspace(0.01, 0.99, 100)
    with jax.enable_x64(True):
        t64 = jnp.asarray(t)
        grad = jax.vmap(jax.grad(lambda x: s.alpha(x)))(t64)
        dalpha = s.dalpha(t64)
        weight = s.weight(t64)
        ref_weight = -grad / (1.0 - s.alpha(t64))
    np.testing.assert_allclose(dalpha, grad, rtol=1e-10)
    np.testing.assert_allclose(weight, ref_weight, rtol=1e-10)
    # Finite differences of the independent textbook formula.
    h = 1e-6
    fd = (_raw_alpha(s, t + h) - _raw_alpha(s, t - h)) / (2 * h)
    np.testing.assert_allclose(np.asarray(dalpha), fd, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_inverse_round_trips(name):
    s = SCHEDULES[name]
    t = np.linspace(0.0, 1.0, 201)
    with jax.enable_x64(True):
        back = s.inverse(s.alpha(jnp.asarray(t)))
        back_m = s.time_of_mask_prob(s.mask_prob(jnp.asarray(t)))
    np.testing.assert_allclose(back, t, atol=1e-7)
    np.testing.assert_allclose(back_m, t, atol=1e-7)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_float32_weight_is_finite_and_close_to_float64(name):
    s = SCHEDULES[name]
    t32 = jnp.asarray([1e-5, 1e-3, 0.5, 1 - 1e-6], jnp.float32)
    w32 = np.asarray(s.weight(t32))
    m32 = np.asarray(s.mask_prob(t32))
    assert np.all(np.isfinite(w32)) and np.all(w32 > 0)
    with jax.enable_x64(True):
        t64 = jnp.asarray(np.asarray(t32, np.float64))
        w64 = np.asarray(-jax.vmap(jax.grad(s.alpha))(t64) / (1 - s.alpha(t64)))
        m64 = np.asarray(1 - s.alpha(t64))
    np.testing.assert_allclose(w32, w64, rtol=1e-5)
    # 1 - alpha is computed without cancellation even at tiny t.
    np.testing.assert_allclose(m32, m64, rtol=1e-5)


def test_linear_weight_is_one_over_t_whatever_eps():
    t = jnp.asarray([0.1, 0.5, 0.9])
    for eps in (0.0, 1e-3, 0.3):
        np.testing.assert_allclose(PolynomialSchedule(eps=eps, power=1.0).weight(t), 1 / t, rtol=1e-6)


def test_bad_schedule_names_and_values_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown schedule 'cosinus'"):
        make_schedule("cosinus")
    with pytest.raises(ConfigError, match="eps"):
        make_schedule("linear", eps=1.0)
    with pytest.raises(ConfigError, match="power"):
        make_schedule("polynomial", power=0.0)
