"""The autoregressive baseline: next-token NLL on the same windows, in the same units.

The input is the window shifted right by one with the mask id as a start symbol, so every one of
the L tokens is scored (the MDM's NELBO also covers all L); nats/token is comparable.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import Array

from mdm import process
from mdm.objectives.base import Objective, per_example_sums


@dataclasses.dataclass(frozen=True, kw_only=True)
class AutoregressiveObjective(Objective):
    """Exact log-likelihood of a causal transformer."""

    @property
    def likelihood(self) -> str:
        return "exact -log p(x)"

    def nll_per_example(self, params, tokens_BxL: Array) -> Array:
        """float32[B]: -log p(x) summed over the non-padding positions."""
        start = jnp.full_like(tokens_BxL[:, :1], process.mask_id(self.vocab_size))
        inputs = jnp.concatenate([start, tokens_BxL[:, :-1]], axis=1)
        return self.token_nll(params, inputs, tokens_BxL, needed_BxL=self.real_tokens(tokens_BxL)).sum(-1)

    def loss(self, params, batch, rng, frozen=None):
        del rng  # deterministic objective
        tokens = batch["tokens"]
        loss = self.nll_per_example(params, tokens).sum() / jnp.maximum(self.real_tokens(tokens).sum(), 1)
        return loss, {"loss": loss}

    def eval_sums(self, params, batch, rng, frozen=None):
        del rng
        tokens = batch["tokens"]
        return per_example_sums(
            self.nll_per_example(params, tokens),
            self.real_tokens(tokens).sum(-1),
            self.bytes_per_example(tokens),
        )
