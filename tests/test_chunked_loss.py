"""The chunked cross-entropy equals the full-logits one, in values and gradients, for the bare
function and for every objective that uses it, with padding and with rows that need nothing."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm.networks import Transformer, TransformerConfig
from mdm.objectives import AutoregressiveObjective, MaskedDiffusionObjective
from mdm.objectives.chunked_loss import chunked_token_nll, resolve_chunk
from mdm.objectives.mcd import ConsistencyDistillationObjective
from mdm.schedules import make_schedule

B, L, D, V = 4, 16, 8, 37


def _full_nll64(hidden, head, targets):
    """float64 reference: -log softmax(hidden @ head)[target] from the whole [B, L, V] logits."""
    logits = np.asarray(hidden, np.float64) @ np.asarray(head, np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return lse - np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0]


def _data(seed=0):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, (B, L)), jnp.int32)
    needed = rng.random((B, L)) < 0.4
    needed[1] = False  # a row that needs nothing
    needed[2] = True  # a row that needs everything
    return hidden, head, targets, jnp.asarray(needed)


@pytest.mark.parametrize("chunk", [1, 4, L])
@pytest.mark.parametrize("use_needed", [False, True])
def test_chunked_nll_equals_the_full_logits_in_values_and_gradients(chunk, use_needed):
    hidden, head, targets, needed = _data()
    needed = needed if use_needed else None
    keep = np.ones((B, L), bool) if needed is None else np.asarray(needed)
    got = jax.jit(lambda h, w: chunked_token_nll(h, w, targets, chunk, needed))(hidden, head)
    np.testing.assert_allclose(got, np.where(keep, _full_nll64(hidden, head, targets), 0.0), rtol=1e-5, atol=1e-5)

    weights = jnp.asarray(np.random.default_rng(1).normal(size=(B, L)), jnp.float32)

    def full(h, w):
        logits = h @ w
        nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
        return (jnp.where(keep, nll, 0.0) * weights).sum()

    g_chunked = jax.jit(jax.grad(lambda h, w: (chunked_token_nll(h, w, targets, chunk, needed) * weights).sum(), (0, 1)))(
        hidden, head
    )
    g_full = jax.grad(full, (0, 1))(hidden, head)
    for a, b in zip(g_chunked, g_full):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    if needed is not None:  # unneeded positions get exactly no gradient
        assert np.all(np.asarray(g_chunked[0])[~keep] == 0)


def test_bf16_operands_accumulate_in_float32():
    hidden, head, targets, _ = _data(3)
    got = chunked_token_nll(hidden.astype(jnp.bfloat16), head, targets, 4)
    assert got.dtype == jnp.float32
    rounded = np.asarray(hidden.astype(jnp.bfloat16), np.float64), np.asarray(head.astype(jnp.bfloat16), np.float64)
    np.testing.assert_allclose(got, _full_nll64(*rounded, targets), rtol=1e-4, atol=1e-4)


def test_auto_chunk_divides_the_length_and_bounds_the_logits():
    assert resolve_chunk(0, 64, 1024, 50_257) == 32  # 64 x 32 x 50257 <= 2^27 < 64 x 64 x 50257
    assert resolve_chunk(0, 32, 128, 259) == 128  # small: one chunk, no scan
    assert resolve_chunk(48, 8, 128, 259) == 16  # a requested chunk becomes a divisor of L


def _transformer(causal=False, tie=True):
    cfg = TransformerConfig(
        vocab_size=V, num_layers=1, d_model=16, num_heads=2, mlp_dim=32, causal=causal, tie_embeddings=tie, init_std=0.3
    )
    model = Transformer(cfg)
    return model, nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, L), jnp.int32)))["params"]


def _tokens(pad):
    rng = np.random.default_rng(7)
    x = rng.integers(0, V - 1, (B, L))
    x[1, 9:] = pad  # right padding
    x[3, 2:] = pad
    return jnp.asarray(x, jnp.int32)


def _assert_same_loss_and_grads(make, params, tokens, rng=jax.random.PRNGKey(5), frozen=None):
    """`make(chunk)`'s loss with 4-position chunks equals the one-chunk (full logits) loss."""
    outs = []
    for chunk in (4, L):
        obj = make(chunk)
        (loss, _), grads = jax.jit(jax.value_and_grad(lambda p: obj.loss(p, {"tokens": tokens}, rng, frozen), has_aux=True))(
            params
        )
        sums = jax.jit(obj.eval_sums)(params, {"tokens": tokens}, rng, frozen)
        outs.append((loss, grads, sums["nats"]))
    (l1, g1, n1), (l2, g2, n2) = outs
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    np.testing.assert_allclose(n1, n2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert np.isfinite(float(l1)) and float(l1) > 0


@pytest.mark.parametrize("tie", [True, False])
def test_mdm_objective_chunked_equals_full_with_padding(tie):
    pad = V - 1
    model, params = _transformer(tie=tie)
    make = lambda c: MaskedDiffusionObjective(  # noqa: E731
        model=model,
        pad_id=pad,
        token_bytes=(1,) * V,
        mask_padding=True,
        loss_chunk=c,
        schedule=make_schedule("linear"),
        eval_t_samples=2,
    )
    _assert_same_loss_and_grads(make, params, _tokens(pad))


def test_ar_objective_chunked_equals_full_with_padding():
    pad = V - 1
    model, params = _transformer(causal=True)
    make = lambda c: AutoregressiveObjective(model=model, pad_id=pad, token_bytes=(1,) * V, loss_chunk=c)  # noqa: E731
    _assert_same_loss_and_grads(make, params, _tokens(pad))


@pytest.mark.parametrize("target", ["consistency", "stochastic"])
def test_mcd_objective_chunked_equals_full(target):
    pad = V - 1
    model, params = _transformer()
    teacher = jax.tree.map(lambda x: x * 1.1, params)
    base = ConsistencyDistillationObjective(
        model=model, pad_id=pad, token_bytes=(1,) * V, schedule=make_schedule("linear"), target=target
    )
    make = lambda c: dataclasses.replace(base, loss_chunk=c)  # noqa: E731
    frozen = {"teacher": teacher, "round": jnp.asarray(0, jnp.int32)}
    _assert_same_loss_and_grads(make, params, _tokens(pad), frozen=frozen)


def test_rows_with_nothing_masked_cost_nothing_and_add_nothing():
    """t near 0: no position is masked, so every chunk is skipped and the NELBO is exactly 0."""
    model, params = _transformer()
    obj = MaskedDiffusionObjective(
        model=model, pad_id=V - 1, token_bytes=(1,) * V, loss_chunk=4, schedule=make_schedule("linear")
    )
    tokens = _tokens(V - 1)
    nelbo = obj.nelbo_per_example(params, tokens, jnp.full((B,), 1e-6), jnp.full((B, L), 0.5))
    assert np.all(np.asarray(nelbo) == 0.0)
