"""Block diffusion (BD3LM, Arriola et al. 2025): autoregressive over blocks, masked diffusion within each.

With blocks of `block_size` tokens, NELBO(x) = sum_b NELBO_MDM(x^b | x^{<b}): block b is a masked diffusion given the
clean blocks before it, so the bound is on -log p(x) and its units (nats/token, bits/byte) are those of MDM and AR.
One network pass per batch scores every block: the vectorised sequence [x_t ; x_0] (2L tokens, both copies at rope
positions 0..L-1) under BD3LM's mask (`MaskSpec(block_size, half=L)`): a noisy query sees the noisy keys of its own
block and the clean keys of earlier blocks, a clean query the clean keys of its block and earlier ones. The loss
reads the x_t half.
Training: each block has its own t, stratified over the B x K blocks of a batch (row b, block k gets stratum
k B + b), an unbiased estimate of the integral over [t_min, 1] on the configured schedule, as for MDM.
Evaluation: the count form per block (k_b uniform on {1..n_b}, a uniform k_b-subset masked, weight n_b / k_b),
exact and schedule-free for a time-agnostic network; an upper bound on -log p(x).
Identities (tests): block size L is the MDM objective (same t and masks give the same numbers); block size 1 is the
next-token NLL of the network reading x_<l and a mask at l.
The network is time-agnostic (config check): a clean block carries no t, so its K/V are the same at every step
and the decoding cache (`block_denoiser`) is exact.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from mdm import process
from mdm.errors import ConfigError
from mdm.networks.attention import MaskSpec
from mdm.networks.transformer import KVCache, Positions, project
from mdm.objectives.base import Objective, per_example_sums, shared_fields
from mdm.objectives.chunked_loss import chunked_token_nll
from mdm.process import BlockDenoiser
from mdm.schedules import Schedule, make_schedule

NAME = "bd3lm"


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockDiffusionObjective(Objective):
    """The block diffusion NELBO over blocks of `block_size` (which divides the length)."""

    decoding: ClassVar[str] = "block"

    schedule: Schedule
    block_size: int
    t_min: float = 1e-5
    eval_t_samples: int = 8

    @property
    def sampler_schedule(self) -> Schedule:
        return self.schedule

    @property
    def likelihood(self) -> str:
        return "upper bound on -log p(x)"

    def sampler_window(self, canvas_len: int) -> int:
        return self.block_size

    def sampling_settings(self, settings, canvas_L):
        """Block decoding: fhs, ancestral or confidence inside each block, continuing a prompt."""
        if settings.sampler in ("autoregressive", "edlm"):
            raise ConfigError(
                f"--sampler {settings.sampler} is not a within-block sampler; block decoding runs fhs, ancestral or confidence"
            )
        if settings.cfg_scale > 0:
            raise ConfigError("--cfg_scale is not supported for block diffusion yet; use --cfg_scale 0")
        if self.model.cfg.time_conditioning:
            raise ConfigError("a time-conditioned network has no exact K/V cache; train bd3lm with model.time_conditioning=false")
        masked = np.asarray(canvas_L) == self.mask_id
        if masked.any() and not masked[int(np.argmax(masked)) :].all():
            raise ConfigError("a block diffusion model continues a prompt; --infill needs an MDM checkpoint")
        return settings

    def block_index(self, length: int) -> Array:
        """int32[L]: the block of each position."""
        return jnp.arange(length) // self.block_size

    def hidden(self, params, x_t_BxL: Array, x_0_BxL: Array) -> Array:
        """Final hidden states [B, L, D] of the x_t half of the vectorised [x_t ; x_0] pass."""
        length = x_0_BxL.shape[1]
        index = jnp.arange(length)
        hidden = self.model.apply(
            {"params": params},
            jnp.concatenate([x_t_BxL, x_0_BxL], axis=1),
            return_hidden=True,
            where=Positions(jnp.concatenate([index, index])),
            mask=MaskSpec(block_size=self.block_size, half=length),
        )
        return hidden[:, :length]

    def block_nll(self, params, x_t_BxL: Array, x_0_BxL: Array, needed_BxL: Array) -> Array:
        """float32[B, L]: -log p(x_0^l | x_t of its block, clean earlier blocks); 0 where not needed."""
        hidden = self.hidden(params, x_t_BxL, x_0_BxL)
        return chunked_token_nll(hidden, self.model.output_head(params), x_0_BxL, self.loss_chunk, needed_BxL)

    def _per_block(self, values_BxL: Array) -> Array:
        batch, length = values_BxL.shape
        return values_BxL.reshape(batch, length // self.block_size, self.block_size)

    def nelbo_per_example(self, params, tokens_BxL: Array, t_BxK: Array, uniforms_BxL: Array) -> Array:
        """float32[B]: sum over blocks k of w(t_k) * the masked NLL sum of block k's x_t ~ q(.|x_0, t_k)."""
        t_BxL = t_BxK[:, self.block_index(tokens_BxL.shape[1])]
        masked_BxL = (uniforms_BxL < self.schedule.mask_prob(t_BxL)) & self.real_tokens(tokens_BxL)
        x_t = jnp.where(masked_BxL, self.mask_id, tokens_BxL)
        nll_BxK = self._per_block(self.block_nll(params, x_t, tokens_BxL, masked_BxL)).sum(-1)
        any_BxK = self._per_block(masked_BxL).any(-1)
        # A block with no mask adds 0 even where the weight is huge (t -> 0); a NaN stays NaN.
        return jnp.where(any_BxK, self.schedule.weight(t_BxK) * nll_BxK, 0.0).sum(-1)

    def block_times(self, key: Array, batch: int, blocks: int) -> Array:
        """float32[B, K]: stratified times on [t_min, 1], stratum k B + b for row b, block k
        (one block per row: exactly MDM's `stratified_times`)."""
        return process.stratified_times(key, batch * blocks, self.t_min).reshape(blocks, batch).T

    def loss(self, params, batch, rng, frozen=None):
        tokens = batch["tokens"]
        batch_size, length = tokens.shape
        k_t, k_mask = jax.random.split(rng)
        t_BxK = self.block_times(k_t, batch_size, length // self.block_size)
        uniforms = process.example_uniforms(k_mask, batch_size, length)
        nelbo_B = self.nelbo_per_example(params, tokens, t_BxK, uniforms)
        num_tokens = jnp.maximum(self.counted(batch).sum(), 1)
        loss = (1.0 - self.t_min) * nelbo_B.sum() / num_tokens
        t_BxL = t_BxK[:, self.block_index(length)]
        masked = (uniforms < self.schedule.mask_prob(t_BxL)) & self.real_tokens(tokens)
        return loss, {"loss": loss, "masked_fraction": masked.sum() / jnp.maximum(self.real_tokens(tokens).sum(), 1)}

    def count_nelbo_per_example(self, params, tokens_BxL: Array, u_BxK: Array, uniforms_BxL: Array) -> Array:
        """float32[B]: sum over blocks of (n_k / m_k) x the masked NLL sum, with m_k = 1 + floor(u_k n_k)
        positions of block k masked (those with the smallest uniforms: a uniform subset)."""
        real_BxKxb = self._per_block(self.real_tokens(tokens_BxL))
        n_BxK = real_BxKxb.sum(-1)
        m_BxK = jnp.clip(jnp.floor(u_BxK * n_BxK).astype(jnp.int32) + 1, 1, jnp.maximum(n_BxK, 1))
        rank = jnp.argsort(jnp.argsort(jnp.where(real_BxKxb, self._per_block(uniforms_BxL), 2.0), -1), -1)
        masked_BxKxb = real_BxKxb & (rank < m_BxK[..., None])
        masked_BxL = masked_BxKxb.reshape(tokens_BxL.shape)
        x_t = jnp.where(masked_BxL, self.mask_id, tokens_BxL)
        nll_BxK = self._per_block(self.block_nll(params, x_t, tokens_BxL, masked_BxL)).sum(-1)
        return jnp.where(masked_BxKxb.any(-1), n_BxK / m_BxK * nll_BxK, 0.0).sum(-1)

    def eval_sums(self, params, batch, rng, frozen=None):
        tokens = batch["tokens"]
        batch_size, length = tokens.shape
        blocks = length // self.block_size
        k_u, k_mask = jax.random.split(rng)
        offsets_BxK = jax.vmap(lambda b: jax.random.uniform(jax.random.fold_in(k_u, b), (blocks,)))(jnp.arange(batch_size))
        num_k = self.eval_t_samples

        def one_sample(total_B, k):
            u_BxK = jnp.mod(offsets_BxK + k / num_k, 1.0)  # stratified per block
            uniforms = process.example_uniforms(jax.random.fold_in(k_mask, k), batch_size, length)
            return total_B + self.count_nelbo_per_example(params, tokens, u_BxK, uniforms), None

        total_B, _ = jax.lax.scan(one_sample, jnp.zeros((batch_size,)), jnp.arange(num_k))
        counted = self.counted(batch)
        return per_example_sums(total_B / num_k, counted.sum(-1), self.bytes_per_example(tokens, counted))

    def denoiser(self, params):
        raise ConfigError("a block diffusion model decodes block by block (generation.build_sampler), not as one denoiser")

    def block_denoiser(self, params, kv_cache: bool = True) -> BlockDenoiser:
        """The model as block decoding sees it. kv_cache=True keeps the exact K/V of the finished
        blocks (prompt blocks prefilled in one pass, each finished block committed with one pass
        of b tokens); False recomputes the whole [x_t ; x_0] sequence at every call (the reference)."""
        size, cfg = self.block_size, self.model.cfg
        apply = functools.partial(self.model.apply, {"params": params})
        if not kv_cache:

            def logits_full(block_Bxb, first, committed_BxL):
                x_t = jax.lax.dynamic_update_slice_in_dim(committed_BxL, block_Bxb, first, axis=1)
                hidden = jax.lax.dynamic_slice_in_dim(self.hidden(params, x_t, committed_BxL), first, size, axis=1)
                return project(hidden, self.model.output_head(params), cfg.compute_dtype)

            def commit_tokens(block_Bxb, first, committed_BxL):
                return jax.lax.dynamic_update_slice_in_dim(committed_BxL, block_Bxb, first, axis=1)

            return BlockDenoiser(start=lambda canvas, first: canvas, logits=logits_full, commit=commit_tokens)

        def layer_kv(state) -> KVCache:
            kv = [state["kv"][f"block_{i}"]["attn"]["keys_values"][0] for i in range(cfg.num_layers)]
            return KVCache(jnp.stack([k for k, _ in kv]), jnp.stack([v for _, v in kv]))

        def prefill(canvas_BxL, first):
            del first  # every position is filled; only [0, first) is ever read before it is overwritten
            _, state = apply(canvas_BxL, return_hidden=True, mask=MaskSpec(block_size=size), mutable=["kv"])
            return layer_kv(state)

        def at(first, cache):
            return Positions(first + jnp.arange(size), cache, first)

        def logits_cached(block_Bxb, first, cache):
            return apply(block_Bxb, where=at(first, cache))

        def commit_kv(block_Bxb, first, cache):
            _, state = apply(block_Bxb, return_hidden=True, where=at(first, cache), mutable=["kv"])
            new = layer_kv(state)
            write = functools.partial(jax.lax.dynamic_update_slice_in_dim, start_index=first, axis=2)
            return KVCache(write(cache.k, new.k.astype(cache.k.dtype)), write(cache.v, new.v.astype(cache.v.dtype)))

        return BlockDenoiser(start=prefill, logits=logits_cached, commit=commit_kv)


def from_config(config, model, pad_id: int, token_bytes) -> BlockDiffusionObjective:
    """The block diffusion NELBO of `config` (sections block and diffusion) for `model`."""
    d = config.diffusion
    return BlockDiffusionObjective(
        model=model,
        **shared_fields(config, pad_id, token_bytes),
        schedule=make_schedule(d.schedule, d.eps, d.power),
        block_size=config.block.size,
        t_min=d.t_min,
        eval_t_samples=d.eval_t_samples,
    )
