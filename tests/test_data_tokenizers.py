"""Tokenizers: round trips, special ids, token byte lengths, errors."""

import ml_collections
import numpy as np
import pytest
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from mdm.data import ByteTokenizer, HFTokenizer, SymbolTokenizer, make_tokenizer
from mdm.errors import ConfigError, DataError

TEXTS = [
    "hello world",
    "héllo wörld, naïve café",
    "日本語のテキスト and € signs 🙂",
    "",
    "tabs\tand\nnewlines\n",
]
SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "héllo wörld, the café is naïve",
    "日本語 text € 🙂 mixed in",
    "hello hello hello world world",
]


def _check_specials(tok):
    specials = {tok.bos_id, tok.eos_id, tok.pad_id}
    assert len(specials) == 3
    assert all(0 <= i < tok.vocab_size for i in specials)
    assert tok.token_bytes.shape == (tok.vocab_size,)
    assert tok.token_bytes.dtype == np.int32
    assert all(tok.token_bytes[i] == 0 for i in specials)


# --- bytes -------------------------------------------------------------------


def test_byte_ids_are_the_utf8_bytes():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (259, 256, 257, 258)
    _check_specials(tok)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids.dtype == np.int32
        assert ids.tolist() == list(text.encode("utf-8"))
        np.testing.assert_array_equal(tok.encode(text.encode("utf-8")), ids)
        assert tok.decode(ids) == text
        assert tok.token_bytes[ids].sum() == len(text.encode("utf-8"))


def test_byte_decode_skips_specials_mask_and_invalid_ids():
    tok = ByteTokenizer()
    ids = [tok.bos_id, *b"ab", tok.pad_id, tok.vocab_size, 9999, -1, *"é".encode(), tok.eos_id]
    assert tok.decode(ids) == "abé"
    assert tok.decode(np.array(ids)) == "abé"


def test_byte_decode_replaces_invalid_utf8():
    tok = ByteTokenizer()
    assert tok.decode([0x61, 0xFF, 0x62]) == "a\ufffdb"
    assert tok.decode(list("é".encode())[:1]) == "\ufffd"


# --- symbols -----------------------------------------------------------------


def test_symbol_tokenizer_letters():
    tok = SymbolTokenizer(5)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (8, 5, 6, 7)
    _check_specials(tok)
    np.testing.assert_array_equal(tok.token_bytes, [1, 1, 1, 1, 1, 0, 0, 0])
    ids = np.array([0, 4, 2, 5, 1, 8, 6, 7])
    assert tok.decode(ids) == "aecb"
    assert tok.encode("aecb").tolist() == [0, 4, 2, 1]
    assert tok.encode(b"ea").tolist() == [4, 0]


def test_symbol_tokenizer_errors():
    with pytest.raises(DataError, match="'f' is not a symbol"):
        SymbolTokenizer(5).encode("abf")
    with pytest.raises(ConfigError, match="synthetic_vocab"):
        SymbolTokenizer(27)


# --- HuggingFace ---------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_style_path(tmp_path_factory):
    """A byte-level BPE trained here, with GPT-2's single special token."""
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(SENTENCES * 5, trainer)
    path = tmp_path_factory.mktemp("hf") / "gpt2_style.json"
    raw.save(str(path))
    return path


def test_hf_byte_level_round_trip_and_token_bytes(gpt2_style_path):
    tok = HFTokenizer(gpt2_style_path)
    raw = RawTokenizer.from_file(str(gpt2_style_path))
    alone = [raw.decode([i]) for i in tok.encode("日本語 €")]
    assert any("\ufffd" in piece for piece in alone), "want tokens holding partial characters"
    for text in TEXTS + SENTENCES:
        ids = tok.encode(text)
        assert ids.dtype == np.int32
        assert ids.tolist() == raw.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == text
        assert tok.encode(text.encode("utf-8")).tolist() == ids.tolist()
        assert tok.token_bytes[ids].sum() == len(text.encode("utf-8"))


def test_hf_reuses_endoftext_and_appends_missing_specials(gpt2_style_path):
    tok = HFTokenizer(gpt2_style_path)
    raw = RawTokenizer.from_file(str(gpt2_style_path))
    base = raw.get_vocab_size(with_added_tokens=True)
    assert tok.eos_id == raw.token_to_id("<|endoftext|>")
    assert (tok.bos_id, tok.pad_id, tok.vocab_size) == (base, base + 1, base + 2)
    _check_specials(tok)
    ids = tok.encode("hello world")
    wrapped = [tok.bos_id, *ids, tok.eos_id, tok.pad_id, tok.vocab_size]
    assert tok.decode(wrapped) == "hello world"


def test_hf_reuses_all_three_specials(tmp_path):
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(SENTENCES, trainer)
    raw.save(str(tmp_path / "tok.json"))
    tok = HFTokenizer(tmp_path / "tok.json")
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == raw.get_vocab_size(with_added_tokens=True)
    _check_specials(tok)


