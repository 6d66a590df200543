"""Discrete time grids on [0, 1], shared by the samplers, MCD distillation and the EDLM bound.

A grid maps a coordinate u in [0, 1] to a time t = grid_time(u): 'uniform' is t = u and
'cosine' is t = sin(pi u / 2) (finer steps near t = 0). A T-step sampler visits
u_i = 1 - i / T, i = 0..T, so its times fall from 1 to 0.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import Array

GRIDS = ("uniform", "cosine")


def _check(grid: str) -> None:
    if grid not in GRIDS:
        raise ValueError(f"unknown time grid {grid!r}; choose one of {', '.join(GRIDS)}")


def grid_time(u: Array, grid: str) -> Array:
    """Time t of grid coordinate u in [0, 1]."""
    _check(grid)
    return u if grid == "uniform" else jnp.sin(0.5 * math.pi * u)


def grid_coordinate(t: Array, grid: str) -> Array:
    """u with grid_time(u) = t (the inverse of `grid_time` on [0, 1])."""
    _check(grid)
    return t if grid == "uniform" else (2.0 / math.pi) * jnp.arcsin(jnp.clip(t, 0.0, 1.0))


def time_grid(steps: int, grid: str = "uniform") -> Array:
    """float32[steps + 1]: the times of a `steps`-step sampler, from exactly 1 down to exactly 0."""
    _check(grid)
    i = jnp.arange(steps + 1, dtype=jnp.float32) / steps
    if grid == "uniform":
        return 1.0 - i
    return jnp.where(i < 1, jnp.cos(0.5 * math.pi * i), 0.0)  # = grid_time(1 - i), computed without cancellation
