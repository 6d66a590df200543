"""The masked-diffusion objective: the continuous-time ELBO with the SUBS parameterisation.

NELBO(x_0) = int_0^1 w(t) E_{x_t ~ q(.|x_0)} [ sum_{l: x_t^l = mask} -log mu(x_t)^l[x_0^l] ] dt,
w(t) = -alpha'(t) / (1 - alpha(t)). SUBS: the network has no mask logit (it cannot predict the
mask), and unmasked positions carry over, so only masked positions enter the sum.

Training estimator: one t per sequence, stratified over the batch on [t_min, 1], so the loss is
an unbiased estimate of the integral over [t_min, 1] (the dropped sliver costs about t_min of the
loss, relatively). Evaluation: `eval_t_samples` stratified times per sequence (its own offset per
sequence); the per-sequence estimate is unbiased and its Monte-Carlo variance falls as
1/eval_t_samples (faster, thanks to stratification). Reported standard errors are across
sequences, so they include both the data spread and the Monte-Carlo noise.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import Array

from mdm import process
from mdm.objectives.base import Objective, per_example_sums
from mdm.schedules import Schedule


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaskedDiffusionObjective(Objective):
    """MDLM/MD4-style masked diffusion ELBO."""

    schedule: Schedule
    t_min: float = 1e-5
    eval_t_samples: int = 8

    @property
    def mask_id(self) -> int:
        return process.mask_id(self.vocab_size)

    def nelbo_per_example(self, params, tokens_BxL: Array, t_B: Array, uniforms_BxL: Array) -> Array:
        """float32[B]: w(t_b) * sum of -log mu at the masked positions of x_t ~ q(.|x_0, t_b)."""
        x_t = process.forward_mask(tokens_BxL, self.schedule.mask_prob(t_B), uniforms_BxL, self.mask_id, self.pad_id)
        masked_BxL = x_t == self.mask_id
        nll_B = self.token_nll(params, x_t, tokens_BxL, t_B, self.attention_mask(tokens_BxL), needed_BxL=masked_BxL).sum(-1)
        # A row with no mask adds 0 even where the weight is huge (t -> 0); a NaN stays NaN.
        return jnp.where(masked_BxL.any(-1), self.schedule.weight(t_B) * nll_B, 0.0)

    def loss(self, params, batch, rng, frozen=None):
        tokens = batch["tokens"]
        batch_size, length = tokens.shape
        k_t, k_mask = jax.random.split(rng)
        t_B = process.stratified_times(k_t, batch_size, self.t_min)
        uniforms = process.example_uniforms(k_mask, batch_size, length)
        nelbo_B = self.nelbo_per_example(params, tokens, t_B, uniforms)
        num_tokens = jnp.maximum(self.real_tokens(tokens).sum(), 1)
        loss = (1.0 - self.t_min) * nelbo_B.sum() / num_tokens
        masked = (uniforms < self.schedule.mask_prob(t_B)[:, None]) & self.real_tokens(tokens)
        return loss, {"loss": loss, "masked_fraction": masked.sum() / num_tokens}

    def eval_sums(self, params, batch, rng, frozen=None):
        tokens = batch["tokens"]
        batch_size, length = tokens.shape
        k_t, k_mask = jax.random.split(rng)
        offsets_B = jax.vmap(lambda b: jax.random.uniform(jax.random.fold_in(k_t, b), ()))(jnp.arange(batch_size))
        num_k = self.eval_t_samples

        def one_sample(total_B, k):
            grid_B = jnp.mod(offsets_B + k / num_k, 1.0)
            t_B = self.t_min + (1.0 - self.t_min) * grid_B
            uniforms = process.example_uniforms(jax.random.fold_in(k_mask, k), batch_size, length)
            return total_B + self.nelbo_per_example(params, tokens, t_B, uniforms), None

        total_B, _ = jax.lax.scan(one_sample, jnp.zeros((batch_size,)), jnp.arange(num_k))
        nats_B = (1.0 - self.t_min) * total_B / num_k
        return per_example_sums(nats_B, self.real_tokens(tokens).sum(-1), self.bytes_per_example(tokens))
