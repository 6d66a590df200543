"""Block diffusion (bd3lm): its NELBO identities, the exact K/V cache and block decoding's law."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mdm.errors import ConfigError
from mdm.networks import Transformer, TransformerConfig
from mdm.networks.attention import MaskSpec
from mdm.objectives import AutoregressiveObjective, MaskedDiffusionObjective
from mdm.objectives.bd3lm import BlockDiffusionObjective
from mdm.process import BlockDenoiser
from mdm.samplers import SamplerSettings, block_sample, make_sampler
from mdm.schedules import make_schedule

VOCAB = 11
PAD = 99


def _model(causal=False, layers=2):
    cfg = TransformerConfig(vocab_size=VOCAB, num_layers=layers, d_model=32, num_heads=4, mlp_dim=64, causal=causal)
    model = Transformer(cfg)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    params = jax.tree.map(lambda p: getattr(p, "value", p), params, is_leaf=lambda p: hasattr(p, "value"))
    return model, params


def _bd3lm(model, block_size, t_min=1e-5, eval_t_samples=4, pad=PAD):
    return BlockDiffusionObjective(
        model=model,
        pad_id=pad,
        token_bytes=(1,) * VOCAB,
        schedule=make_schedule("linear"),
        block_size=block_size,
        t_min=t_min,
        eval_t_samples=eval_t_samples,
    )


def _tokens(batch, length, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, size=(batch, length)), jnp.int32)


# ---- the mask ---------------------------------------------------------------------------------


def test_vectorised_mask_matches_its_definition():
    L, b = 8, 2
    spec = MaskSpec(block_size=b, half=L)
    dense = np.asarray(spec.dense(2 * L))
    for q, k in itertools.product(range(2 * L), repeat=2):
        qb, kb = (q % L) // b, (k % L) // b
        if q < L:  # noisy query: its own noisy block, earlier clean blocks
            want = (k < L and kb == qb) or (k >= L and kb < qb)
        else:  # clean query: clean blocks up to its own
            want = k >= L and kb <= qb
        assert dense[q, k] == want, (q, k)


# ---- the NELBO identities ------------------------------------------------------------------------


def test_block_size_l_is_exactly_the_mdm_objective():
    model, params = _model()
    L, B = 8, 6
    tokens = _tokens(B, L)
    bd = _bd3lm(model, L)
    mdm = MaskedDiffusionObjective(model=model, pad_id=PAD, token_bytes=(1,) * VOCAB, schedule=make_schedule("linear"))
    rng = jax.random.PRNGKey(3)
    loss_bd, _ = jax.jit(bd.loss)(params, {"tokens": tokens}, rng)
    loss_mdm, _ = jax.jit(mdm.loss)(params, {"tokens": tokens}, rng)
    np.testing.assert_allclose(float(loss_bd), float(loss_mdm), rtol=1e-5)
    # The count form of evaluation: the same u and uniforms give the same per-sequence bound.
    u_B = jax.random.uniform(jax.random.PRNGKey(4), (B,))
    uniforms = jax.random.uniform(jax.random.PRNGKey(5), (B, L))
    got = bd.count_nelbo_per_example(params, tokens, u_B[:, None], uniforms)
    want = mdm.count_nelbo_per_example(params, tokens, u_B, uniforms, jax.random.PRNGKey(6))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5)


def test_block_size_one_is_exactly_the_next_token_nll():
    """Block 1: each block is one token, masked, given the clean prefix; the count form is then
    deterministic and equals sum_l -log p(x_l | x_<l) of the network that reads [x_<l, MASK]
    through a causal mask (computed here one prefix at a time)."""
    model, params = _model()
    causal = Transformer(TransformerConfig(**{**model.cfg.__dict__, "causal": True}))
    L, B = 6, 3
    tokens = _tokens(B, L, seed=1)
    sums = jax.jit(_bd3lm(model, 1).eval_sums)(params, {"tokens": tokens}, jax.random.PRNGKey(0))
    want = 0.0
    for row in np.asarray(tokens):
        for pos in range(L):
            x = jnp.asarray(np.concatenate([row[:pos], [VOCAB]])[None], jnp.int32)
            logits = np.asarray(causal.apply({"params": params}, x)[0, -1], np.float64)
            want -= logits[row[pos]] - np.log(np.exp(logits).sum())
    np.testing.assert_allclose(float(sums["nats"]), want, rtol=1e-5)
    # And it is a proper next-token model: the AR twin's loss on the same params is a different number.
    ar = AutoregressiveObjective(model=causal, pad_id=PAD, token_bytes=(1,) * VOCAB)
    assert abs(float(ar.loss(params, {"tokens": tokens}, None)[0]) * B * L - want) > 1e-3


class _FixedLogits:
    """A 'network' ignoring its input: position l (of either half) always has logits[l]."""

    def __init__(self, logits_LxV):
        self.logits = jnp.asarray(logits_LxV, jnp.float32)
        self.cfg = TransformerConfig(vocab_size=logits_LxV.shape[1])

    def apply(self, variables, tokens_BxN, t_B=None, attention_mask_BxL=None, return_hidden=False, **_):
        reps = tokens_BxN.shape[1] // self.logits.shape[0]
        return jnp.broadcast_to(jnp.tile(self.logits, (reps, 1)), tokens_BxN.shape + self.logits.shape[-1:])

    def output_head(self, params):
        return None


@pytest.mark.parametrize("block_size", [1, 2, 6])
def test_training_and_evaluation_estimators_are_unbiased_for_fixed_logits(block_size):
    """For fixed logits the NELBO integral is closed-form: the training estimator averages to
    (alpha(t_min) - alpha(1)) sum_l nll_l per token, the evaluation (count) form to sum_l nll_l."""
    rng = np.random.default_rng(0)
    L, V, B = 6, 5, 64
    logits = rng.normal(size=(L, V)) * 2
    x0 = rng.integers(0, V, size=(1, L))
    nll = -(logits - np.log(np.exp(logits).sum(-1, keepdims=True)))[np.arange(L), x0[0]]
    obj = _bd3lm(_FixedLogits(logits), block_size, t_min=1e-2)
    obj = BlockDiffusionObjective(**{**obj.__dict__, "token_bytes": (1,) * V})
    tokens = jnp.asarray(np.repeat(x0, B, 0), jnp.int32)
    losses = jax.jit(jax.vmap(lambda k: obj.loss(None, {"tokens": tokens}, k)[0]))(jax.random.split(jax.random.PRNGKey(0), 400))
    s = obj.schedule
    want = float(s.alpha(jnp.float32(obj.t_min)) - s.alpha(jnp.float32(1.0))) * nll.sum() / L
    se = float(np.std(np.asarray(losses)) / np.sqrt(len(losses)))
    assert abs(float(np.mean(losses)) - want) < 4 * se + 1e-6 * want, (float(np.mean(losses)), want, se)
    evals = jax.jit(jax.vmap(lambda k: obj.eval_sums(None, {"tokens": tokens}, k)["nats"] / B))(
        jax.random.split(jax.random.PRNGKey(1), 200)
    )
    se = float(np.std(np.asarray(evals)) / np.sqrt(len(evals)))
    assert abs(float(np.mean(evals)) - nll.sum()) < 4 * se + 1e-6 * nll.sum()
    assert se > 0 or block_size == 1  # the count form is random unless every block is one token


# ---- the exact K/V cache -----------------------------------------------------------------------------


class _Recording:
    """Wraps a BlockDenoiser: records every logits call's output."""

    def __init__(self, inner: BlockDenoiser):
        self.inner, self.calls = inner, []

    def denoiser(self) -> BlockDenoiser:
        def logits(block, first, context):
            out = self.inner.logits(block, first, context)
            jax.debug.callback(lambda f, o: self.calls.append((int(f), np.asarray(o))), first, out)
            return out

        return BlockDenoiser(self.inner.start, logits, self.inner.commit)