def test_hf_sentencepiece_style_token_bytes(tmp_path):
    """Metaspace pieces ('▁' is a space) and byte-fallback pieces '<0xNN>' (one byte)."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in ["▁", "t", "h", "e", "r", "th", "the", "ü"]:
        vocab[piece] = len(vocab)
    merges = [("t", "h"), ("th", "e")]
    raw = RawTokenizer(models.BPE(vocab, merges, byte_fallback=True, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    raw.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    raw.add_special_tokens(["<s>", "</s>"])
    raw.save(str(tmp_path / "sp.json"))
    tok = HFTokenizer(tmp_path / "sp.json")
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, raw.get_vocab_size())
    assert tok.token_bytes[vocab["<0xC3>"]] == 1
    assert tok.token_bytes[vocab["▁"]] == 1
    assert tok.token_bytes[vocab["ü"]] == 2
    assert tok.token_bytes[vocab["the"]] == 3
    text = "the über thé"
    ids = tok.encode(text)
    assert vocab["<0xC3>"] in ids.tolist()
    assert tok.decode(ids) == text
    assert tok.token_bytes[ids].sum() == len(text.encode("utf-8"))


def test_hf_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist") as missing:
        HFTokenizer(tmp_path / "nope.json")
    assert "nope.json" in str(missing.value) and "\n" not in str(missing.value)
    junk = tmp_path / "junk.json"
    junk.write_text("this is not a tokenizer")
    with pytest.raises(DataError, match="not a HuggingFace tokenizers file") as bad:
        HFTokenizer(junk)
    assert "\n" not in str(bad.value)


def test_hf_tokenizer_path_that_is_a_directory_asks_for_the_file(tmp_path, gpt2_style_path):
    with pytest.raises(DataError) as err:
        HFTokenizer(tmp_path)
    text = str(err.value)
    assert f"data.tokenizer={str(tmp_path)!r} is a directory: give the tokenizer.json file itself" in text
    assert "\n" not in text and "e.g." not in text  # no tokenizer.json inside to point at
    model_dir = tmp_path / "gpt2"
    model_dir.mkdir()
    (model_dir / "tokenizer.json").write_bytes(gpt2_style_path.read_bytes())
    with pytest.raises(DataError, match=r"is a directory: .* \(e\.g\. --config\.data\.tokenizer=.*gpt2/tokenizer\.json\)"):
        HFTokenizer(model_dir)


# --- make_tokenizer -----------------------------------------------------------


def test_make_tokenizer_dispatch(gpt2_style_path):
    cfg = ml_collections.ConfigDict({"source": "synthetic", "tokenizer": "bytes", "synthetic_vocab": 6})
    tok = make_tokenizer(cfg)
    assert isinstance(tok, SymbolTokenizer) and tok.vocab_size == 9
    cfg.source = "embedded"
    assert isinstance(make_tokenizer(cfg), ByteTokenizer)
    cfg.tokenizer = str(gpt2_style_path)
    assert isinstance(make_tokenizer(cfg), HFTokenizer)


# --- learnt BPE and the built-in stdlib-bpe ------------------------------------


def test_builtin_stdlib_bpe_counts_every_byte_and_round_trips():
    tok = make_tokenizer(ml_collections.ConfigDict({"source": "embedded", "tokenizer": "stdlib-bpe"}))
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (2048, 0, 1, 2)
    _check_specials(tok)
    code = "def f(self, x):\n    return [y for y in x if y is not None]  # ok\n"
    for text in TEXTS + [code]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.token_bytes[ids].sum() == len(text.encode("utf-8"))  # bits/byte's denominator is exact
    assert len(tok.encode(code)) < len(code.encode()) / 2  # it learnt Python: over 2 bytes a token here


def test_train_bpe_merges_the_frequent_pairs_and_refuses_a_tiny_vocabulary():
    from mdm.data.bpe import train_bpe

    raw = train_bpe(["abcabc abcabc"] * 50 + ["xyz"], 3 + 256 + 4)
    assert raw.get_vocab_size() == 3 + 256 + 4
    assert raw.decode(raw.encode("abcabc xyz").ids) == "abcabc xyz"
    assert len(raw.encode("abcabc").ids) < 6 and len(raw.encode("xyz").ids) == 3  # only seen-twice pairs merge
    with pytest.raises(ConfigError, match="--vocab_size=100 must be at least 259"):
        train_bpe(["abc"], 100)


@pytest.mark.skipif(
    __import__("sys").version_info[:2] != (3, 11), reason="the embedded corpus is the interpreter's own stdlib; made on 3.11"
)
def test_shipped_stdlib_bpe_is_what_the_prepare_command_makes(tmp_path):
    import json

    from mdm.data.prepare import main
    from mdm.data.tokenizers import BUILTIN

    out = tmp_path / "tok.json"
    assert main(["tokenizer", "--source", "embedded", "--vocab_size", "2048", "--out", str(out), "--no_progress"]) == 0
    made, shipped = json.loads(out.read_text()), json.loads(BUILTIN["stdlib-bpe"].read_text())
    assert made["model"] == shipped["model"] and made["added_tokens"] == shipped["added_tokens"]


def test_tokenizer_command_bad_input_is_one_line(tmp_path, capsys):
    from mdm.data.prepare import main

    assert main(["tokenizer", "--source", "embedded", "--out", str(tmp_path / "missing" / "tok.json")]) == 1
    assert main(["tokenizer", "--source", "embedded", "--vocab_size", "10", "--out", str(tmp_path / "t.json")]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "does not exist" in errors[0] and "--vocab_size=10" in errors[1]
    assert not (tmp_path / "t.json").exists()
