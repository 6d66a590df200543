"""The train state pytree and the pure, jit-able train and eval steps."""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import Array

from mdm.objectives import Objective
from mdm.optim import ema_update

Params = Any


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (the RNG is derived from the step)."""

    step: Array  # int32 scalar: number of optimiser updates applied
    params: Params  # float32 params
    opt_state: optax.OptState
    ema_params: Params
    frozen: Params = None  # the objective's untrained params (teacher, frozen denoiser) or None


def init_params(objective: Objective, rng: Array, seq_len: int) -> tuple[Params, Any]:
    """Unboxed float32 params and their logical-axis PartitionSpecs (same tree structure)."""
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    t = jnp.ones((1,), jnp.float32) if objective.model.cfg.time_conditioning else None
    variables = objective.model.init(rng, tokens, t)
    return nn.unbox(variables)["params"], nn.get_partition_spec(variables)["params"]


def init_state(
    objective: Objective, optimizer: optax.GradientTransformation, rng: Array, seq_len: int, pretrained: Params = None
) -> TrainState:
    """A state at step 0: fresh params, or what `objective.init_from` makes of `pretrained`."""
    fresh, _ = init_params(objective, rng, seq_len)
    params, frozen = objective.init_from(fresh, pretrained)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
        frozen=frozen,
    )


def make_train_step(
    objective: Objective, optimizer: optax.GradientTransformation, ema_decay: float, grad_accum: int
) -> Callable[[TrainState, dict, Array], tuple[TrainState, dict]]:
    """(state, batch, rng) -> (state, metrics); the batch is split into `grad_accum` micro-batches.

    Micro-batch i uses fold_in(rng, i); gradients are weighted by each micro-batch's share of the
    batch's real (non-padding) tokens, so the update equals the one of the whole batch at once
    (up to float rounding and the per-micro-batch time stratification), padding or not.
    """
    grad_fn = jax.value_and_grad(objective.loss, has_aux=True)

    def train_step(state: TrainState, batch: dict, rng: Array) -> tuple[TrainState, dict]:
        frozen = jax.lax.stop_gradient(state.frozen)
        if grad_accum == 1:
            (_, metrics), grads = grad_fn(state.params, batch, rng, frozen)
        else:
            micro = jax.tree.map(lambda x: x.reshape(grad_accum, -1, *x.shape[1:]), batch)

            total = jnp.maximum(objective.counted(batch).sum(), 1)

            def accumulate(carry, inputs):
                i, mb = inputs
                (_, m), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i), frozen)
                # Each micro-batch loss is per its own tokens; weight by its share of the batch's.
                w = jnp.maximum(objective.counted(mb).sum(), 1) / total
                return jax.tree.map(lambda c, x: c + w * x, carry, (g, m)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            _, zero_metrics = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro), rng, frozen)[0]
            init = (zeros, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_metrics))
            (grads, metrics), _ = jax.lax.scan(accumulate, init, (jnp.arange(grad_accum), micro))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            ema_params=ema_update(state.ema_params, params, state.step, ema_decay),
            frozen=objective.update_frozen(state.step + 1, params, state.frozen),
        )
        # params_norm checks the updated state (NaN/Inf there must never reach a checkpoint).
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads), params_norm=optax.tree.norm(params))
        return new_state, metrics

    return train_step
