"""EDLM's NCE objective: train an energy network against a frozen MDM denoiser.

The model is p_theta(x_0 | x_t) exp(-E(x_0, x_t)); the noise distribution is the frozen denoiser p_theta itself (carry-over),
so the classifier's log-odds of "data" are -E. With nu negatives per positive (standard NCE, log nu prior offset):

    l(x_0) = -log sigmoid(-E(x_0, x_t) - log nu) - sum_{j=1..nu} log sigmoid(E(x^_j, x_t) + log nu)

x_0 from the batch, t in [t_min, 1] (stratified over the batch), x_t ~ q(x_t | x_0), x^_j ~ p_theta(. | x_t) from the frozen
denoiser given the same x_t. Optimum E* = log p_theta - log p_data (Z = 1 at the optimum only). The denoiser's params live
in the frozen tree {'denoiser': ...}, behind a stop_gradient: no gradient touches them. Units: NCE nats per sequence (mean
over sequences); `eval_sums` puts the summed loss in 'nats' and the sequence count in 'tokens' (so `eval/nats_per_token`
reads per sequence), 'bytes' = 0. A constant E = 0 scores softplus(log nu) + nu softplus(-log nu) nats (2 log 2 at
nu = 1): `useless_energy_loss`. Derivation and units: docs/objectives.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax import Array

from mdm import process
from mdm.energy.network import EnergyNetwork, copy_backbone
from mdm.errors import ConfigError
from mdm.networks import Transformer
from mdm.objectives.base import Objective, per_example_sums, shared_fields
from mdm.categorical import sample_categorical
from mdm.schedules import Schedule, make_schedule

NAME = "edlm_nce"


def config_section() -> ml_collections.ConfigDict:
    """The `nce` config section: every key with its default."""
    c = ml_collections.ConfigDict()
    c.num_negatives = 1  # nu: negatives per positive, drawn from the frozen denoiser given the same x_t
    return c


def useless_energy_loss(num_negatives: int) -> float:
    """The NCE loss (nats per sequence) of a constant E = 0: the level a trained energy must beat."""
    log_nu = math.log(num_negatives)
    softplus = lambda z: math.log1p(math.exp(z))  # noqa: E731  (-log sigmoid(-z) = softplus(z))
    return softplus(log_nu) + num_negatives * softplus(-log_nu)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NCEObjective(Objective):
    """NCE for the EDLM energy network `model`; `frozen_denoiser` is the frozen MDM network."""

    decoding: ClassVar[str] = ""

    frozen_denoiser: Any  # Transformer with the MDM run's TransformerConfig (or any module with .apply)
    schedule: Schedule
    t_min: float = 1e-5
    num_negatives: int = 1

    def __post_init__(self):
        if self.num_negatives < 1:
            raise ConfigError(f"nce.num_negatives={self.num_negatives} must be >= 1 (1 is the official setting)")

    @property
    def pretrained_model(self) -> nn.Module:
        return self.frozen_denoiser

    # --- the pieces -------------------------------------------------------------------------

    @property
    def likelihood(self) -> str:
        return "NCE loss of the energy (not a likelihood)"

    def check_source(self, config, source_config) -> None:
        if source_config.objective not in ("mdm", "mcd"):
            raise ConfigError(
                f"the NCE energy trains against a masked diffusion model; init.workdir holds an "
                f"objective={source_config.objective!r} run: name an MDM run"
            )
        if source_config.diffusion.get("shift", False):
            raise ConfigError(
                "the MDM in init.workdir is AR-adapted (diffusion.shift); the NCE energy trains against unshifted MDMs only"
            )

    def counted(self, batch):
        """One position per row: the NCE loss is a mean over sequences (weights micro-batches by rows)."""
        tokens = batch["tokens"]
        return jnp.zeros_like(tokens, bool).at[:, 0].set(True)

    def sampling_settings(self, settings, canvas_L):
        raise ConfigError(
            "this run trains an energy head, which cannot sample by itself; sample its MDM: "
            "python sample.py --workdir MDM_RUN --sampler edlm --energy nce --energy_workdir THIS_RUN"
        )

    def denoiser_logits(self, frozen, xt_BxL: Array, t_B: Array, attention_mask_BxL: Array | None = None) -> Array:
        """float32[B, L, V] of the frozen denoiser (no gradient flows into `frozen`)."""
        if frozen is None or "denoiser" not in frozen:
            raise ConfigError("the NCE objective needs the frozen MDM: start the run with --config.init.workdir=<MDM run>")
        variables = {"params": jax.lax.stop_gradient(frozen["denoiser"])}
        time_cond = getattr(self.frozen_denoiser.cfg, "time_conditioning", False)
        logits = self.frozen_denoiser.apply(variables, xt_BxL, t_B if time_cond else None, attention_mask_BxL=attention_mask_BxL)
        return jax.lax.stop_gradient(logits.astype(jnp.float32))

    def negatives(self, keys_B: Array, logits_BxLxV: Array, xt_BxL: Array) -> Array:
        """int32[B, nu, L]: nu carry-over draws from p_theta(. | x_t) per row, row b from keys_B[b]."""
        nu = self.num_negatives
        draws = jax.vmap(lambda k, lg: sample_categorical(k, jnp.broadcast_to(lg, (nu, *lg.shape))))(keys_B, logits_BxLxV)
        return jnp.where(xt_BxL[:, None, :] == self.mask_id, draws, xt_BxL[:, None, :])

    def energies(self, params, xt_BxL: Array, x0_BxL: Array, tokens_BxL: Array) -> Array:
        """float32[B]: E(x0, xt); padding (of the clean `tokens`) is hidden and left out of the pool."""
        mask = self.real_tokens(tokens_BxL) if self.mask_padding else None
        return self.model.apply({"params": params}, xt_BxL, None, x0_BxL, mask)

    def per_example(self, params, frozen, tokens_BxL: Array, t_B: Array, uniforms_BxL: Array, neg_keys_B: Array) -> dict:
        """Per-sequence NCE loss float32[B] and its parts (energies, accuracy, masked count)."""
        batch, length = tokens_BxL.shape
        nu = self.num_negatives
        xt = process.forward_mask(tokens_BxL, self.schedule.mask_prob(t_B), uniforms_BxL, self.mask_id, self.pad_id)
        logits = self.denoiser_logits(frozen, xt, t_B, self.attention_mask(tokens_BxL))
        neg_BxNxL = self.negatives(neg_keys_B, logits, xt)
        # One energy call over the B positives and the nu * B negatives (row b*nu + j = negative j of b).
        x0_rows = jnp.concatenate([tokens_BxL, neg_BxNxL.reshape(batch * nu, length)])
        xt_rows = jnp.concatenate([xt, jnp.repeat(xt, nu, axis=0)])
        clean_rows = jnp.concatenate([tokens_BxL, jnp.repeat(tokens_BxL, nu, axis=0)])
        e_rows = self.energies(params, xt_rows, x0_rows, clean_rows)
        e_pos_B, e_neg_BxN = e_rows[:batch], e_rows[batch:].reshape(batch, nu)
        log_nu = jnp.float32(math.log(nu))
        loss_B = -jax.nn.log_sigmoid(-e_pos_B - log_nu) - jax.nn.log_sigmoid(e_neg_BxN + log_nu).sum(-1)
        correct = (-e_pos_B - log_nu > 0).astype(jnp.float32) + (e_neg_BxN + log_nu > 0).astype(jnp.float32).sum(-1)
        return {
            "loss": loss_B,
            "accuracy": correct / (1 + nu),
            "energy_gap": e_neg_BxN.mean(-1) - e_pos_B,
            "masked": (xt == self.mask_id).sum(-1),
        }

    # --- the seam ---------------------------------------------------------------------------

    def loss(self, params, batch, rng, frozen=None):
        tokens = batch["tokens"]
        batch_size, length = tokens.shape
        k_t, k_mask, k_neg = jax.random.split(rng, 3)
        t_B = process.stratified_times(k_t, batch_size, self.t_min)
        uniforms = process.example_uniforms(k_mask, batch_size, length)
        neg_keys = jax.vmap(lambda b: jax.random.fold_in(k_neg, b))(jnp.arange(batch_size))
        parts = self.per_example(params, frozen, tokens, t_B, uniforms, neg_keys)
        loss = parts["loss"].mean()
        real = jnp.maximum(self.real_tokens(tokens).sum(), 1)
        return loss, {
            "loss": loss,
            "accuracy": parts["accuracy"].mean(),
            "energy_gap": parts["energy_gap"].mean(),
            "masked_fraction": parts["masked"].sum() / real,
        }

    def eval_sums(self, params, batch, rng, frozen=None):
        """'nats' = NCE nats summed over sequences, 'tokens' = sequences (see the module doc)."""
        tokens = batch["tokens"]
        batch_size, length = tokens.shape
        k_t, k_mask, k_neg = jax.random.split(rng, 3)
        per_row = lambda key: jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(batch_size))  # noqa: E731
        u_B = jax.vmap(lambda k: jax.random.uniform(k, ()))(per_row(k_t))
        t_B = self.t_min + (1.0 - self.t_min) * u_B
        uniforms = process.example_uniforms(k_mask, batch_size, length)
        loss_B = self.per_example(params, frozen, tokens, t_B, uniforms, per_row(k_neg))["loss"]
        ones = jnp.ones((batch_size,), jnp.float32)
        return per_example_sums(loss_B, ones, jnp.zeros((batch_size,), jnp.int32))

    def init_from(self, fresh, pretrained):
        """Energy params: `fresh` with the MDM backbone copied in; frozen = {'denoiser': MDM params}."""
        if pretrained is None:
            raise ConfigError("the NCE energy starts from a trained MDM: pass --config.init.workdir=<the MDM run's workdir>")
        return copy_backbone(fresh, pretrained), {"denoiser": pretrained}

    def frozen_partition_specs(self, param_specs):
        """{'denoiser': the denoiser's logical PartitionSpecs}."""
        del param_specs
        time_cond = getattr(self.frozen_denoiser.cfg, "time_conditioning", False)
        t = jnp.ones((1,), jnp.float32) if time_cond else None
        init = jax.jit(lambda: self.frozen_denoiser.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32), t))
        return {"denoiser": nn.get_partition_spec(jax.eval_shape(init))["params"]}


def from_config(config, model: Transformer, pad_id: int, token_bytes) -> NCEObjective:
    """The NCE objective for `config`: `model` (built from config.model) fixes the MDM's
    TransformerConfig; the energy network is the same backbone, bidirectional and time-agnostic."""
    if model.cfg.causal:
        raise ConfigError("the NCE energy is bidirectional: build it from the MDM run's model settings, not an AR run's")
    d = config.diffusion
    cfg = dataclasses.replace(model.cfg, time_conditioning=False)
    return NCEObjective(
        model=EnergyNetwork(cfg),
        frozen_denoiser=Transformer(model.cfg),
        schedule=make_schedule(d.schedule, d.eps, d.power),
        t_min=d.t_min,
        num_negatives=config.nce.num_negatives,
        **shared_fields(config, pad_id, token_bytes),
    )