@pytest.mark.parametrize("block_size", [2, 4])
def test_cached_logits_equal_full_recomputation_at_every_block_and_step(block_size):
    model, params = _model(layers=3)
    obj = _bd3lm(model, block_size)
    L, B = 16, 3
    canvas = np.full((B, L), VOCAB, np.int32)
    canvas[:, :3] = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]  # a prompt: block 0 prefilled (block 2), or partly kept (4)
    keys = jax.random.split(jax.random.PRNGKey(0), B)
    inner = make_sampler(SamplerSettings("fhs"), mask=VOCAB, schedule=obj.sampler_schedule)
    runs = {}
    for cached in (True, False):
        rec = _Recording(obj.block_denoiser(params, kv_cache=cached))
        out = block_sample(rec.denoiser(), keys, jnp.asarray(canvas), block_size=block_size, mask=VOCAB, inner=inner, pad=PAD)
        runs[cached] = (np.asarray(out.tokens), rec.calls, int(out.nfe))
    (tok_c, calls_c, nfe_c), (tok_f, calls_f, nfe_f) = runs[True], runs[False]
    assert len(calls_c) == len(calls_f) > L // block_size
    for (first_c, lc), (first_f, lf) in zip(calls_c, calls_f):
        assert first_c == first_f
        np.testing.assert_allclose(lc, lf, rtol=1e-5, atol=1e-5 * np.abs(lf).max())
    np.testing.assert_array_equal(tok_c, tok_f)
    assert nfe_c == nfe_f
    np.testing.assert_array_equal(tok_c[:, :3], canvas[:, :3])
    assert (tok_c < VOCAB).all()


