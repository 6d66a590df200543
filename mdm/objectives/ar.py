"""The autoregressive baseline: next-token NLL on the same windows, in the same units.

The input is the window shifted right by one with the mask id as a start symbol, so every one of
the L tokens is scored (the MDM's NELBO also covers all L); nats/token is comparable.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import jax.numpy as jnp
from jax import Array

from mdm.errors import ConfigError
from mdm.objectives.base import Objective, per_example_sums, shared_fields, shift_right


@dataclasses.dataclass(frozen=True, kw_only=True)
class AutoregressiveObjective(Objective):
    """Exact log-likelihood of a causal transformer."""

    decoding: ClassVar[str] = "autoregressive"

    @property
    def likelihood(self) -> str:
        return "exact -log p(response | prompt)" if self.pairs else "exact -log p(x)"

    def nll_per_example(self, params, tokens_BxL: Array, modelled_BxL: Array | None = None) -> Array:
        """float32[B]: -log p(x_l | x_<l) summed over the modelled positions (default: the
        non-padding ones; in prompt/response batches the response, conditioned on the prompt)."""
        inputs = shift_right(tokens_BxL, self.mask_id)
        needed = self.real_tokens(tokens_BxL) if modelled_BxL is None else modelled_BxL
        return self.token_nll(params, inputs, tokens_BxL, needed_BxL=needed).sum(-1)

    def denoiser(self, params):
        """(tokens int[B, L], t) -> logits float[B, L, V] where position i is p(x_i | tokens[:i])
        (t is ignored): the next-token model seen through the sampler seam."""
        return lambda tokens, t: self.model.apply({"params": params}, shift_right(tokens, self.mask_id))

    def sampling_settings(self, settings, canvas_L):
        """Any sampler request decodes left to right; EDLM and infilling need an MDM."""
        if settings.sampler == "edlm":
            raise ConfigError(
                "--sampler edlm corrects an MDM denoiser; pass an MDM run as --workdir (the AR run goes to --energy_workdir)"
            )
        masked = np.asarray(canvas_L) == self.mask_id
        if masked.any() and not masked[int(np.argmax(masked)) :].all():
            raise ConfigError("an AR model can only continue a prompt; --infill needs an MDM checkpoint")
        return dataclasses.replace(settings, sampler="autoregressive")

    def loss(self, params, batch, rng, frozen=None):
        del rng  # deterministic objective
        modelled, _ = self.positions(batch)  # causal: later padding never reaches an earlier position
        loss = self.nll_per_example(params, batch["tokens"], modelled).sum() / jnp.maximum(self.counted(batch).sum(), 1)
        return loss, {"loss": loss}

    def eval_sums(self, params, batch, rng, frozen=None):
        del rng
        tokens = batch["tokens"]
        modelled, _ = self.positions(batch)
        counted = self.counted(batch)
        return per_example_sums(
            self.nll_per_example(params, tokens, modelled),
            counted.sum(-1),
            self.bytes_per_example(tokens, counted),
        )


def from_config(config, model, pad_id: int, token_bytes) -> AutoregressiveObjective:
    """The next-token NLL for the causal `model`."""
    return AutoregressiveObjective(model=model, **shared_fields(config, pad_id, token_bytes))
