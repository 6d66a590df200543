"""The precision policy: evaluation is float32-exact against a float64 NumPy recomputation.

`tests/numpy_reference.py` recomputes the transformer in float64 from its params alone. The
float32 model, jitted under `precision.under("evaluation", ...)`, must match it to float32
accuracy: the logits, the masked-diffusion evaluation NELBO (the same random times and masks
as `eval_sums` draws, the network, NLL and ELBO weights recomputed in float64) and the AR
evaluation NLL. The last tests pin the policy itself: the evaluation path traces every float32
matmul at Precision.HIGHEST, the training path does not.

On CPU, XLA's float32 matmuls are float32 at any precision, so the numerical tests hold there
whatever the policy says; on GPUs/TPUs DEFAULT would be TF32/bf16 (~1e-3 relative) and they
would fail. The jaxpr tests are what catch a policy change on every backend.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference as ref
from mdm import precision, process
from mdm.loop import make_eval_fn
from mdm.networks import Transformer, TransformerConfig
from mdm.objectives import AutoregressiveObjective, MaskedDiffusionObjective
from mdm.schedules import make_schedule

V, L, B, LAYERS = 11, 16, 4, 2
PAD = 0
TOKEN_BYTES = tuple(range(V))  # any table: bytes are summed exactly
LENGTHS = np.array([16, 9, 3, 12])  # real tokens per row (padding is a suffix); one full row
# float32 vs float64 tolerances, measured on CPU (observed values in brackets):
LOGITS_TOL = 5e-6  # max |error| / max |logit|  [<= 1e-6]
TIME_LOGITS_TOL = 5e-4  # same, time-conditioned: sin/cos of 1000 t in float32 lose ~1e-4 rad  [~7e-5]
NATS_RTOL = 1e-6  # relative, on the pooled sums  [<= 1.3e-7]


def _model_and_params(**kw):
    """A tiny Transformer and random float32 params big enough for non-trivial logits (std ~1):
    every weight and bias 0.2 n (adaLN too, so time conditioning matters), RMSNorm scales 1 + 0.2 n.
    Shapes come from `jax.eval_shape` (tracing only: no initialiser is compiled)."""
    cfg = TransformerConfig(**{**dict(vocab_size=V, num_layers=LAYERS, d_model=32, num_heads=4, mlp_dim=64), **kw})
    model = Transformer(cfg)
    t = jnp.ones((1,)) if cfg.time_conditioning else None
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, L), jnp.int32), t))["params"]
    rng = np.random.default_rng(0)

    def draw(path, x):
        offset = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
        return jnp.asarray(offset + 0.2 * rng.standard_normal(x.shape), jnp.float32)

    return model, jax.tree_util.tree_map_with_path(draw, shapes)


def _padded_tokens(seed: int, pad: bool = True) -> np.ndarray:
    """int32[B, L] ids in 1..V-1 (never the pad id 0), right-padded to LENGTHS when `pad`."""
    tokens = np.random.default_rng(seed).integers(1, V, (B, L)).astype(np.int32)
    if pad:
        tokens = np.where(np.arange(L)[None] < LENGTHS[:, None], tokens, PAD).astype(np.int32)
    return tokens


def _normwise_error(got, want, where=None) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if where is not None:
        got, want = got[where], want[where]
    return float(np.abs(got - want).max() / np.abs(want).max())


def _reference_sums(nats_B, tokens_BxL):
    real = tokens_BxL != PAD
    bytes_B = np.where(real, np.asarray(TOKEN_BYTES)[tokens_BxL], 0).sum(-1)
    return ref.per_example_sums(nats_B, real.sum(-1), bytes_B)


def _assert_sums_close(got: dict, want: dict):
    for key, value in want.items():
        rtol = NATS_RTOL if key.startswith("nats") else 0.0  # counts and bytes are exact
        np.testing.assert_allclose(float(got[key]), value, rtol=rtol, atol=0, err_msg=key)


@pytest.mark.parametrize(
    "kw, tol",
    [
        (dict(), LOGITS_TOL),
        (dict(causal=True), LOGITS_TOL),
        (dict(tie_embeddings=False), LOGITS_TOL),
        (dict(time_conditioning=True), TIME_LOGITS_TOL),
    ],
    ids=["bidirectional", "causal", "untied", "time"],
)
def test_logits_match_float64_numpy(kw, tol):
    model, params = _model_and_params(**kw)
    tokens = np.random.default_rng(1).integers(0, V + 1, (B, L)).astype(np.int32)  # mask id V included
    real_BxL = np.arange(L)[None] < LENGTHS[:, None]
    t_B = np.array([1.0, 0.3, 0.01, 0.7], np.float32) if model.cfg.time_conditioning else None
    apply = jax.jit(precision.under("evaluation", lambda p, x, t, m: model.apply({"params": p}, x, t, m)))
    got = apply(params, tokens, t_B, jnp.asarray(real_BxL))
    want = ref.forward(
        params,
        tokens,
        vocab_size=V,
        num_layers=LAYERS,
        causal=model.cfg.causal,
        tie_embeddings=model.cfg.tie_embeddings,
        lengths_B=LENGTHS,
        t_B=t_B,
    )
    assert got.shape == want.shape == (B, L, V) and got.dtype == jnp.float32
    assert 0.5 < want[real_BxL].std() < 5.0  # non-trivial logits
    err = _normwise_error(got, want, real_BxL)  # padding positions are unspecified
    assert err < tol, f"max |logits - float64| / max |logits| = {err:.2e}"


@pytest.mark.parametrize("schedule, pad", [("linear", True), ("cosine", False)])
def test_mdm_eval_nelbo_matches_float64_numpy(schedule, pad):
    """`make_eval_fn` (jit under the evaluation policy) of the MDM ELBO equals its float64
    recomputation to 1e-6 relative: same times and uniforms, float64 network, NLL and weights."""
    eps, t_min, num_k = 1e-3, 1e-5, 8
    model, params = _model_and_params()
    objective = MaskedDiffusionObjective(
        model=model,
        pad_id=PAD,
        token_bytes=TOKEN_BYTES,
        mask_padding=pad,
        schedule=make_schedule(schedule, eps),
        t_min=t_min,
        eval_t_samples=num_k,
    )
    tokens = _padded_tokens(2, pad)
    rng = jax.random.PRNGKey(3)
    got = make_eval_fn(objective)(params, {"tokens": jnp.asarray(tokens)}, rng)

    # The randomness exactly as eval_sums draws it (float32 times, one offset per sequence).
    k_t, k_mask = jax.random.split(rng)
    offsets_B = jax.vmap(lambda b: jax.random.uniform(jax.random.fold_in(k_t, b), ()))(jnp.arange(B))
    real_BxL = tokens != PAD
    lengths_B = real_BxL.sum(-1) if pad else None
    total_B, margin = np.zeros(B), np.inf
    n_B = real_BxL.sum(-1)
    for k in range(num_k):
        # Evaluation bounds the samplers' model: the eps = 0 path, t in (0, 1], no t_min.
        t_B = np.asarray(1.0 - jnp.mod(offsets_B + k / num_k, 1.0), np.float64)
        u_BxL = np.asarray(process.example_uniforms(jax.random.fold_in(k_mask, k), B, L), np.float64)
        if schedule == "linear":  # alpha = 1 - t
            mask_prob_B, dmask_B = t_B, np.ones_like(t_B)
        else:  # alpha = cos(pi t / 2); 1 - cos(x) = 2 sin(x / 2)^2 without cancellation
            mask_prob_B, dmask_B = 2.0 * np.sin(0.25 * np.pi * t_B) ** 2, 0.5 * np.pi * np.sin(0.5 * np.pi * t_B)
        margin = min(margin, np.abs(u_BxL - mask_prob_B[:, None])[real_BxL].min())
        drawn_BxL = (u_BxL < mask_prob_B[:, None]) & real_BxL
        first_B = np.argmin(np.where(real_BxL, u_BxL, 2.0), -1)
        forced_BxL = (np.arange(L) == first_B[:, None]) & real_BxL & ~drawn_BxL.any(-1, keepdims=True)
        masked_BxL = drawn_BxL | forced_BxL  # an empty draw becomes the singleton at the smallest uniform
        weight_B = np.where(
            masked_BxL.sum(-1) == 1, dmask_B * n_B / (1.0 + (n_B - 1.0) * mask_prob_B), dmask_B / mask_prob_B
        )
        x_t = np.where(masked_BxL, V, tokens)
        logits = ref.forward(params, x_t, vocab_size=V, num_layers=LAYERS, lengths_B=lengths_B)
        nll_B = np.where(masked_BxL, ref.token_nll(logits, tokens), 0.0).sum(-1)
        total_B += weight_B * nll_B
    # float32 vs float64 mask probabilities must not flip a mask (a property of the seeds).
    assert margin > 1e-6, f"a uniform lies within {margin:.1e} of its mask probability: change the seed"
    nats_B = total_B / num_k
    assert np.all(nats_B > 1.0)
    _assert_sums_close(got, _reference_sums(nats_B, tokens))


def test_ar_eval_nll_matches_float64_numpy():
    model, params = _model_and_params(causal=True)
    objective = AutoregressiveObjective(model=model, pad_id=PAD, token_bytes=TOKEN_BYTES, mask_padding=True)
    tokens = _padded_tokens(4)
    got = make_eval_fn(objective)(params, {"tokens": jnp.asarray(tokens)}, jax.random.PRNGKey(0))
    inputs = np.concatenate([np.full((B, 1), V, np.int32), tokens[:, :-1]], axis=1)  # mask id as BOS
    logits = ref.forward(params, inputs, vocab_size=V, num_layers=LAYERS, causal=True)
    nats_B = np.where(tokens != PAD, ref.token_nll(logits, tokens), 0.0).sum(-1)
    _assert_sums_close(got, _reference_sums(nats_B, tokens))


# ---- the policy itself ------------------------------------------------------------------------


def _dot_precisions(closed_jaxpr) -> list:
    """The `precision` param of every dot_general in a jaxpr, sub-jaxprs (jit, scan, cond,
    checkpoint, custom_vjp) included."""
    found = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.append(eqn.params["precision"])
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if hasattr(sub, "eqns"):
                        visit(sub)
                    elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                        visit(sub.jaxpr)

    visit(closed_jaxpr.jaxpr)
    return found


HIGHEST = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
# What each path must give a float32 matmul; a change to precision.POLICY must fail here.
EXPECTED_HIGHEST = {"training": False, "evaluation": True, "sampling": True, "energy": True}


@pytest.mark.parametrize("path", sorted(EXPECTED_HIGHEST))
def test_policy_sets_the_matmul_precision_of_each_path(path):
    assert set(precision.POLICY) == set(EXPECTED_HIGHEST)
    x = jnp.ones((4, 4), jnp.float32)
    (dot_precision,) = _dot_precisions(jax.make_jaxpr(precision.under(path, lambda a, b: a @ b))(x, x))
    assert (dot_precision == HIGHEST) == EXPECTED_HIGHEST[path], (path, dot_precision)
    if not EXPECTED_HIGHEST[path]:
        assert dot_precision in (None, (jax.lax.Precision.DEFAULT,) * 2)


def test_every_matmul_of_the_eval_fn_is_highest_and_training_is_not():
    model, params = _model_and_params()
    objective = MaskedDiffusionObjective(
        model=model, pad_id=PAD, token_bytes=TOKEN_BYTES, mask_padding=True, schedule=make_schedule("linear", 1e-3)
    )
    batch, rng = {"tokens": jnp.asarray(_padded_tokens(5))}, jax.random.PRNGKey(0)
    evaluation = _dot_precisions(jax.make_jaxpr(make_eval_fn(objective))(params, batch, rng))
    assert len(evaluation) >= 4 * LAYERS + 1  # qkv, attention (2), out, gate_up, down per block; head
    assert all(p == HIGHEST for p in evaluation), set(evaluation)
    training = _dot_precisions(jax.make_jaxpr(precision.under("training", objective.eval_sums))(params, batch, rng))
    assert len(training) == len(evaluation) and not any(p == HIGHEST for p in training)