def test_block_decoding_needs_a_block_multiple():
    obj = _bd3lm(_model()[0], 4)
    with pytest.raises(ValueError, match="not a multiple of the block size"):
        block_sample(
            obj.block_denoiser(None),
            jnp.zeros((1, 2), jnp.uint32),
            jnp.zeros((1, 6), jnp.int32),
            block_size=4,
            mask=VOCAB,
            inner=None,
        )


# ---- the law of block decoding on an enumerable toy ---------------------------------------------------

L_TOY, V_TOY, BS_TOY, EOS_TOY = 4, 3, 2, 2
MASK_TOY = V_TOY
SEQS = np.array(list(itertools.product(range(V_TOY), repeat=L_TOY)), np.int32)


def _joint(seed=0):
    return np.random.default_rng(seed).dirichlet(np.full(V_TOY**L_TOY, 0.8))


def _oracle(probs, block_size=BS_TOY) -> BlockDenoiser:
    """The exact block conditionals of `probs` over V^L: the context is the committed tokens."""
    seqs, p = jnp.asarray(SEQS), jnp.asarray(probs, jnp.float32)

    def logits(block, first, committed):
        x = jax.lax.dynamic_update_slice_in_dim(committed, block, first, axis=1)
        pos = jnp.arange(L_TOY)
        seen = (pos < first + block_size)[None, :] & (x != MASK_TOY)  # the prefix and the block's unmasked tokens
        ok = jnp.all(~seen[:, None, :] | (x[:, None, :] == seqs[None]), -1)  # [B, S]
        onehot = (seqs[..., None] == jnp.arange(V_TOY)[None, None, :]).astype(jnp.float32)
        mu = jnp.einsum("bs,slv->blv", ok * p[None], onehot)
        return jax.lax.dynamic_slice_in_dim(jnp.log(mu / mu.sum(-1, keepdims=True)), first, block_size, axis=1)

    commit = lambda block, first, committed: jax.lax.dynamic_update_slice_in_dim(committed, block, first, axis=1)  # noqa: E731
    return BlockDenoiser(lambda canvas, first: canvas, logits, commit)


def _draw(probs, canvas_row, n, settings=SamplerSettings("fhs"), seed=0, block_size=BS_TOY, **kw):
    inner = make_sampler(settings, mask=MASK_TOY, schedule=make_schedule("linear"))
    canvas = jnp.broadcast_to(jnp.asarray(canvas_row, jnp.int32), (n, L_TOY))
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    oracle = _oracle(probs, block_size)
    fn = jax.jit(lambda k, c: block_sample(oracle, k, c, block_size=block_size, mask=MASK_TOY, inner=inner, **kw))
    return fn(keys, canvas)


def _pvalue(samples, probs_by_seq):
    keys = [tuple(r) for r in samples]
    support = sorted(probs_by_seq)
    counts = np.array([sum(k == s for k in keys) for s in support], float)
    expected = np.array([probs_by_seq[s] for s in support]) * len(keys)
    assert sum(counts) == len(keys), "sampled a sequence outside the support"
    keep = expected > 0
    assert counts[~keep].sum() == 0
    return stats.chisquare(counts[keep], expected[keep]).pvalue


@pytest.mark.parametrize("settings", [SamplerSettings("fhs"), SamplerSettings("ancestral", steps=200)])
def test_block_decoding_draws_the_model_law(settings):
    probs = _joint()
    out = _draw(probs, [MASK_TOY] * L_TOY, 6000, settings)
    assert _pvalue(np.asarray(out.tokens), {tuple(s): p for s, p in zip(SEQS, probs)}) > 1e-3


