"""EDLM's parallel importance sampler: an energy-corrected x_0 draw inside a window of the reverse process.

On the ancestral grid 1 = t_0 > ... > t_T = 0, each step t -> s makes one denoiser call. Inside the window (t >= 1 - w) it
draws K carry-over candidates x^(1..K) ~ p_theta(. | x_t) per row from that call, scores all K x B in one batched energy
call (row j*B + b is candidate j of row b; x_t and the logits tiled the same way) and per row picks j* with probability
softmax(-E / T)_j, x_0 = x^(j*); outside it x_0 ~ p_theta(. | x_t). Then the exact absorbing-posterior step reveals each
masked position to x_0 with probability (alpha_s - alpha_t) / (1 - alpha_t). As K -> infinity x_0 follows p_theta e^{-E/T} / Z
(self-normalised importance sampling); K = 1 and w = 0 are the plain MDM. The proposal is the sampler's token draw; the energy
gets log p_theta (unfiltered) as its diffusion term. Keys: candidate 0 uses the step's token key, candidate j fold_in(that
key, j), the pick fold_in(the unmasking key, 1): K = 1 gives exactly `ancestral_sample`'s tokens, each row depends on its
own key only. A step revealing no token makes no energy call; with cache=True the denoiser is not called until x changes.
NFE: `nfe` counts denoiser calls for the batch; `energy_nfe` counts energy evaluations per row, K per importance step.
Layout, keys and call counting: docs/samplers.md.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from mdm.energy import Energy, denoiser_log_prob
from mdm.time_grids import time_grid
from mdm.samplers.base import Denoiser, TokenDraw, TokenSampling, row_uniform, split_rows
from mdm.categorical import sample_categorical
from mdm.schedules import Schedule

PICK_STREAM = 1  # fold_in(unmask key, PICK_STREAM) is the resampling key


class ImportanceSampleOutput(NamedTuple):
    tokens: Array  # int32[B, L], no mask left
    nfe: Array  # int32 scalar: denoiser calls for the whole batch
    energy_nfe: Array  # int32 scalar: energy evaluations per row (K per importance step)


def check_importance_settings(num_candidates: int, window: float, temperature: float) -> None:
    """Raises ValueError (one line, naming the fix) for K < 1, w outside [0, 1] or T <= 0."""
    if not (isinstance(num_candidates, int) and num_candidates >= 1):
        raise ValueError(
            f"is_k={num_candidates} must be an integer >= 1 (importance candidates per step; 1 = plain MDM, default 2)"
        )
    if not 0.0 <= window <= 1.0:
        raise ValueError(f"is_window={window} must lie in [0, 1] (0.2: the speed preset, 1: the quality preset, 0: plain MDM)")
    if not temperature > 0:
        raise ValueError(f"is_temp={temperature} must be > 0 (the energy temperature; 1 = the model's own)")


def pick_candidates(keys_B: Array, energies_KxB: Array, temperature: float) -> Array:
    """int32[B]: per row b, index j drawn with probability softmax(-E[:, b] / T)_j."""
    logits_BxK = -jnp.swapaxes(energies_KxB, 0, 1).astype(jnp.float32) / temperature
    return jax.vmap(lambda k, lg: sample_categorical(k, lg))(keys_B, logits_BxK)


@dataclasses.dataclass(frozen=True)
class ImportanceDraw:
    """A `TokenDraw` that proposes K carry-over candidates and resamples one by softmax(-E / T).

    __call__(keys_B, logits_BxLxV, tokens_BxL) -> x_0 int32[B, L] (tokens_BxL is x_t).
    """

    energy: Energy
    mask: int
    num_candidates: int = 2
    temperature: float = 1.0
    draw: TokenDraw = TokenSampling()

    def candidates(self, keys_B: Array, logits_BxLxV: Array, xt_BxL: Array) -> Array:
        """int32[K, B, L]: candidate j from fold_in(key_b, j) (j = 0: the key itself); carry-over."""
        j_K = jnp.arange(self.num_candidates, dtype=jnp.uint32)
        keys_KxB = jax.vmap(lambda j: jax.vmap(lambda k: jax.random.fold_in(k, j))(keys_B))(j_K).at[0].set(keys_B)
        drawn = jax.vmap(lambda k: self.draw(k, logits_BxLxV, xt_BxL))(keys_KxB)
        return jnp.where(xt_BxL[None] == self.mask, drawn, xt_BxL[None]).astype(jnp.int32)

    def energies(self, cands_KxBxL: Array, logits_BxLxV: Array, xt_BxL: Array) -> Array:
        """float32[K, B]: all K x B candidates scored in one energy call."""
        k, b, length = cands_KxBxL.shape
        xt_rows = jnp.broadcast_to(xt_BxL, (k, b, length)).reshape(k * b, length)
        x0_rows = cands_KxBxL.reshape(k * b, length)
        logits_rows = jnp.broadcast_to(logits_BxLxV, (k, *logits_BxLxV.shape)).reshape(k * b, length, -1)
        logp_rows = denoiser_log_prob(logits_rows, x0_rows, xt_rows, self.mask)
        return self.energy(x0_rows, xt_rows, logp_rows).astype(jnp.float32).reshape(k, b)

    def __call__(self, keys_B: Array, logits_BxLxV: Array, tokens_BxL: Array, pick_keys_B: Array | None = None) -> Array:
        cands = self.candidates(keys_B, logits_BxLxV, tokens_BxL)
        if self.num_candidates == 1:
            return cands[0]
        if pick_keys_B is None:
            pick_keys_B = jax.vmap(lambda k: jax.random.fold_in(k, self.num_candidates))(keys_B)
        j_B = pick_candidates(pick_keys_B, self.energies(cands, logits_BxLxV, tokens_BxL), self.temperature)
        return jnp.take_along_axis(cands, j_B[None, :, None], axis=0)[0]


def importance_sample(
    denoiser: Denoiser,
    keys_B: Array,
    tokens_BxL: Array,
    *,
    energy: Energy,
    mask: int,
    schedule: Schedule,
    steps: int,
    grid: str = "uniform",
    window: float = 0.2,
    num_candidates: int = 2,
    temperature: float = 1.0,
    cache: bool = True,
    draw: TokenDraw = TokenSampling(),
) -> ImportanceSampleOutput:
    """Fills the `mask` positions of `tokens_BxL` in `steps` ancestral steps with importance
    sampling (K = num_candidates, T = temperature) at the steps whose time t >= 1 - window.

    energy: (x0_NxL, xt_NxL, denoiser_logp_N) -> E_N. cache: reuse the logits while x is
    unchanged (only for a time-agnostic denoiser).
    """
    check_importance_settings(num_candidates, window, temperature)
    batch = tokens_BxL.shape[0]
    times = time_grid(steps, grid)
    is_draw = ImportanceDraw(energy, mask, num_candidates, temperature, draw)
    use_is = num_candidates > 1 and window > 0

    def in_window(t):
        return (t >= 1.0 - window - 1e-6) if use_is else jnp.bool_(False)

    def x0_draw(t, k_unmask, k_tok, logits, x):
        """(x_0 int[B, L], energy evaluations) for this step."""
        pick_keys = jax.vmap(lambda k: jax.random.fold_in(k, PICK_STREAM))(k_unmask)
        return jax.lax.cond(
            in_window(t),
            lambda: (is_draw(k_tok, logits, x, pick_keys), jnp.int32(num_candidates)),
            lambda: (draw(k_tok, logits, x).astype(jnp.int32), jnp.int32(0)),
        )

    def step(i, carry):
        x, logits, valid, nfe, enfe = carry
        t, s = times[i], times[i + 1]
        p_unmask = jnp.where(s > 0, 1.0 - schedule.mask_prob(s) / schedule.mask_prob(t), 1.0)
        k_unmask, k_tok = split_rows(keys_B, i, 2)
        unmask = (x == mask) & (row_uniform(k_unmask, x.shape[1:]) < p_unmask)
        t_B = jnp.full((batch,), t)
        if cache:  # call the network only when a token is revealed and x changed since the last call
            need_call = jnp.any(unmask) & ~valid
            logits = jax.lax.cond(need_call, lambda: denoiser(x, t_B).astype(jnp.float32), lambda: logits)
        else:
            need_call = jnp.bool_(True)
            logits = denoiser(x, t_B).astype(jnp.float32)
        # A step that reveals nothing discards x_0: no draw, no energy call.
        x0, used = jax.lax.cond(jnp.any(unmask), lambda: x0_draw(t, k_unmask, k_tok, logits, x), lambda: (x, jnp.int32(0)))
        x_new = jnp.where(unmask, x0, x)
        valid = (valid | need_call) & jnp.all(x_new == x)
        return x_new, logits, valid, nfe + need_call.astype(jnp.int32), enfe + used

    vocab = jax.eval_shape(denoiser, tokens_BxL, jnp.ones((batch,), jnp.float32)).shape[-1]
    init = (tokens_BxL, jnp.zeros(tokens_BxL.shape + (vocab,), jnp.float32), jnp.bool_(False), jnp.int32(0), jnp.int32(0))
    x, _, _, nfe, enfe = jax.lax.fori_loop(0, steps, step, init)
    return ImportanceSampleOutput(x, nfe, enfe)
