"""Supervised fine-tuning on prompt/response pairs: what is masked, what is scored, and the data."""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm import process
from mdm.data import make_iterator, make_tokenizer
from mdm.data.pairs import CONTEXT, PADDING, RESPONSE, encode_pair, python_function_pairs
from mdm.errors import DataError
from mdm.networks import Transformer, TransformerConfig
from mdm.objectives import AutoregressiveObjective, MaskedDiffusionObjective
from mdm.schedules import make_schedule
from data_config import data_cfg
from oracles import FixedLogitsModel, LogitsOracle, _Cfg

V, L, PAD = 7, 12, 6  # ids 0..5 are text, 6 is PAD; the mask id is V


def _batch(rows: int, seed: int = 0) -> dict:
    """Rows of BOS(5) prompt response EOS(4) PAD..., prompt 2..4 tokens, response 2..5."""
    rng = np.random.default_rng(seed)
    out = [
        encode_pair(rng.integers(0, 4, rng.integers(2, 5)), rng.integers(0, 4, rng.integers(2, 6)), L, 5, 4, PAD)
        for _ in range(rows)
    ]
    return {k: jnp.asarray(np.stack([o[k] for o in out])) for k in out[0]}


def _mdm(model, **kw) -> MaskedDiffusionObjective:
    return MaskedDiffusionObjective(
        model=model, pad_id=PAD, token_bytes=(1,) * V, schedule=make_schedule("linear"), mask_padding=True, pairs=True, **kw
    )


class Spy(LogitsOracle):
    """Fixed logits; every input x_t it sees is kept (host callback), to check what was masked."""

    def __init__(self):
        self.cfg = _Cfg(vocab_size=V)
        self.seen = []

    def apply(self, variables, tokens_BxL, t_B=None, attention_mask_BxL=None, return_hidden=False):
        jax.debug.callback(lambda x: self.seen.append(np.asarray(x)), tokens_BxL)
        return jnp.zeros(tokens_BxL.shape + (V,), jnp.float32)


@pytest.mark.parametrize("supervise_padding", [False, True])
def test_the_prompt_is_never_masked_over_ten_thousand_corruptions(supervise_padding):
    batch = _batch(10_000)
    spy = Spy()
    _mdm(spy, supervise_padding=supervise_padding).loss(None, batch, jax.random.PRNGKey(0))
    jax.effects_barrier()
    x_t = spy.seen[0]
    segments = np.asarray(batch["segments"])
    masked = x_t == V
    assert not masked[segments == CONTEXT].any()
    assert masked[segments == RESPONSE].mean() == pytest.approx(0.5, abs=0.02)  # t ~ U[0, 1]: half on average
    assert masked[segments == PADDING].any() == supervise_padding


def _real_net():
    cfg = TransformerConfig(vocab_size=V, num_layers=2, d_model=32, num_heads=2, mlp_dim=64)
    model = Transformer(cfg)
    return model, model.init(jax.random.PRNGKey(0), jnp.zeros((1, L), jnp.int32))["params"]


def test_tokens_at_padding_change_nothing_unless_padding_is_supervised():
    model, params = _real_net()
    batch = _batch(16, seed=1)
    padding = batch["segments"] == PADDING
    other = {**batch, "tokens": jnp.where(padding, (batch["tokens"] + 3) % 4, batch["tokens"])}
    assert bool((other["tokens"] != batch["tokens"]).any())
    causal = Transformer(dataclasses.replace(model.cfg, causal=True))  # same params, causal attention
    ar = lambda m, **kw: AutoregressiveObjective(model=causal, pad_id=PAD, token_bytes=(1,) * V, pairs=True, **kw)  # noqa: E731
    for cls in (_mdm, ar):
        obj = cls(model)
        grad = jax.jit(jax.grad(lambda p, b: obj.loss(p, b, jax.random.PRNGKey(2))[0]))
        loss = jax.jit(lambda p, b: obj.loss(p, b, jax.random.PRNGKey(2))[0])
        assert float(loss(params, batch)) == float(loss(params, other))
        for a, b in zip(jax.tree.leaves(grad(params, batch)), jax.tree.leaves(grad(params, other))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        supervised = cls(model, supervise_padding=True)
        changed = [float(supervised.loss(params, b, jax.random.PRNGKey(2))[0]) for b in (batch, other)]
        assert changed[0] != changed[1]


def test_the_mdm_loss_is_the_elbo_restricted_to_the_response():
    """Fixed logits: the loss is (1 - t_min) sum_b w(t_b) sum over masked response positions of
    -log softmax(logits)[x] / (response tokens), with the objective's own t and uniforms."""
    logits = np.random.default_rng(3).normal(size=(L, V))
    obj = _mdm(FixedLogitsModel(logits), t_min=1e-3)
    batch = _batch(64, seed=4)
    key = jax.random.PRNGKey(5)
    loss, _ = obj.loss(None, batch, key)
    k_t, k_mask = jax.random.split(key)
    t = np.asarray(process.stratified_times(k_t, 64, 1e-3), np.float64)
    u = np.asarray(process.example_uniforms(k_mask, 64, L), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    tokens, response = np.asarray(batch["tokens"]), np.asarray(batch["segments"]) == RESPONSE
    total = 0.0
    for b in range(64):
        masked = (u[b] < t[b]) & response[b]  # linear schedule: mask prob t, weight 1 / t
        total += sum(-logp[pos, tokens[b, pos]] for pos in np.flatnonzero(masked)) / t[b]
    np.testing.assert_allclose(float(loss), (1 - 1e-3) * total / response.sum(), rtol=1e-5)


def test_the_ar_loss_scores_the_response_given_the_prompt():
    model, params = _real_net()
    causal = Transformer(dataclasses.replace(model.cfg, causal=True))
    obj = AutoregressiveObjective(model=causal, pad_id=PAD, token_bytes=(1,) * V, pairs=True)
    batch = _batch(8, seed=6)
    loss, _ = obj.loss(params, batch, None)
    with jax.default_matmul_precision("highest"):
        tokens = batch["tokens"]
        inputs = jnp.concatenate([jnp.full_like(tokens[:, :1], obj.mask_id), tokens[:, :-1]], axis=1)  # start symbol
        logits = obj.model.apply({"params": params}, inputs)
    logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)), np.float64)
    tokens, response = np.asarray(batch["tokens"]), np.asarray(batch["segments"]) == RESPONSE
    nll = -np.take_along_axis(logp, tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss), nll[response].sum() / response.sum(), rtol=1e-4)


