"""Noise schedules of the absorbing-state process.

alpha(t) is the probability that a token is still clean at time t in [0, 1]; alpha(0) = 1 and
alpha decreases. Every schedule here is `alpha(t) = eps + (1 - eps) * a(t)` for a base curve
`a` with a(0) = 1 and a(1) = 0, so alpha(1) = eps ("eps clipping"; eps = 1e-3 on the linear
curve is MDLM's log-linear schedule). The ELBO weight -alpha'(t) / (1 - alpha(t)) does not
depend on eps, and each schedule computes it and 1 - alpha(t) in a cancellation-free form.
All functions are elementwise on arrays of times and work under jit, grad and vmap.
"""

from __future__ import annotations

import abc
import dataclasses
import math

import jax.numpy as jnp
from jax import Array

from mdm.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Schedule(abc.ABC):
    """Base class: subclasses define the base curve through `_one_minus_a`, `_da` and `_t_of_a`."""

    eps: float = 0.0

    @abc.abstractmethod
    def _one_minus_a(self, t: Array) -> Array:
        """1 - a(t)."""

    @abc.abstractmethod
    def _da(self, t: Array) -> Array:
        """a'(t)."""

    @abc.abstractmethod
    def _t_of_one_minus_a(self, m: Array) -> Array:
        """a^-1(1 - m)."""

    @abc.abstractmethod
    def _weight(self, t: Array) -> Array:
        """-a'(t) / (1 - a(t))."""

    def alpha(self, t: Array) -> Array:
        """P(token still clean at t)."""
        return 1.0 - self.mask_prob(t)

    def mask_prob(self, t: Array) -> Array:
        """1 - alpha(t): the probability that a token is masked at t, computed without cancellation."""
        return (1.0 - self.eps) * self._one_minus_a(t)

    def dalpha(self, t: Array) -> Array:
        """alpha'(t) (<= 0)."""
        return (1.0 - self.eps) * self._da(t)

    def weight(self, t: Array) -> Array:
        """The continuous-time ELBO weight -alpha'(t) / (1 - alpha(t)) (> 0)."""
        return self._weight(t)

    def inverse(self, alpha: Array) -> Array:
        """t such that alpha(t) = alpha, for alpha in [eps, 1]."""
        return self.time_of_mask_prob(1.0 - alpha)

    def time_of_mask_prob(self, mask_prob: Array) -> Array:
        """t such that 1 - alpha(t) = mask_prob, for mask_prob in [0, 1 - eps] (stable near 0)."""
        m = jnp.clip(mask_prob / (1.0 - self.eps), 0.0, 1.0)
        return self._t_of_one_minus_a(m)


@dataclasses.dataclass(frozen=True)
class PolynomialSchedule(Schedule):
    """a(t) = 1 - t**power; power = 1 is the linear schedule (log-linear with eps > 0)."""

    power: float = 1.0

    def _one_minus_a(self, t):
        return t**self.power

    def _da(self, t):
        return -self.power * t ** (self.power - 1.0)

    def _t_of_one_minus_a(self, m):
        return m ** (1.0 / self.power)

    def _weight(self, t):
        return self.power / t


@dataclasses.dataclass(frozen=True)
class CosineSchedule(Schedule):
    """a(t) = cos(pi t / 2)."""

    def _one_minus_a(self, t):
        return 2.0 * jnp.sin(0.25 * math.pi * t) ** 2

    def _da(self, t):
        return -0.5 * math.pi * jnp.sin(0.5 * math.pi * t)

    def _t_of_one_minus_a(self, m):
        # 1 - cos(pi t / 2) = m  <=>  sin(pi t / 4) = sqrt(m / 2).
        return (4.0 / math.pi) * jnp.arcsin(jnp.sqrt(0.5 * m))

    def _weight(self, t):
        # sin(x) / (1 - cos(x)) = cot(x / 2) with x = pi t / 2.
        return 0.5 * math.pi / jnp.tan(0.25 * math.pi * t)


SCHEDULES = ("linear", "cosine", "polynomial")


def make_schedule(name: str, eps: float = 0.0, power: float = 2.0) -> Schedule:
    """Builds a schedule by name: 'linear', 'cosine' or 'polynomial' (with `power`)."""
    if not 0.0 <= eps < 1.0:
        raise ConfigError(f"schedule eps={eps} must lie in [0, 1); use e.g. --config.diffusion.eps=0.0")
    if name == "linear":
        return PolynomialSchedule(eps=eps, power=1.0)
    if name == "polynomial":
        if power <= 0:
            raise ConfigError(f"polynomial schedule power={power} must be > 0")
        return PolynomialSchedule(eps=eps, power=float(power))
    if name == "cosine":
        return CosineSchedule(eps=eps)
    raise ConfigError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
