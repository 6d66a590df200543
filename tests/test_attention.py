"""Every attention implementation equals a float64 softmax reference and the XLA path, in values
and gradients: bidirectional, causal, block-causal, with and without right padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm.errors import ConfigError
from mdm.networks import attention
from mdm.networks.attention import MaskSpec, attend, choose, splash_attention

B, L, N, H = 2, 128, 2, 16
MASKS = {
    "bidirectional": MaskSpec(),
    "causal": MaskSpec(causal=True),
    "block32": MaskSpec(block_size=32),
    "bd3lm16": MaskSpec(block_size=16, half=L // 2),  # [x_t ; x_0] of two 64-token halves
}


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=(B, L, N, H)), jnp.float32) for _ in range(3))


def _reference(q, k, v, lengths, mask: MaskSpec) -> np.ndarray:
    """float64 softmax(q k^T / sqrt(H)) v with an explicit [L, L] pattern and key lengths."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    idx = np.arange(L)
    if mask.causal:
        allowed = idx[None, :] <= idx[:, None]
    elif mask.half:  # noisy queries: own noisy block + earlier clean blocks; clean queries: block-causal clean
        half, blk = mask.half, (idx % mask.half) // mask.block_size
        noisy_q, noisy_k = idx[:, None] < half, idx[None, :] < half
        same, earlier = blk[None, :] == blk[:, None], blk[None, :] < blk[:, None]
        allowed = np.where(noisy_q, (noisy_k & same) | (~noisy_k & earlier), ~noisy_k & (same | earlier))
    elif mask.block_size:
        allowed = idx[None, :] // mask.block_size <= idx[:, None] // mask.block_size
    else:
        allowed = np.ones((L, L), bool)
    out = np.zeros_like(q)
    for b in range(B):
        keep = allowed & (idx[None, :] < (L if lengths is None else lengths[b]))
        for n in range(N):
            s = q[b, :, n] @ k[b, :, n].T / np.sqrt(H)
            s = np.where(keep, s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            out[b, :, n] = (p / p.sum(-1, keepdims=True)) @ v[b, :, n]
    return out


def _run(impl, q, k, v, lengths, mask):
    if impl == "splash":
        return splash_attention(q, k, v, lengths, mask, interpret=True)
    return attend(q, k, v, lengths, mask, impl, chunk=1)


IMPLS = ["xla", "chunked", "splash"] + (["cudnn"] if attention.platform() == "gpu" else [])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("padded", [False, True])
def test_every_path_equals_the_reference_in_values_and_gradients(impl, mask_name, padded):
    mask = MASKS[mask_name]
    if mask.half and padded:
        pytest.skip("block diffusion's [x_t ; x_0] layout never has padding")
    q, k, v = _inputs()
    lengths = jnp.asarray([L, 77], jnp.int32) if padded else None
    real = np.arange(L)[None, :] < (np.asarray(lengths)[:, None] if padded else L)  # rows that count
    dtype = jnp.bfloat16 if impl == "cudnn" else jnp.float32
    tol = 2e-2 if dtype == jnp.bfloat16 else 2e-5
    cast = lambda *xs: tuple(x.astype(dtype) for x in xs)  # noqa: E731

    out = jax.jit(lambda *a: _run(impl, *cast(*a), lengths, mask))(q, k, v)
    want = _reference(q, k, v, None if lengths is None else np.asarray(lengths), mask)
    np.testing.assert_allclose(
        np.where(real[..., None, None], np.asarray(out, np.float64), 0), np.where(real[..., None, None], want, 0), atol=tol
    )

    weights = jnp.asarray(np.random.default_rng(1).normal(size=(B, L, N, H)), jnp.float32) * real[..., None, None]

    def loss(impl_, q_, k_, v_):
        if impl_ == "dense":  # the reference: jax.nn.dot_product_attention with the dense mask
            out_ = attention._jax_attention(q_, k_, v_, lengths, mask=mask, implementation="xla")
        else:
            out_ = _run(impl_, *cast(q_, k_, v_), lengths, mask)
        return (out_.astype(jnp.float32) * weights).sum()

    got = jax.jit(jax.grad(lambda *a: loss(impl, *a), argnums=(0, 1, 2)))(q, k, v)
    ref = jax.jit(jax.grad(lambda *a: loss("dense", *a), argnums=(0, 1, 2)))(q, k, v)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(r, np.float64), atol=10 * tol)