def test_block_decoding_with_a_prompt_draws_the_conditional():
    probs = _joint(1)
    prompt = [1, 0, 2]  # block 0 is fixed, block 1 holds one prompt token and one to generate
    keep = np.all(SEQS[:, :3] == prompt, -1)
    cond = {tuple(s): p / probs[keep].sum() for s, p in zip(SEQS[keep], probs[keep])}
    out = _draw(probs, prompt + [MASK_TOY], 3000)
    assert _pvalue(np.asarray(out.tokens), cond) > 1e-3
    assert int(out.nfe) == 1 + 1 + 1  # start, one call for the last position, one commit


def _trim(seq):
    seq = list(seq)
    if EOS_TOY in seq:
        i = seq.index(EOS_TOY)
        seq[i + 1 :] = [PAD] * (L_TOY - i - 1)
    return tuple(seq)


def test_stopping_at_eos_keeps_the_law_of_the_trimmed_sample():
    probs = _joint(2)
    law: dict = {}
    for s, p in zip(SEQS, probs):
        law[_trim(s)] = law.get(_trim(s), 0.0) + p
    out = _draw(probs, [MASK_TOY] * L_TOY, 6000, stop_at_eos=True, eos=EOS_TOY, pad=PAD)
    tokens = np.asarray(out.tokens)
    assert _pvalue(tokens, law) > 1e-3
    # A row whose first block holds EOS made the start call, 2 FHS calls and a commit, and no more.
    first_block_eos = (tokens[:, :BS_TOY] == EOS_TOY).any(-1)
    assert first_block_eos.any() and (~first_block_eos).any()
    row_nfe = np.asarray(out.row_nfe)
    assert (row_nfe[first_block_eos] == 1 + BS_TOY + 1).all()
    assert (row_nfe[~first_block_eos] == 1 + 2 * (BS_TOY + 1)).all()
    assert int(out.nfe) == 1 + 2 * (BS_TOY + 1)


def test_when_every_row_stops_in_its_first_block_the_loop_ends_there():
    """EOS forced at position 0 in every row: the loop exits after one block (no call for the
    others) and each row is EOS then PAD only."""
    probs = np.where(SEQS[:, 0] == EOS_TOY, 1.0, 0.0)
    out = _draw(probs / probs.sum(), [MASK_TOY] * L_TOY, 32, stop_at_eos=True, eos=EOS_TOY, pad=PAD)
    tokens = np.asarray(out.tokens)
    assert (tokens[:, 0] == EOS_TOY).all() and (tokens[:, 1:] == PAD).all()
    assert int(out.nfe) == 1 + BS_TOY + 1 and (np.asarray(out.row_nfe) == 1 + BS_TOY + 1).all()


def test_min_length_renormalises_each_early_conditional_without_eos():
    """Suppressing EOS changes the model's conditionals, it does not condition the joint: with
    block size 1 (left to right) the law is prod_l p(x_l | x_<l), renormalised without EOS at
    l < min_length (computed here by enumeration)."""
    probs, m = _joint(3), 2
    law = {}
    for seq in SEQS:
        q = 1.0
        for pos in range(L_TOY):
            prefix = np.all(SEQS[:, :pos] == seq[:pos], -1)
            cond = np.array([probs[prefix & (SEQS[:, pos] == v)].sum() for v in range(V_TOY)])
            if pos < m:
                cond[EOS_TOY] = 0.0
            q *= cond[seq[pos]] / cond.sum()
        law[tuple(seq)] = q
    out = _draw(probs, [MASK_TOY] * L_TOY, 4000, block_size=1, eos=EOS_TOY, min_length=m, pad=PAD)
    tokens = np.asarray(out.tokens)
    assert not (tokens[:, :m] == EOS_TOY).any()
    assert _pvalue(tokens, law) > 1e-3


