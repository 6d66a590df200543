"""HuggingFace LLaMA checkpoints in and out: logits against an independent NumPy LLaMA forward,
round trips, sharded files and one-line errors."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest

pytest.importorskip("safetensors")
from safetensors import numpy as st  # noqa: E402

from mdm import convert  # noqa: E402
from mdm.errors import ConfigError  # noqa: E402
from mdm.trained import load_trained  # noqa: E402

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "and", "then", "slept"]
SPECIALS = ["<s>", "</s>", "<pad>"]
CFG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention: two query heads per K/V head
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 500_000.0,
    "tie_word_embeddings": False,
    "vocab_size": len(SPECIALS) + len(WORDS),
    "max_position_embeddings": 64,
}


def _tokenizer(path: pathlib.Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="a"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


def _random_llama(cfg=CFG, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    n, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    h = d // n
    w = lambda *shape: (rng.normal(size=shape) * 0.2).astype(np.float32)  # noqa: E731
    t = {"model.embed_tokens.weight": w(v, d), "model.norm.weight": 1 + w(d), "lm_head.weight": w(v, d)}
    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        t |= {
            pre + "self_attn.q_proj.weight": w(n * h, d),
            pre + "self_attn.k_proj.weight": w(kv * h, d),
            pre + "self_attn.v_proj.weight": w(kv * h, d),
            pre + "self_attn.o_proj.weight": w(d, n * h),
            pre + "mlp.gate_proj.weight": w(f, d),
            pre + "mlp.up_proj.weight": w(f, d),
            pre + "mlp.down_proj.weight": w(d, f),
            pre + "input_layernorm.weight": 1 + w(d),
            pre + "post_attention_layernorm.weight": 1 + w(d),
        }
    return t


def _write(directory: pathlib.Path, tensors, cfg=CFG) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    st.save_file(tensors, str(directory / "model.safetensors"))
    _tokenizer(directory / "tokenizer.json")
    return directory


def llama_logits(t: dict[str, np.ndarray], cfg: dict, ids: np.ndarray) -> np.ndarray:
    """float64 logits [B, L, V] of the LLaMA architecture, written from its definition (HF names:
    rotate_half RoPE with inv_freq = theta^(-2i/H), causal attention, K/V heads repeated)."""
    t = {k: np.asarray(v, np.float64) for k, v in t.items()}
    d, n, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    h, eps = d // n, cfg["rms_norm_eps"]
    batch, length = ids.shape

    def rms(x, w):
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * w

    inv_freq = 1.0 / cfg["rope_theta"] ** (np.arange(0, h, 2) / h)
    freqs = np.arange(length)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(np.concatenate([freqs, freqs], -1)), np.sin(np.concatenate([freqs, freqs], -1))

    def rope(x):  # [B, L, heads, H]
        rotated = np.concatenate([-x[..., h // 2 :], x[..., : h // 2]], -1)
        return x * cos[None, :, None] + rotated * sin[None, :, None]

    x = t["model.embed_tokens.weight"][ids]
    causal = np.tril(np.ones((length, length), bool))
    for i in range(cfg["num_hidden_layers"]):
        p = lambda name: t[f"model.layers.{i}.{name}.weight"]  # noqa: E731
        a = rms(x, p("input_layernorm"))
        q = rope((a @ p("self_attn.q_proj").T).reshape(batch, length, n, h))
        k = rope((a @ p("self_attn.k_proj").T).reshape(batch, length, kv, h))
        v = (a @ p("self_attn.v_proj").T).reshape(batch, length, kv, h)
        k, v = np.repeat(k, n // kv, axis=2), np.repeat(v, n // kv, axis=2)
        s = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(h)
        s = np.where(causal, s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        o = np.einsum("bnqk,bknh->bqnh", s / s.sum(-1, keepdims=True), v).reshape(batch, length, d)
        x = x + o @ p("self_attn.o_proj").T
        m = rms(x, p("post_attention_layernorm"))
        gate = m @ p("mlp.gate_proj").T
        x = x + ((gate / (1 + np.exp(-gate))) * (m @ p("mlp.up_proj").T)) @ p("mlp.down_proj").T
    return rms(x, t["model.norm.weight"]) @ t["lm_head.weight"].T


def test_imported_logits_equal_the_llama_forward_and_export_round_trips(tmp_path):
    tensors = _random_llama()
    source = _write(tmp_path / "hf", tensors)
    convert.from_hf(source, tmp_path / "run", seq_len=16)
    trained = load_trained(tmp_path / "run")
    assert trained.config.model.num_kv_heads == 2 and trained.config.model.rope_base == 500_000.0
    ids = np.random.default_rng(1).integers(0, CFG["vocab_size"], size=(2, 12))
    got = np.asarray(trained.experiment.objective.model.apply({"params": trained.params}, ids), np.float64)
    want = llama_logits(tensors, CFG, ids)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())

    convert.to_hf(tmp_path / "run", tmp_path / "out")
    exported = st.load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(exported) == set(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(exported[name], value)
    convert.from_hf(tmp_path / "out", tmp_path / "run2", seq_len=16)
    again = load_trained(tmp_path / "run2")
    jax.tree.map(np.testing.assert_array_equal, again.params, trained.params)


def test_sharded_files_read_the_same_as_one(tmp_path):
    tensors = _random_llama(seed=2)
    one = _write(tmp_path / "one", tensors)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in halves.items():
        st.save_file({k: tensors[k] for k in keys}, str(sharded / file))
    index = {"weight_map": {k: file for file, keys in halves.items() for k in keys}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    a, b = convert.read_weights(one), convert.read_weights(sharded)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="has no config.json"):
        convert.from_hf(tmp_path, tmp_path / "run")
    gpt2 = _write(tmp_path / "gpt2", _random_llama(), {**CFG, "model_type": "gpt2"})
    with pytest.raises(ConfigError, match="not a LLaMA-architecture model"):
        convert.from_hf(gpt2, tmp_path / "run")
    scaled = _write(tmp_path / "scaled", _random_llama(), {**CFG, "rope_scaling": {"type": "linear", "factor": 2.0}})
    with pytest.raises(ConfigError, match="rope_scaling"):
        convert.from_hf(scaled, tmp_path / "run")
    wrong = _random_llama()
    wrong["model.layers.1.mlp.up_proj.weight"] = wrong["model.layers.1.mlp.up_proj.weight"][:, :-1]
    with pytest.raises(ConfigError, match="up_proj.weight' has shape"):
        convert.from_hf(_write(tmp_path / "wrong", wrong), tmp_path / "run")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(CFG))
    _tokenizer(empty / "tokenizer.json")
    with pytest.raises(ConfigError, match="no model.safetensors"):
        convert.from_hf(empty, tmp_path / "run")


def test_the_command_line_names_its_usage():
    assert convert.main(["from-hf"]) == 2
    assert convert.main(["to-hf", "only_one_path"]) == 2
