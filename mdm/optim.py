"""Optimiser: AdamW with linear warm-up, cosine decay and global-norm clipping; the params EMA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax import Array


def learning_rate_schedule(optim_cfg, num_steps: int) -> optax.Schedule:
    """lr of update number `count` (0-based): linear warm-up reaching lr after `warmup_steps`
    updates, then cosine down to lr * min_lr_ratio at the last update (`num_steps - 1`)."""
    base = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim_cfg.lr,
        warmup_steps=optim_cfg.warmup_steps,
        decay_steps=max(num_steps, optim_cfg.warmup_steps + 1),
        end_value=optim_cfg.lr * optim_cfg.min_lr_ratio,
    )
    return lambda count: base(count + 1)  # the first update already gets a non-zero lr


def _decay_mask(params):
    """Weight decay on matrices (kernels, embeddings), not on norm scales or biases."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim_cfg, num_steps: int) -> optax.GradientTransformation:
    """The optax chain the train step applies to float32 gradients."""
    adamw = optax.adamw(
        learning_rate_schedule(optim_cfg, num_steps),
        b1=optim_cfg.b1,
        b2=optim_cfg.b2,
        eps=optim_cfg.eps,
        weight_decay=optim_cfg.weight_decay,
        mask=_decay_mask,
    )
    if optim_cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip), adamw)
    return adamw


def ema_decay_at(step: Array, decay: float) -> Array:
    """Effective EMA decay min(decay, (1 + step) / (10 + step)): the EMA tracks early params closely."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema, params, step: Array, decay: float):
    """ema <- d * ema + (1 - d) * params with d = ema_decay_at(step, decay)."""
    d = ema_decay_at(step, decay)
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