def test_full_sequence_samplers_take_the_same_eos_rules():
    """An MDM oracle through generation.build_sampler: trimming after EOS gives the law of the
    trimmed sample; min_length keeps EOS out of the early positions (which it often takes otherwise)."""
    from mdm.generation import build_sampler
    from oracles import JointOracleModel

    probs = _joint(5)
    obj = MaskedDiffusionObjective(
        model=JointOracleModel(probs, L_TOY, V_TOY), pad_id=PAD, token_bytes=(1,) * V_TOY, schedule=make_schedule("linear")
    )
    canvas = np.full((L_TOY,), MASK_TOY, np.int32)
    n = 6000
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    batch = jnp.broadcast_to(jnp.asarray(canvas), (n, L_TOY))
    _, trim = build_sampler(obj, SamplerSettings("fhs", stop_at_eos=True), canvas, eos_id=EOS_TOY)
    law: dict = {}
    for seq, p in zip(SEQS, probs):
        law[_trim(seq)] = law.get(_trim(seq), 0.0) + p
    assert _pvalue(np.asarray(jax.jit(trim)(None, None, keys, batch).tokens), law) > 1e-3
    _, plain = build_sampler(obj, SamplerSettings("fhs"), canvas, eos_id=EOS_TOY)
    _, late = build_sampler(obj, SamplerSettings("fhs", min_length=3), canvas, eos_id=EOS_TOY)
    assert (np.asarray(jax.jit(plain)(None, None, keys[:500], batch[:500]).tokens)[:, :3] == EOS_TOY).any()
    assert not (np.asarray(jax.jit(late)(None, None, keys[:500], batch[:500]).tokens)[:, :3] == EOS_TOY).any()


def test_a_row_is_the_same_alone_or_batched():
    probs = _joint(4)
    batched = _draw(probs, [MASK_TOY] * L_TOY, 5, stop_at_eos=True, eos=EOS_TOY, pad=PAD)
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    inner = make_sampler(SamplerSettings("fhs"), mask=MASK_TOY, schedule=make_schedule("linear"))
    for r in range(5):
        alone = block_sample(
            _oracle(probs),
            keys[r : r + 1],
            jnp.full((1, L_TOY), MASK_TOY, jnp.int32),
            block_size=BS_TOY,
            mask=MASK_TOY,
            inner=inner,
            stop_at_eos=True,
            eos=EOS_TOY,
            pad=PAD,
        )
        np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(batched.tokens)[r])
        assert int(alone.row_nfe[0]) == int(batched.row_nfe[r])


# ---- configuration --------------------------------------------------------------------------------------


def test_bad_block_configurations_are_one_line_errors():
    from mdm.config import base_config, validate

    c = base_config()
    c.objective = "bd3lm"
    c.data.seq_len, c.block.size = 128, 48
    with pytest.raises(ConfigError, match="block.size=48 must divide data.seq_len=128"):
        validate(c)
    c.block.size = 16
    c.model.time_conditioning = True
    with pytest.raises(ConfigError, match="time_conditioning=false"):
        validate(c)
    c.model.time_conditioning = False
    c.data.mode = "pad"
    with pytest.raises(ConfigError, match="data.mode=pack"):
        validate(c)


def test_block_decoding_refuses_what_it_cannot_do_exactly():
    from mdm.generation import build_sampler

    model, _ = _model()
    obj = _bd3lm(model, 4)
    canvas = np.full((8,), VOCAB, np.int32)
    infill = canvas.copy()
    infill[5] = 3
    with pytest.raises(ConfigError, match="continues a prompt"):
        build_sampler(obj, SamplerSettings("fhs"), infill)
    with pytest.raises(ConfigError, match="not a within-block sampler"):
        build_sampler(obj, SamplerSettings("autoregressive"), canvas)
    with pytest.raises(ConfigError, match="EOS id"):
        build_sampler(obj, SamplerSettings("fhs", stop_at_eos=True), canvas)
    tc = Transformer(
        TransformerConfig(vocab_size=VOCAB, num_layers=1, d_model=16, num_heads=2, mlp_dim=32, time_conditioning=True)
    )
    with pytest.raises(ConfigError, match="no exact K/V cache"):
        build_sampler(_bd3lm(tc, 4), SamplerSettings("fhs"), canvas)


def test_tokenizers_with_shared_special_ids_are_refused():
    from types import SimpleNamespace

    from mdm.data.tokenizers import check_special_ids

    check_special_ids(SimpleNamespace(bos_id=256, eos_id=257, pad_id=258, vocab_size=259))
    with pytest.raises(ConfigError, match="must be distinct"):
        check_special_ids(SimpleNamespace(bos_id=256, eos_id=257, pad_id=257, vocab_size=259))
    with pytest.raises(ConfigError, match="below the vocabulary"):
        check_special_ids(SimpleNamespace(bos_id=256, eos_id=257, pad_id=259, vocab_size=259))
