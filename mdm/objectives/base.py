"""The objective seam: what the one training loop calls.

An objective is a frozen dataclass with two pure methods (batches are dicts with 'tokens': int32[B, L]):
- `loss(params, batch, rng, frozen) -> (scalar, metrics)`: the training loss (nats/token) to minimise.
- `eval_sums(params, batch, rng, frozen) -> dict`: per-batch sums (nats, tokens, bytes and the moments for a standard
  error) that add up over batches and devices, so evaluation pools exactly.
`frozen` is a pytree the objective reads but never trains (a distillation teacher, the frozen denoiser under an energy
head), or None; it lives in the train state. Two hooks manage it:
- `init_from(fresh, pretrained) -> (params, frozen)`: the starting params and frozen tree from freshly initialised
  params and, when the run names `init.workdir`, that run's params.
- `update_frozen(step, params, frozen) -> frozen`: called (jitted) after every update with the new step count.
Sampling reads the objective, never the config: `decoding` (how its model generates), `denoiser(params)` (what samplers
call), `sampler_schedule` (the masking path they walk), `sampling_settings` (checks and resolves a sampler request).
Why sums and a frozen tree: docs/objectives.md.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp
from jax import Array

from mdm import process
from mdm.data.pairs import CONTEXT, PADDING, RESPONSE
from mdm.networks import Transformer
from mdm.objectives.chunked_loss import chunked_token_nll
from mdm.process import Denoiser
from mdm.schedules import Schedule

Params = Any
Metrics = dict[str, Array]

EVAL_SUM_KEYS = ("nats", "tokens", "bytes", "nats_sq", "nats_tokens", "tokens_sq", "sequences")


def per_example_sums(nats_B: Array, tokens_B: Array, bytes_B: Array) -> Metrics:
    """Sums over a batch of per-sequence NLLs, for the pooled ratio estimator and its s.e."""
    nats_B = nats_B.astype(jnp.float32)
    tokens_B = tokens_B.astype(jnp.float32)
    return {
        "nats": nats_B.sum(),
        "tokens": tokens_B.sum(),
        "bytes": bytes_B.astype(jnp.float32).sum(),
        "nats_sq": (nats_B**2).sum(),
        "nats_tokens": (nats_B * tokens_B).sum(),
        "tokens_sq": (tokens_B**2).sum(),
        "sequences": jnp.asarray(nats_B.shape[0], jnp.float32),
    }


def shift_right(tokens_BxL: Array, start_id: int) -> Array:
    """int[B, L]: `start_id`, then tokens[:, :-1]: the input under which output position i
    predicts token i (an AR model's next-token head, an AR-adapted MDM's shift)."""
    start = jnp.full_like(tokens_BxL[:, :1], start_id)
    return jnp.concatenate([start, tokens_BxL[:, :-1]], axis=1)


def shared_fields(config, pad_id: int, token_bytes) -> dict[str, Any]:
    """The `Objective` fields every objective takes from a run's config (model aside)."""
    return dict(
        pad_id=pad_id,
        token_bytes=tuple(int(b) for b in token_bytes),
        mask_padding=config.data.mode == "pad",
        pairs=config.data.format == "pairs",
        supervise_padding=config.data.supervise_padding,
        loss_chunk=config.model.loss_chunk,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Objective(abc.ABC):
    """A model, its special ids and the per-token byte lengths used for bits/byte."""

    # How the model generates text: 'diffusion' (the masked-diffusion samplers), 'autoregressive'
    # (left to right), 'block' (block by block, a sampler inside each: `block_denoiser`) or ''
    # (it does not: an energy head).
    decoding: ClassVar[str] = "diffusion"

    model: Transformer
    pad_id: int
    token_bytes: tuple[int, ...]
    mask_padding: bool = False
    pairs: bool = False  # batches are prompt/response pairs (data.format='pairs'): likelihoods are conditional
    supervise_padding: bool = False  # pad mode: the padding after EOS is modelled too (the length is part of x)
    loss_chunk: int = 0  # positions per chunk of the head in `token_nll` (0: auto)

    @property
    def vocab_size(self) -> int:
        return self.model.cfg.vocab_size

    @property
    def mask_id(self) -> int:
        return process.mask_id(self.vocab_size)

    def denoiser(self, params: Params) -> Denoiser:
        """(tokens int[B, L], t float[B]) -> logits float[B, L, V] of the model with `params`;
        t reaches the network only if it is time-conditioned."""
        time_cond = self.model.cfg.time_conditioning
        return lambda tokens, t: self.model.apply({"params": params}, tokens, t if time_cond else None)

    @property
    def sampler_schedule(self) -> Schedule | None:
        """The masking schedule the samplers walk (None: the model is not a masked diffusion)."""
        return None

    def sampling_settings(self, settings: Any, canvas_L: Any) -> Any:
        """The sampler settings (a `SamplerSettings`) this model samples `canvas_L` with, or a
        one-line ConfigError when it cannot sample that way."""
        del canvas_L
        return settings

    def sampler_window(self, canvas_len: int) -> int:
        """Positions one within-canvas sampler run covers: the canvas, or one block (block decoding)."""
        return canvas_len

    @property
    def adapts_causal(self) -> bool:
        """Whether this objective may start from a causal (AR) run's params: it adapts them (an
        MDM with the shift), rather than silently serving them another attention pattern."""
        return False

    @property
    def preferred_sampler(self) -> dict | None:
        """SamplerSettings fields the model was made to sample with (a distilled student), or None."""
        return None

    def check_source(self, config: Any, source_config: Any) -> None:
        """Raises a one-line ConfigError when the run `init.workdir` (its saved config) cannot
        start the run of `config`."""
        del config, source_config

    def real_tokens(self, tokens_BxL: Array) -> Array:
        """bool[B, L]: positions that are data, not padding."""
        return tokens_BxL != self.pad_id

    @property
    def likelihood(self) -> str:
        """What evaluation's nats per token are (printed and recorded beside the numbers)."""
        return "loss (not a likelihood)"

    def attention_mask(self, tokens_BxL: Array) -> Array | None:
        """Key mask that hides padding (only in pad mode; packed batches have none)."""
        return self.real_tokens(tokens_BxL) if self.mask_padding else None

    def positions(self, batch: dict[str, Array]) -> tuple[Array, Array | None]:
        """(modelled bool[B, L]: what the loss covers, visible bool[B, L] or None: the keys
        attention reads). Plain batches model every real token, and with `supervise_padding` (pad
        mode) the padding too, every position visible; prompt/response batches (with 'segments')
        model the response and its EOS only, never the prompt, and the padding only with
        `supervise_padding` (which also leaves it visible)."""
        tokens = batch["tokens"]
        if "segments" not in batch:
            if self.supervise_padding:  # pad mode with the padding modelled: the length is part of x
                return jnp.ones(tokens.shape, bool), None
            return self.real_tokens(tokens), self.attention_mask(tokens)
        segments = batch["segments"]
        if self.supervise_padding:
            return segments != CONTEXT, None
        return segments == RESPONSE, segments != PADDING

    def token_nll(
        self,
        params: Params,
        inputs_BxL: Array,
        targets_BxL: Array,
        t_B: Array | None = None,
        attention_mask_BxL: Array | None = None,
        needed_BxL: Array | None = None,
        visible_LxL: Array | None = None,
    ) -> Array:
        """float32[B, L]: -log p(target | inputs) per position under `model`, the head applied in
        chunks (no [B, L, V] logits); 0 where `needed_BxL` is False. `t_B` reaches the network only
        if it is time-conditioned; `visible_LxL` (bool[L, L]) hides keys from queries."""
        t_in = t_B if self.model.cfg.time_conditioning else None
        annealing = {} if visible_LxL is None else {"visible_LxL": visible_LxL}
        hidden = self.model.apply(
            {"params": params}, inputs_BxL, t_in, attention_mask_BxL=attention_mask_BxL, return_hidden=True, **annealing
        )
        return chunked_token_nll(hidden, self.model.output_head(params), targets_BxL, self.loss_chunk, needed_BxL)

    def counted(self, batch: dict[str, Array]) -> Array:
        """bool[B, L]: the positions per-token numbers are normalised by: the real tokens, or in
        prompt/response batches the response and its EOS (also when the padding is supervised,
        so nats per response token stay comparable with and without it)."""
        if "segments" in batch:
            return batch["segments"] == RESPONSE
        return self.real_tokens(batch["tokens"])

    def bytes_per_example(self, tokens_BxL: Array, modelled_BxL: Array | None = None) -> Array:
        """int32[B]: UTF-8 bytes the modelled positions (default: the real tokens) stand for
        (specials count 0)."""
        table = jnp.asarray(self.token_bytes, jnp.int32)
        modelled = self.real_tokens(tokens_BxL) if modelled_BxL is None else modelled_BxL
        return jnp.where(modelled, table[tokens_BxL], 0).sum(-1)

    @abc.abstractmethod
    def loss(self, params: Params, batch: dict[str, Array], rng: Array, frozen: Params = None) -> tuple[Array, Metrics]:
        """Training loss (scalar, nats/token) and float32 scalar metrics."""

    @abc.abstractmethod
    def eval_sums(self, params: Params, batch: dict[str, Array], rng: Array, frozen: Params = None) -> Metrics:
        """The sums of `per_example_sums` for one batch."""

    def init_from(self, fresh: Params, pretrained: Params | None) -> tuple[Params, Params]:
        """(params, frozen) to start from: the pretrained params when given, and no frozen tree."""
        return (fresh if pretrained is None else pretrained), None

    @property
    def pretrained_model(self) -> nn.Module:
        """The network whose params `init.workdir` holds (what `init_from` receives)."""
        return self.model

    def frozen_partition_specs(self, param_specs: Any) -> Any:
        """Logical PartitionSpecs of the frozen tree, given those of the params (None: no tree)."""
        del param_specs
        return None

    def update_frozen(self, step: Array, params: Params, frozen: Params) -> Params:
        """The frozen tree after update number `step` (int32 scalar); unchanged by default."""
        del step, params
        return frozen
