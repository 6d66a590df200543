"""The masked-diffusion objective: the continuous-time ELBO with the SUBS parameterisation.

NELBO(x_0) = int_0^1 w(t) E_{x_t ~ q(.|x_0)} [sum_{l: x_t^l = mask} -log mu(x_t)^l[x_0^l]] dt, w(t) = -alpha'(t) / (1 - alpha(t)).
SUBS: no mask logit (the network cannot predict the mask) and unmasked positions carry over: only masked positions enter the sum.
Training: one t per sequence, stratified over the batch on [t_min, 1], an unbiased estimate of the integral over [t_min, 1]
on the configured schedule (eps and t_min only reweight training).
Evaluation bounds the samplers' -log p(x_0): the eps = 0 process over the whole path, mask level m(t) = 1 - a(t) from 0 to 1
(`sampling_schedule`); a time-conditioned network gets the schedule's t, as the ancestral and first-hitting samplers give it.
Two unbiased estimators, each with `eval_t_samples` stratified draws per sequence (its own offset per sequence):
- 'continuous': t stratified on (0, 1], x_t ~ Bernoulli(m(t)) per real token, weight w(t); a draw with nothing masked becomes a
  singleton (the real position with the smallest uniform), weighted m'(t) n / (1 + (n - 1) m): exact on [0, 1], no t_min.
- 'count' (schedule-free): k stratified on {1..n} (n real tokens), a uniform subset of k positions masked, weight n / k; a
  time-conditioned network gets t = m^-1(u), u ~ Beta(k, n - k + 1), which keeps it exact. Standard errors are across sequences.
Adapting an AR model (DiffuLLaMA, Gong et al. 2024): with `shift` the network reads x_t shifted right by one behind a start
symbol, so each output predicts the next input token as an AR head does and the AR twin's params serve unchanged; with
`anneal_steps` training attention goes from causal to bidirectional (each later key visible with probability
min(step / anneal_steps, 1)). Evaluation and sampling always use the bidirectional network, so every reported number
bounds the model that samples. Derivation and choices: docs/objectives.md, docs/adaptation.md.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import Array

from mdm import process
from mdm.errors import ConfigError
from mdm.objectives.base import Objective, per_example_sums, shared_fields, shift_right
from mdm.schedules import Schedule, make_schedule

EVAL_ESTIMATORS = ("continuous", "count")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaskedDiffusionObjective(Objective):
    """MDLM/MD4-style masked diffusion ELBO."""

    schedule: Schedule
    t_min: float = 1e-5
    eval_t_samples: int = 8
    eval_estimator: str = "continuous"  # 'continuous' (time integral) or 'count' (masked-count form)
    shift: bool = False  # AR adaptation: output i reads inputs shifted right (start symbol first) and predicts token i
    anneal_steps: int = 0  # AR adaptation: updates over which training attention goes from causal to bidirectional

    @property
    def adapts_causal(self) -> bool:
        return self.shift

    def network_inputs(self, x_BxL: Array, attention_mask_BxL: Array | None = None) -> tuple[Array, Array | None]:
        """(int[B, L] the network's input, bool[B, L] or None its key mask) for x_t: with `shift`,
        x_t shifted right behind the mask id as start symbol (its key always visible)."""
        if not self.shift:
            return x_BxL, attention_mask_BxL
        mask = None
        if attention_mask_BxL is not None:
            mask = jnp.concatenate([jnp.ones_like(attention_mask_BxL[:, :1]), attention_mask_BxL[:, :-1]], axis=1)
        return shift_right(x_BxL, self.mask_id), mask

    def network_logits(
        self,
        params,
        x_BxL: Array,
        t_B: Array | None = None,
        attention_mask_BxL: Array | None = None,
        visible_LxL: Array | None = None,
    ) -> Array:
        """float32[B, L, V]: position l's distribution over x_0^l given x_t (bidirectional unless
        `visible_LxL` hides keys); t reaches the network only if it is time-conditioned."""
        inputs, mask = self.network_inputs(x_BxL, attention_mask_BxL)
        t_in = t_B if self.model.cfg.time_conditioning else None
        annealing = {} if visible_LxL is None else {"visible_LxL": visible_LxL}
        return self.model.apply({"params": params}, inputs, t_in, attention_mask_BxL=mask, **annealing)

    def denoiser(self, params):
        return lambda tokens, t: self.network_logits(params, tokens, t)

    def token_nll(self, params, inputs_BxL, targets_BxL, t_B=None, attention_mask_BxL=None, needed_BxL=None, visible_LxL=None):
        inputs, mask = self.network_inputs(inputs_BxL, attention_mask_BxL)
        return super().token_nll(params, inputs, targets_BxL, t_B, mask, needed_BxL, visible_LxL)

    def anneal_ratio(self, step: Array) -> Array:
        """float32: the probability that a key after its query is visible in training after
        `step` updates: step / anneal_steps, 1 from then on (1 without annealing)."""
        if not self.anneal_steps:
            return jnp.float32(1.0)
        return jnp.clip(jnp.asarray(step, jnp.float32) / self.anneal_steps, 0.0, 1.0)

    def annealed_visible(self, step: Array, key: Array, length: int) -> Array:
        """bool[L, L] (query, key): the causal prefix, and each later key with probability
        `anneal_ratio(step)`: one draw per (micro-)batch, shared by rows, heads and layers."""
        idx = jnp.arange(length)
        return (idx[None, :] <= idx[:, None]) | jax.random.bernoulli(key, self.anneal_ratio(step), (length, length))

    def init_from(self, fresh, pretrained):
        """The frozen tree counts updates (int32) while attention is annealed; None otherwise."""
        params = fresh if pretrained is None else pretrained
        return params, (jnp.zeros((), jnp.int32) if self.anneal_steps else None)

    def frozen_partition_specs(self, param_specs):
        del param_specs
        return jax.sharding.PartitionSpec() if self.anneal_steps else None

    def update_frozen(self, step, params, frozen):
        del params
        return jnp.asarray(step, jnp.int32) if self.anneal_steps else frozen

    @property
    def sampler_schedule(self) -> Schedule:
        return self.schedule

    def sampling_settings(self, settings, canvas_L):
        if settings.sampler == "autoregressive":
            raise ConfigError(
                "a masked diffusion model has no left-to-right decoder; choose --sampler fhs, ancestral, confidence or edlm"
            )
        return settings

    @property
    def likelihood(self) -> str:
        # In pad mode the attention mask, built from the clean tokens, shows the denoiser each
        # row's length at every t: the NELBO then bounds -log p(x | length), and an AR twin
        # (which pays for EOS) is not compared like for like. With data.supervise_padding the
        # padding is masked and predicted like any token and nothing is hidden: -log p(x).
        if self.pairs:
            return "upper bound on -log p(response | prompt" + (")" if self.supervise_padding else ", length)")
        given_length = self.mask_padding and not self.supervise_padding
        return "upper bound on -log p(x | length)" if given_length else "upper bound on -log p(x)"

    @property
    def sampling_schedule(self) -> Schedule:
        """The configured schedule with eps = 0: the masking path the samplers walk (all-mask at
        t = 1, same t and weight w(t)); evaluation bounds -log p on it."""
        return dataclasses.replace(self.schedule, eps=0.0)

    def nelbo_per_example(
        self,
        params,
        tokens_BxL: Array,
        t_B: Array,
        uniforms_BxL: Array,
        positions: tuple | None = None,
        visible_LxL: Array | None = None,
    ) -> Array:
        """float32[B]: w(t_b) * sum of -log mu at the masked positions of x_t ~ q(.|x_0, t_b).

        positions: (modelled, visible) from `positions` (default: those of a plain batch); only
        modelled positions are ever masked. visible_LxL: the training attention (annealing)."""
        modelled_BxL, visible_BxL = positions or self.positions({"tokens": tokens_BxL})
        masked_BxL = (uniforms_BxL < self.schedule.mask_prob(t_B)[:, None]) & modelled_BxL
        x_t = jnp.where(masked_BxL, self.mask_id, tokens_BxL)
        nll_B = self.token_nll(params, x_t, tokens_BxL, t_B, visible_BxL, masked_BxL, visible_LxL).sum(-1)
        # A row with no mask adds 0 even where the weight is huge (t -> 0); a NaN stays NaN.
        return jnp.where(masked_BxL.any(-1), self.schedule.weight(t_B) * nll_B, 0.0)

    def loss(self, params, batch, rng, frozen=None):
        tokens = batch["tokens"]
        batch_size, length = tokens.shape
        k_t, k_mask = jax.random.split(rng)
        t_B = process.stratified_times(k_t, batch_size, self.t_min)
        uniforms = process.example_uniforms(k_mask, batch_size, length)
        positions = self.positions(batch)
        visible_LxL = None
        if self.anneal_steps:
            if frozen is None:
                raise ValueError("attention annealing reads the update count from the frozen tree (state.init_state makes it)")
            visible_LxL = self.annealed_visible(frozen, jax.random.fold_in(rng, 2), length)
        nelbo_B = self.nelbo_per_example(params, tokens, t_B, uniforms, positions, visible_LxL)
        num_tokens = jnp.maximum(self.counted(batch).sum(), 1)  # per real token (per response token in SFT)
        loss = (1.0 - self.t_min) * nelbo_B.sum() / num_tokens
        masked = (uniforms < self.schedule.mask_prob(t_B)[:, None]) & positions[0]
        return loss, {"loss": loss, "masked_fraction": masked.sum() / jnp.maximum(positions[0].sum(), 1)}

    def continuous_nelbo_per_example(
        self, params, tokens_BxL: Array, t_B: Array, uniforms_BxL: Array, positions: tuple | None = None
    ) -> Array:
        """float32[B]: one unbiased draw of the integrand of the full-path (eps = 0) NELBO at t_B in
        (0, 1]; an empty draw becomes the singleton at the smallest uniform, singletons reweighted."""
        sched = self.sampling_schedule
        real_BxL, visible_BxL = positions or self.positions({"tokens": tokens_BxL})
        n_B = real_BxL.sum(-1).astype(jnp.float32)
        m_B = sched.mask_prob(t_B)
        drawn_BxL = (uniforms_BxL < m_B[:, None]) & real_BxL
        first_B = jnp.argmin(jnp.where(real_BxL, uniforms_BxL, 2.0), -1)
        forced_BxL = (jnp.arange(tokens_BxL.shape[1])[None, :] == first_B[:, None]) & real_BxL & ~drawn_BxL.any(-1, keepdims=True)
        masked_BxL = drawn_BxL | forced_BxL
        x_t = jnp.where(masked_BxL, self.mask_id, tokens_BxL)
        nll_B = self.token_nll(params, x_t, tokens_BxL, t_B, visible_BxL, needed_BxL=masked_BxL).sum(-1)
        count_B = masked_BxL.sum(-1)
        # Q(S) = P(S) + P(empty) / n for singletons: w(t) P / Q = m'(t) n / (1 + (n - 1) m).
        single_B = -sched.dalpha(t_B) * n_B / (1.0 + (n_B - 1.0) * m_B)
        weight_B = jnp.where(count_B == 1, single_B, sched.weight(t_B))
        return jnp.where(count_B > 0, weight_B * nll_B, 0.0)  # a NaN stays NaN

    def count_nelbo_per_example(
        self, params, tokens_BxL: Array, u_B: Array, uniforms_BxL: Array, key: Array, positions: tuple | None = None
    ) -> Array:
        """float32[B]: (n / k) x the masked NLL sum for k = 1 + floor(u_B n) masked positions, the
        k modelled positions with the smallest uniforms (a uniform subset)."""
        real_BxL, visible_BxL = positions or self.positions({"tokens": tokens_BxL})
        n_B = real_BxL.sum(-1)
        k_B = jnp.clip(jnp.floor(u_B * n_B).astype(jnp.int32) + 1, 1, jnp.maximum(n_B, 1))
        rank_BxL = jnp.argsort(jnp.argsort(jnp.where(real_BxL, uniforms_BxL, 2.0), -1), -1)
        masked_BxL = real_BxL & (rank_BxL < k_B[:, None])
        x_t = jnp.where(masked_BxL, self.mask_id, tokens_BxL)
        if self.model.cfg.time_conditioning:  # mask level | k ~ Beta(k, n - k + 1), then its time
            a_B, b_B = k_B.astype(jnp.float32), jnp.maximum(n_B - k_B + 1, 1).astype(jnp.float32)
            rows = jnp.arange(tokens_BxL.shape[0])
            level_B = jax.vmap(lambda b, a, c: jax.random.beta(jax.random.fold_in(key, b), a, c))(rows, a_B, b_B)
            t_B = self.sampling_schedule.time_of_mask_prob(level_B)
        else:
            t_B = None
        nll_B = self.token_nll(params, x_t, tokens_BxL, t_B, visible_BxL, needed_BxL=masked_BxL).sum(-1)
        return jnp.where(masked_BxL.any(-1), n_B / k_B * nll_B, 0.0)

    def eval_sums(self, params, batch, rng, frozen=None):
        if self.eval_estimator not in EVAL_ESTIMATORS:
            raise ConfigError(f"diffusion.eval_estimator={self.eval_estimator!r}: choose one of {', '.join(EVAL_ESTIMATORS)}")
        tokens = batch["tokens"]
        batch_size, length = tokens.shape
        k_t, k_mask = jax.random.split(rng)
        k_level = jax.random.fold_in(rng, 1)
        offsets_B = jax.vmap(lambda b: jax.random.uniform(jax.random.fold_in(k_t, b), ()))(jnp.arange(batch_size))
        num_k = self.eval_t_samples
        positions = self.positions(batch)

        def one_sample(total_B, k):
            grid_B = jnp.mod(offsets_B + k / num_k, 1.0)  # stratified on [0, 1)
            uniforms = process.example_uniforms(jax.random.fold_in(k_mask, k), batch_size, length)
            if self.eval_estimator == "count":
                key = jax.random.fold_in(k_level, k)
                nelbo_B = self.count_nelbo_per_example(params, tokens, grid_B, uniforms, key, positions)
            else:
                nelbo_B = self.continuous_nelbo_per_example(params, tokens, 1.0 - grid_B, uniforms, positions)  # t in (0, 1]
            return total_B + nelbo_B, None

        total_B, _ = jax.lax.scan(one_sample, jnp.zeros((batch_size,)), jnp.arange(num_k))
        counted = self.counted(batch)
        return per_example_sums(total_B / num_k, counted.sum(-1), self.bytes_per_example(tokens, counted))


def from_config(config, model, pad_id: int, token_bytes) -> MaskedDiffusionObjective:
    """The masked-diffusion ELBO of `config` (section diffusion) for `model`."""
    d = config.diffusion
    return MaskedDiffusionObjective(
        model=model,
        **shared_fields(config, pad_id, token_bytes),
        schedule=make_schedule(d.schedule, d.eps, d.power),
        t_min=d.t_min,
        eval_t_samples=d.eval_t_samples,
        eval_estimator=d.eval_estimator,
        shift=d.shift,
        anneal_steps=d.anneal_steps,
    )