def test_block_size_one_is_causal_and_full_block_is_bidirectional():
    q, k, v = _inputs(2)
    one = attend(q, k, v, None, MaskSpec(block_size=1), "xla")
    np.testing.assert_allclose(one, attend(q, k, v, None, MaskSpec(causal=True), "xla"), atol=1e-6)
    full = attend(q, k, v, None, MaskSpec(block_size=L), "xla")
    np.testing.assert_allclose(full, attend(q, k, v, None, MaskSpec(), "xla"), atol=1e-6)


def test_auto_picks_the_fast_path_of_each_backend():
    assert choose("auto", "gpu", "bfloat16", 64, 0) == ("cudnn", None)
    assert choose("auto", "tpu", "float32", 64, 0) == ("splash", None)
    assert choose("auto", "cpu", "float32", 64, 4) == ("chunked", None)
    assert choose("auto", "cpu", "float32", 64, 0) == ("xla", None)
    impl, why = choose("auto", "gpu", "float32", 64, 0)
    assert impl == "xla" and "bfloat16" in why  # falls back, saying why


@pytest.mark.parametrize(
    "args,needle",
    [
        (("flash", "cpu", "float32", 64, 0), "choose one of"),
        (("cudnn", "cpu", "bfloat16", 64, 0), "NVIDIA GPUs"),
        (("cudnn", "gpu", "bfloat16", 36, 0), "multiple of 8"),
        (("cudnn", "gpu", "bfloat16", 512, 0), "at most 256"),
        (("splash", "cpu", "float32", 64, 0), "TPUs"),
        (("chunked", "cpu", "float32", 64, 0), "attention_chunk"),
    ],
)
def test_unrunnable_requests_are_one_line_errors(args, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        choose(*args)
    assert "\n" not in str(err.value) and "model.attention" in str(err.value)


_SHARDED_SPLASH = """
import functools, json
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
from mdm.networks import attention
from mdm.networks.attention import MaskSpec, splash_attention
from mdm.sharding import DEFAULT_RULES, make_mesh

B, L, N, H = 4, 128, 2, 16
rng = np.random.default_rng(0)
q, k, v = (jnp.asarray(rng.normal(size=(B, L, N, H)), jnp.float32) for _ in range(3))
lengths = jnp.asarray([128, 77, 100, 5], jnp.int32)
real = (np.arange(L)[None, :] < np.asarray(lengths)[:, None])[..., None, None]
fn = functools.partial(splash_attention, mask=MaskSpec(causal=True), interpret=True)
loss = lambda f, *a: (jnp.where(real, f(*a), 0.0) ** 2).sum()
ref = lambda q, k, v, n: jax.nn.dot_product_attention(q, k, v, is_causal=True, key_value_seq_lengths=n)
with jax.set_mesh(make_mesh((2, 1, 2))), nn.logical_axis_rules(list(DEFAULT_RULES)):
    sharded = lambda q, k, v, n: attention._per_shard(fn, q, k, v, n)
    out = jax.jit(sharded)(q, k, v, lengths)
    grads = jax.jit(jax.grad(lambda *a: loss(sharded, *a, lengths), (0, 1, 2)))(q, k, v)
want = ref(q, k, v, lengths)
want_grads = jax.grad(lambda *a: loss(ref, *a, lengths), (0, 1, 2))(q, k, v)
errors = [float(np.abs(np.where(real, out - want, 0)).max())] + [float(np.abs(g - w).max()) for g, w in zip(grads, want_grads)]
print(json.dumps(errors))
"""


def test_splash_runs_per_shard_under_a_mesh():
    """On a (data 2, fsdp 1, tensor 2) mesh the Pallas kernel runs on each device's rows and heads
    (shard_map) and equals one-device XLA attention, values and gradients (4 simulated devices)."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", _SHARDED_SPLASH], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert max(errors) < 1e-4, errors


def test_lean_attention_equals_xla_for_any_mask_even_a_row_that_sees_nothing():
    from mdm.networks.lean_attention import lean_attention

    q, k, v = _inputs(3)
    rng = np.random.default_rng(4)
    visible = rng.random((B, 1, L, L)) < 0.3
    visible[0, 0, 5] = False  # query 5 of row 0 sees no key: uniform weights, no gradient to q or k
    visible = jnp.asarray(visible)
    weights = jnp.asarray(rng.normal(size=(B, L, N, H)), jnp.float32)

    def loss(fn, *a):
        return (fn(*a).astype(jnp.float32) * weights).sum()

    lean = lambda q_, k_, v_: lean_attention(q_, k_, v_, visible)  # noqa: E731
    ref = lambda q_, k_, v_: jax.nn.dot_product_attention(q_, k_, v_, mask=visible, implementation="xla")  # noqa: E731
    np.testing.assert_allclose(jax.jit(lean)(q, k, v), jax.jit(ref)(q, k, v), atol=2e-5)
    got = jax.jit(jax.grad(lambda *a: loss(lean, *a), argnums=(0, 1, 2)))(q, k, v)
    want = jax.jit(jax.grad(lambda *a: loss(ref, *a), argnums=(0, 1, 2)))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=2e-4)
    assert float(jnp.abs(got[0][0, 5]).max()) == 0.0  # the blind query's gradient


@pytest.mark.parametrize("padded", [False, True])
def test_a_traced_visibility_mask_reaches_every_cpu_path(padded):
    """Attention-mask annealing's [L, L] pattern: 'chunked' (lean) and 'xla' equal a float64 softmax
    over exactly the keys the pattern, the causal mask and the padding leave."""
    q, k, v = _inputs(5)
    rng = np.random.default_rng(6)
    pattern = (rng.random((L, L)) < 0.5) | np.eye(L, dtype=bool)  # every query sees itself
    lengths = jnp.asarray([L, 90], jnp.int32) if padded else None
    mask = MaskSpec(causal=True)
    q64, k64, v64 = (np.asarray(x, np.float64) for x in (q, k, v))
    want = np.zeros_like(q64)
    idx = np.arange(L)
    for b in range(B):
        keep = pattern & (idx[None, :] <= idx[:, None]) & (idx[None, :] < (90 if padded and b == 1 else L))
        for n in range(N):
            s = np.where(keep, q64[b, :, n] @ k64[b, :, n].T / np.sqrt(H), -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            want[b, :, n] = (p / p.sum(-1, keepdims=True)) @ v64[b, :, n]
    outs = {}
    for impl in ("chunked", "xla"):
        outs[impl] = jax.jit(lambda q_, k_, v_: attend(q_, k_, v_, lengths, mask, impl, 1, jnp.asarray(pattern)))(q, k, v)
        np.testing.assert_allclose(np.asarray(outs[impl], np.float64), want, atol=2e-5)
    weights = jnp.asarray(rng.normal(size=(B, L, N, H)), jnp.float32)
    visible = jnp.asarray(pattern)
    grads = [
        jax.jit(jax.grad(lambda *a: (attend(*a, lengths, mask, impl, 1, visible) * weights).sum(), (0, 1, 2)))(q, k, v)
        for impl in ("chunked", "xla")
    ]
    for g, r in zip(*grads):
        np.testing.assert_allclose(g, r, atol=2e-4)
