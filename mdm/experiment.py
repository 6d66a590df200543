"""From a config to the pieces of a run: tokenizer, model, objective, optimiser, abstract state.

Nothing here allocates parameters: `abstract_state` and `sharded_abstract_state` give the train
state's shapes (and shardings), so the loop can create the state directly sharded or restore a
checkpoint onto any mesh.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from mdm import data as mdm_data
from mdm.networks import Transformer, TransformerConfig, attention
from mdm.objectives import Objective, make_objective, objective_kind
from mdm.optim import make_optimizer
from mdm.sharding import DEFAULT_RULES, state_shardings
from mdm.state import TrainState, init_state

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Experiment:
    """What `run` builds from a config: everything but the mutable state."""

    config: Any
    tokenizer: Any
    objective: Objective
    optimizer: Any


def transformer_config(model: Mapping[str, Any], vocab_size: int, *, causal: bool, attention: str = "xla") -> TransformerConfig:
    """The backbone's TransformerConfig from a `model` config section (or any mapping with keys
    named as its fields; missing ones keep their defaults), with `attention` already resolved."""
    names = {f.name for f in dataclasses.fields(TransformerConfig)} - {"vocab_size", "causal", "attention"}
    return TransformerConfig(
        vocab_size=vocab_size, causal=causal, attention=attention, **{k: model[k] for k in names if k in model}
    )


def model_config(config, vocab_size: int, platform: str | None = None) -> TransformerConfig:
    """The backbone's TransformerConfig of a run (causal for a causal objective), with
    `model.attention` resolved for `platform` (default: JAX's default backend)."""
    m = config.model
    head_dim = m.d_model // m.num_heads
    implementation, why = attention.choose(m.attention, platform or attention.platform(), m.dtype, head_dim, m.attention_chunk)
    if why:
        log.info("model.attention=auto uses %s: %s", implementation, why)
    return transformer_config(m, vocab_size, causal=objective_kind(config.objective).causal, attention=implementation)


def build(config) -> Experiment:
    """Tokenizer, model, objective and optimiser for `config`."""
    tokenizer = mdm_data.make_tokenizer(config.data)
    model = Transformer(model_config(config, tokenizer.vocab_size))
    objective = make_objective(config, model, tokenizer.pad_id, tokenizer.token_bytes)
    optimizer = make_optimizer(config.optim, config.train.num_steps)
    return Experiment(config, tokenizer, objective, optimizer)


def _init_variables(model: nn.Module, rng: jax.Array, seq_len: int, unbox: bool = False):
    t = jnp.ones((1,), jnp.float32) if model.cfg.time_conditioning else None

    def init():
        variables = model.init(rng, jnp.zeros((1, seq_len), jnp.int32), t)
        return nn.unbox(variables) if unbox else variables

    # Traced under jit, so the sharding constraints (which unboxing adds) see the ambient mesh.
    return jax.eval_shape(jax.jit(init))


def logical_specs(model: nn.Module, rng: jax.Array, seq_len: int) -> Any:
    """The logical PartitionSpecs of `model`'s params."""
    return nn.get_partition_spec(_init_variables(model, rng, seq_len))["params"]


def abstract_params(model: nn.Module, rng: jax.Array, seq_len: int) -> Any:
    """ShapeDtypeStructs of `model`'s (unboxed) params."""
    return _init_variables(model, rng, seq_len, unbox=True)["params"]


def abstract_state(exp: Experiment, rng: jax.Array, seq_len: int) -> TrainState:
    """The TrainState's shapes, as if started from a pretrained run (the frozen tree included)."""
    pretrained = abstract_params(exp.objective.pretrained_model, rng, seq_len)
    return jax.eval_shape(jax.jit(lambda p: init_state(exp.objective, exp.optimizer, rng, seq_len, p)), pretrained)


def sharded_abstract_state(
    exp: Experiment, rng: jax.Array, seq_len: int, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES
) -> tuple[Any, Any]:
    """(state shardings, abstract state carrying them) for `mesh`, without allocating anything."""
    specs = logical_specs(exp.objective.model, rng, seq_len)
    abstract = abstract_state(exp, rng, seq_len)
    frozen_specs = exp.objective.frozen_partition_specs(specs)
    shardings = state_shardings(abstract, specs, exp.optimizer, mesh, rules, frozen_specs)
    with_sharding = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return shardings, with_sharding