def test_pairs_are_encoded_as_bos_prompt_response_eos_padding():
    row = encode_pair(np.asarray([1, 2]), np.asarray([3]), 7, bos=5, eos=4, pad=6)
    assert row["tokens"].tolist() == [5, 1, 2, 3, 4, 6, 6]
    assert row["segments"].tolist() == [CONTEXT, CONTEXT, CONTEXT, RESPONSE, RESPONSE, PADDING, PADDING]
    cut = encode_pair(np.asarray([1]), np.asarray([3, 3, 3, 3]), 5, bos=5, eos=4, pad=6)
    assert cut["tokens"].tolist() == [5, 1, 3, 3, 3] and (cut["segments"][2:] == RESPONSE).all()  # no room for EOS
    with pytest.raises(DataError, match="leaves no room for a response in data.seq_len=4"):
        encode_pair(np.asarray([1, 2, 3]), np.asarray([3]), 4, bos=5, eos=4, pad=6)


def test_embedded_function_pairs_split_signature_and_docstring_from_the_body():
    pairs = python_function_pairs("train", 5)
    assert len(pairs) > 100
    for prompt, response in pairs[:50]:
        assert prompt.lstrip().startswith(("def ", "async def ")) and prompt.rstrip().endswith(('"""', "'''", '"', "'"))
        assert response.strip() and not response.lstrip().startswith(("def ", '"""'))
    assert 0 < len(python_function_pairs("validation", 5)) < len(pairs)  # split by file, as the documents


def test_jsonl_pairs_feed_batches_and_bad_lines_are_one_line_errors(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"q": f"question {i}?", "a": f"answer {i}."} for i in range(40)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    config = data_cfg(
        source="text", path=str(path), mode="pad", seq_len=32, val_percent=0, format="pairs", prompt_key="q", response_key="a"
    )
    tokenizer = make_tokenizer(config)
    batch = next(make_iterator(config, "train", tokenizer, 4, seed=0))
    assert batch["tokens"].shape == (4, 32) and set(np.unique(batch["segments"])) == {PADDING, CONTEXT, RESPONSE}
    text = tokenizer.decode(batch["tokens"][0][batch["segments"][0] == RESPONSE])
    assert text.startswith("answer ")
    for line, message in [
        ('{"q": "x"}', "lacks the text fields 'q' and 'a'"),
        ('{"q": "x", "a": "  "}', "has an empty 'a'"),
        ('{"q": "' + "long " * 20 + '", "a": "y"}', "leaves no room for a response"),
    ]:
        path.write_text(line)
        with pytest.raises(DataError, match=message):
            next(make_iterator(config, "train", tokenizer, 1, seed=0))


def test_training_and_evaluation_batches_of_pairs_carry_their_segments(tmp_path):
    """The loop's validation batches keep the segments, so evaluation reports the response NLL."""
    from mdm.cli import load_config
    from mdm.loop import load_eval_batches

    config = load_config(pathlib.Path(__file__).parents[1] / "configs" / "sft.py")
    batches = load_eval_batches(config, make_tokenizer(config.data))
    assert all(set(b) == {"tokens", "segments"} for b in batches)
    objective = _mdm(FixedLogitsModel(np.zeros((config.data.seq_len, 3))))
    response = batches[0]["segments"] == RESPONSE
    assert int(objective.counted({k: jnp.asarray(v) for k, v in batches[0].items()}).sum()) == int(response.sum())
