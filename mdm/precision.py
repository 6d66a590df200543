"""The matmul precision of each path, explicit in code.

float32 matmuls run at JAX's DEFAULT precision unless told otherwise, which is TF32 on NVIDIA
Ampere/Hopper GPUs (10-bit mantissa) and one bf16 pass on TPUs: fast, but not float32. So every
jitted entry point traces its body under the precision its path needs:

| path       | float32 matmuls | why |
|------------|-----------------|-----|
| training   | DEFAULT         | speed; SGD noise dwarfs TF32 rounding |
| evaluation | HIGHEST         | reported likelihoods and bounds are float32-exact on every backend |
| sampling   | HIGHEST         | exact samplers draw from the logits float32 computes |
| energy     | HIGHEST         | EDLM energies and importance weights, exact like the bounds |

Operands already in bfloat16 (a model with `model.dtype=bfloat16`) are not affected: their
products are bf16 x bf16 with float32 accumulation on every backend and every path.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import jax

POLICY = {"training": "default", "evaluation": "highest", "sampling": "highest", "energy": "highest"}

F = TypeVar("F", bound=Callable)


def scope(path: str):
    """A context manager: matmuls traced inside it use `path`'s precision."""
    return jax.default_matmul_precision(POLICY[path])


def under(path: str, fn: F) -> F:
    """`fn` with its body traced under `path`'s precision (wrap before `jax.jit`)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with scope(path):
            return fn(*args, **kwargs)

    return wrapped
