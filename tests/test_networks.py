"""The transformer: causal vs bidirectional dependence, padding invariance, logical axis names."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm import precision
from mdm.networks import Transformer, TransformerConfig

V, L = 13, 10


def _model(**kw):
    cfg = dict(vocab_size=V, num_layers=2, d_model=32, num_heads=4, mlp_dim=64)
    cfg.update(kw)
    return Transformer(TransformerConfig(**cfg))


def _params(model, time=False):
    t = jnp.ones((1,)) if time else None
    return nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, L), jnp.int32), t))["params"]


def _influence(model, params, tokens):
    """influence[i, j] = max |logits[i] change| when only token j is changed: [L, L]."""
    apply = jax.jit(lambda x: model.apply({"params": params}, x)[0])
    base = apply(tokens[None])
    out = np.zeros((L, L))
    for j in range(L):
        changed = tokens.at[j].set((tokens[j] + 1) % V)
        out[:, j] = np.asarray(jnp.abs(apply(changed[None]) - base).max(-1))
    return out


def test_causal_model_never_looks_ahead_and_bidirectional_sees_both_sides():
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, V, L))
    for causal in (True, False):
        model = _model(causal=causal)
        influence = _influence(model, _params(model), tokens)
        if causal:
            assert np.triu(influence, k=1).max() == 0.0  # bit-identical: no look-ahead
            assert np.all(influence[np.tril_indices(L)] > 0)
        else:
            assert np.all(influence > 0)


def test_padding_keys_are_invisible_with_the_attention_mask():
    model = _model()
    params = _params(model)
    rng = np.random.default_rng(1)
    short = jnp.asarray(rng.integers(0, V, (1, 6)), jnp.int32)
    padded = jnp.concatenate([short, jnp.full((1, 4), 7, jnp.int32)], axis=1)
    mask = jnp.arange(10)[None] < 6
    with precision.scope("evaluation"):  # float32 matmuls, also where DEFAULT would be TF32 (GPUs)
        alone = model.apply({"params": params}, short)
        batched = model.apply({"params": params}, padded, None, mask)[:, :6]
    np.testing.assert_allclose(alone, batched, atol=1e-5)


def test_output_never_has_a_mask_logit_and_tied_head_is_the_embedding():
    model = _model()
    params = _params(model)
    logits = model.apply({"params": params}, jnp.full((2, L), V, jnp.int32))  # all-mask input
    assert logits.shape == (2, L, V) and logits.dtype == jnp.float32
    assert params["embedding"].shape == (V + 1, 32)


def test_time_conditioning_starts_time_agnostic_and_then_uses_t():
    model = _model(time_conditioning=True)
    params = _params(model, time=True)
    x = jnp.asarray(np.random.default_rng(2).integers(0, V + 1, (2, L)), jnp.int32)
    a = model.apply({"params": params}, x, jnp.asarray([0.1, 0.1]))
    b = model.apply({"params": params}, x, jnp.asarray([0.9, 0.9]))
    np.testing.assert_array_equal(a, b)  # adaLN-zero: zero-initialised modulation
    params = jax.tree.map(lambda p: p + 0.01, params)
    b = model.apply({"params": params}, x, jnp.asarray([0.9, 0.9]))
    a = model.apply({"params": params}, x, jnp.asarray([0.1, 0.1]))
    assert float(jnp.abs(a - b).max()) > 1e-4


def test_every_param_has_logical_axis_names():
    model = _model(time_conditioning=True, tie_embeddings=False)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, L), jnp.int32), jnp.ones((1,)))
    specs = nn.get_partition_spec(variables)["params"]
    shapes = nn.unbox(variables)["params"]
    for spec, x in zip(
        jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)), jax.tree.leaves(shapes)
    ):
        assert len(spec) == x.ndim and all(isinstance(n, str) for n in spec), (spec, x.shape)


@pytest.mark.parametrize("remat", ["full", "save_dots"])
def test_remat_does_not_change_the_function(remat):
    base, other = _model(), _model(remat=remat)
    params = _params(base)
    x = jnp.asarray(np.random.default_rng(3).integers(0, V, (2, L)), jnp.int32)
    g1 = jax.grad(lambda p: base.apply({"params": p}, x).sum())(params)
    g2 = jax.grad(lambda p: other.apply({"params": p}, x).sum())(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_chunked_attention_equals_one_call(causal):
    """Strided batch chunks (rows i, i + m, ...) give the same logits and gradients as one call."""
    base, chunked = _model(causal=causal), _model(causal=causal, attention="chunked", attention_chunk=3)
    params = _params(base)
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.integers(0, V, (8, L)), jnp.int32)
    pad = jnp.arange(L)[None, :] < jnp.asarray(rng.integers(1, L + 1, (8, 1)))  # right padding

    def loss(model, p):
        out = model.apply({"params": p}, x, None, pad)
        return (out * jnp.arange(V)[None, None, :]).sum(), out

    (_, o1), g1 = jax.value_and_grad(lambda p: loss(base, p), has_aux=True)(params)
    (_, o2), g2 = jax.value_and_grad(lambda p: loss(chunked, p), has_aux=True)(params)
    np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
