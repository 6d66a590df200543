"""From a config to the pieces of a run: tokenizer, model, objective, optimiser, abstract state.

Nothing here allocates parameters: `abstract_state` and `sharded_abstract_state` give the train
state's shapes (and shardings), so the loop can create the state directly sharded or restore a
checkpoint onto any mesh, and `load_pretrained` restores another run's params for `init.workdir`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from mdm import data as mdm_data
from mdm.checkpoint import Checkpointer, as_path
from mdm.config import config_from_saved
from mdm.errors import CheckpointError, ConfigError
from mdm.networks import Transformer, TransformerConfig, attention
from mdm.objectives import Objective, make_objective
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


def model_config(config, vocab_size: int, platform: str | None = None) -> TransformerConfig:
    """The backbone's TransformerConfig from `config.model` (causal for the AR objective), with
    `model.attention` resolved for `platform` (default: JAX's default backend)."""
    m = config.model
    head_dim = m.d_model // m.num_heads
    implementation, why = attention.choose(m.attention, platform or attention.platform(), m.dtype, head_dim, m.attention_chunk)
    if why:
        log.info("model.attention=auto uses %s: %s", implementation, why)
    return TransformerConfig(
        vocab_size=vocab_size,
        num_layers=m.num_layers,
        d_model=m.d_model,
        num_heads=m.num_heads,
        mlp_dim=m.mlp_dim,
        causal=config.objective == "ar",
        tie_embeddings=m.tie_embeddings,
        time_conditioning=m.time_conditioning,
        rope_base=m.rope_base,
        dtype=m.dtype,
        remat=m.remat,
        init_std=m.init_std,
        attention=implementation,
        attention_chunk=m.attention_chunk,
    )


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


def _shapes(tree: Any) -> dict[str, tuple]:
    return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def load_pretrained(exp: Experiment, init, mesh: Mesh | None = None, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Any:
    """The params of the run `init.workdir` (checkpoint `init.step`, 0 = latest; EMA if
    `init.use_ema`), restored directly onto `mesh` when given, checked against the params that
    `exp.objective.pretrained_model` expects."""
    workdir = as_path(init.workdir)
    checkpointer = Checkpointer(workdir) if (workdir / "checkpoints").is_dir() else None
    steps = checkpointer.manager.all_steps() if checkpointer else []
    if not steps:
        raise CheckpointError(f"init.workdir={str(workdir)!r} holds no checkpoint; train that run first or fix the path")
    step = init.step or max(steps)
    if step not in steps:
        raise CheckpointError(f"init.workdir={str(workdir)!r} has no checkpoint at init.step={step}; available: {sorted(steps)}")
    saved, _ = config_from_saved(checkpointer.restore_config(step))
    if exp.config.objective == "mcd":  # schedule, eps and grid must be the teacher's
        from mdm.objectives.mcd import check_teacher_config

        check_teacher_config(exp.config, saved)
    source = build(saved)
    rng = jax.random.PRNGKey(0)
    seq_len = saved.data.seq_len
    if mesh is None:
        target = abstract_state(source, rng, seq_len)
    else:
        _, target = sharded_abstract_state(source, rng, seq_len, mesh, rules)
    state, _ = checkpointer.restore(step, target, saved)
    params = state.ema_params if init.use_ema else state.params
    expected = abstract_params(exp.objective.pretrained_model, rng, exp.config.data.seq_len)
    if _shapes(params) != _shapes(expected) or source.tokenizer.vocab_size != exp.tokenizer.vocab_size:
        raise ConfigError(
            f"init.workdir={str(workdir)!r} holds a model (objective {saved.objective}, {saved.model.num_layers} layers, "
            f"d_model {saved.model.d_model}, vocab {source.tokenizer.vocab_size}) that this run cannot start from; "
            "give this config the same model.* and data.tokenizer settings"
        )
    return params
