"""The NCE energy network: the library's bidirectional backbone reading x_t and a candidate x_0.

    h_0   = Linear_{2D -> D}(concat(Emb(x_t), Emb(x_0)))       one shared embedding table
    h     = blocks(h_0), final RMSNorm                          the MDM backbone's own layers
    e     = mean over positions of Linear_{D -> D}(h)           zero-initialised
    E     = w_2 . silu(W_1 e + b_1)                             one scalar per sequence

Parameter names match `Transformer`'s ('embedding', 'block_i', 'final_norm'), so `copy_backbone`
can start the network from an MDM checkpoint. The combiner starts as the mean of the two
embeddings (the MDM's own input wherever x_0 = x_t); the projection before pooling and the
hidden bias start at zero and silu(0) = 0, so a fresh network has E = 0 for every candidate
(docs/edlm.md says why). The energy is time-agnostic; the signature
`(x_t, t=None, x_0=None, attention_mask=None)` keeps `model.init(rng, tokens, t)` working, and
x_0 = None scores x_t itself. Logical axes: 'pair' (the two inputs), 'energy' (hidden width).
Shapes: B batch, L length, D width.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from mdm.energy.model import EnergyModel
from mdm.networks.transformer import REMAT_POLICIES, Block, Linear, RMSNorm, TransformerConfig, key_lengths


def _param(init_fn, names: tuple[str, ...]):
    return nn.with_logical_partitioning(init_fn, names)


def _mean_of_pair(key, shape, dtype=jnp.float32):
    """[2, D, D] kernel mapping (a, b) -> (a + b) / 2."""
    del key
    eye = jnp.eye(shape[1], shape[2], dtype=dtype)
    return 0.5 * jnp.stack([eye, eye])


class EnergyNetwork(nn.Module):
    """(x_t int[B, L], t ignored, x_0 int[B, L]) -> E float32[B]."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(
        self,
        tokens_BxL: Array,
        t_B: Array | None = None,
        candidate_BxL: Array | None = None,
        attention_mask_BxL: Array | None = None,
    ) -> Array:
        del t_B  # time-agnostic
        cfg = self.cfg
        dt = cfg.compute_dtype
        x0_BxL = tokens_BxL if candidate_BxL is None else candidate_BxL
        embed_VxD = self.param(
            "embedding", _param(nn.initializers.normal(cfg.init_std), ("vocab", "embed")), (cfg.vocab_size + 1, cfg.d_model)
        )
        pair_Bx2xLxD = jnp.stack([jnp.take(embed_VxD, tokens_BxL, axis=0), jnp.take(embed_VxD, x0_BxL, axis=0)], axis=1)
        pair_BxLx2xD = jnp.swapaxes(pair_Bx2xLxD, 1, 2)
        kernel = self.param("combine", _param(_mean_of_pair, ("pair", "embed", "energy")), (2, cfg.d_model, cfg.d_model))
        bias = self.param("combine_bias", _param(nn.initializers.zeros, ("energy",)), (cfg.d_model,))
        batch, length = tokens_BxL.shape
        x_BxLxD = (pair_BxLx2xD.reshape(-1, 2 * cfg.d_model).astype(dt) @ kernel.reshape(2 * cfg.d_model, -1).astype(dt)).reshape(
            batch, length, cfg.d_model
        ) + bias.astype(dt)[None, None]
        x_BxLxD = nn.with_logical_constraint(x_BxLxD, ("batch", "length", "embed_act"))

        policy = REMAT_POLICIES[cfg.remat]
        block_cls = Block if policy is None else nn.remat(Block, policy=policy)
        kv_lengths_B = key_lengths(attention_mask_BxL)
        for i in range(cfg.num_layers):
            x_BxLxD = block_cls(cfg, name=f"block_{i}")(x_BxLxD, None, kv_lengths_B)
            x_BxLxD = nn.with_logical_constraint(x_BxLxD, ("batch", "length", "embed_act"))
        x_BxLxD = RMSNorm(dt, cfg.norm_eps, name="final_norm")(x_BxLxD)
        # init_std 0: the zero-initialised projection (E starts constant across candidates).
        h_BxLxD = Linear((cfg.d_model,), ("embed", "energy"), 1, dt, 0.0, name="energy_proj")(x_BxLxD).astype(jnp.float32)

        if attention_mask_BxL is None:
            pooled_BxD = h_BxLxD.mean(axis=1)
        else:
            keep = attention_mask_BxL.astype(jnp.float32)[..., None]
            pooled_BxD = (h_BxLxD * keep).sum(1) / jnp.maximum(keep.sum(1), 1.0)
        width = cfg.d_model
        w1 = self.param("readout_kernel", _param(nn.initializers.normal(width**-0.5), ("embed", "energy")), (width, width))
        b1 = self.param("readout_bias", _param(nn.initializers.zeros, ("energy",)), (width,))
        w2 = self.param("readout_out", _param(nn.initializers.normal(width**-0.5), ("energy",)), (width,))
        hidden_BxD = jax.nn.silu(pooled_BxD @ w1 + b1[None])
        return (hidden_BxD @ w2).astype(jnp.float32)


def copy_backbone(energy_params: dict, mdm_params: dict) -> dict:
    """`energy_params` with every leaf that `mdm_params` holds at the same path and shape copied in.

    That is the embedding, the blocks and the final norm of an MDM `Transformer` (an MDM with
    time conditioning keeps its adaLN weights out: the energy network has none).
    """
    flat_mdm = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(mdm_params)}

    def pick(path, leaf):
        src = flat_mdm.get(jax.tree_util.keystr(path))
        return jnp.array(src, dtype=leaf.dtype, copy=True) if src is not None and src.shape == leaf.shape else leaf

    return jax.tree_util.tree_map_with_path(pick, energy_params)


def make_network_energy(network: EnergyNetwork, params=None) -> EnergyModel:
    """An `EnergyModel` from an NCE energy network and its params (Z is not known: not normalised)."""

    def apply(p, x0, xt, logp):
        del logp  # the network reads x_t and x_0 only
        return network.apply({"params": p}, xt, None, x0)

    return EnergyModel("nce", apply, params, normalised=False)
