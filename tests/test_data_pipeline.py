"""grain pipelines: exact packing/padding, order, checkpoint restore, sharding, errors."""

import json
import math
import time
import zlib
from collections import Counter

import numpy as np
import pytest
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from mdm.data import (
    ByteTokenizer,
    HFTokenizer,
    MarkovLanguage,
    SymbolTokenizer,
    corpus_statistics,
    documents,
    make_iterator,
)
from mdm.data import packing
from data_config import data_cfg
from mdm.errors import ConfigError, DataError

BOS, EOS, PAD = 256, 257, 258


def _cfg(**overrides):
    return data_cfg(**overrides)


def _write_corpus(root, texts):
    """One .txt file per text, named so that sorted order is the given order."""
    for i, text in enumerate(texts):
        (root / f"{i:04d}.txt").write_bytes(text if isinstance(text, bytes) else text.encode())
    return _cfg(source="text", path=str(root / "*.txt"), val_percent=0)


def _windows(token_docs, seq_len):
    """Reference packing: '[BOS] doc [EOS]' concatenated, cut into full windows."""
    stream = []
    for doc in token_docs:
        stream += [BOS, *doc, EOS]
    return [stream[i * seq_len : (i + 1) * seq_len] for i in range(len(stream) // seq_len)]


def _rows(iterator, num_batches=None):
    """Rows of the next num_batches batches (all remaining when None), as lists."""
    rows = []
    for i, batch in enumerate(iterator):
        rows += batch["tokens"].tolist()
        if num_batches is not None and i + 1 == num_batches:
            break
    return rows


def _random_texts(count, seed, low=5, high=60):
    rng = np.random.default_rng(seed)
    return [bytes(rng.integers(33, 127, rng.integers(low, high)).tolist()) for _ in range(count)]


# --- record contents ------------------------------------------------------------------


def test_pack_windows_are_exact(tmp_path):
    texts = ["x", "hello", "a somewhat longer document that spans windows", "é ü 日本", "end"]
    cfg = _write_corpus(tmp_path, texts)
    cfg.seq_len = 7
    expected = _windows([list(t.encode()) for t in texts], 7)
    it = make_iterator(cfg, "train", ByteTokenizer(), 2, seed=0, shuffle=False, num_epochs=1)
    batch = next(it)
    assert batch["tokens"].shape == (2, 7) and batch["tokens"].dtype == np.int32
    rows = batch["tokens"].tolist() + _rows(it)
    assert rows == expected[: len(expected) // 2 * 2]


def test_pack_with_hf_tokenizer(tmp_path):
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        ["the cat sat on the mat", "the dog ate the cat food"],
        trainers.BpeTrainer(
            vocab_size=280, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    raw.save(str(tmp_path / "tok.json"))
    tok = HFTokenizer(tmp_path / "tok.json")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = ["the cat sat", "on the mat today", "the dog ate the cat food again"]
    cfg = _write_corpus(corpus, texts)
    cfg.seq_len = 5
    stream = []
    for t in texts:
        stream += [tok.bos_id, *raw.encode(t, add_special_tokens=False).ids, tok.eos_id]
    expected = [stream[i * 5 : (i + 1) * 5] for i in range(len(stream) // 5)]
    it = make_iterator(cfg, "train", tok, 1, seed=0, shuffle=False, num_epochs=1)
    assert _rows(it) == expected


def test_pad_records_are_exact(tmp_path):
    texts = ["hi", "abcdef", "abcdefg", "a much longer document than the window"]
    cfg = _write_corpus(tmp_path, texts)
    cfg.update(seq_len=8, mode="pad")
    expected = []
    for t in texts:
        record = ([BOS, *t.encode(), EOS])[:8]
        expected.append(record + [PAD] * (8 - len(record)))
    it = make_iterator(cfg, "train", ByteTokenizer(), 2, seed=0, shuffle=False, num_epochs=1)
    assert _rows(it) == expected
    shuffled = make_iterator(cfg, "train", ByteTokenizer(), 2, seed=0)
    assert sorted(_rows(shuffled, 2)) == sorted(expected)


def test_train_is_shuffled_with_a_new_permutation_each_epoch(tmp_path):
    texts = _random_texts(12, seed=1, low=14, high=15)  # [BOS] text [EOS] = one window
    cfg = _write_corpus(tmp_path, texts)
    windows = sorted(_windows([list(t) for t in texts], 16))
    assert len(windows) == 12
    it = make_iterator(cfg, "train", ByteTokenizer(), 4, seed=0)
    epochs = [_rows(it, 3) for _ in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == windows
    assert epochs[0] != epochs[1] != epochs[2]
    again = make_iterator(cfg, "train", ByteTokenizer(), 4, seed=0)
    assert _rows(again, 3) == epochs[0]
    other_seed = make_iterator(cfg, "train", ByteTokenizer(), 4, seed=1)
    assert _rows(other_seed, 3) != epochs[0]


def test_validation_is_one_ordered_pass(tmp_path):
    texts = _random_texts(40, seed=3)
    cfg = _write_corpus(tmp_path, texts)
    cfg.val_percent = 100
    expected = _windows([list(t) for t in texts], cfg.seq_len)
    it = make_iterator(cfg, "validation", ByteTokenizer(), 3, seed=0)
    assert _rows(it) == expected[: len(expected) // 3 * 3]


def test_synthetic_records_are_indexed_sequences():
    cfg = _cfg(source="synthetic", seq_len=10, synthetic_num_sequences=40, synthetic_seed=2)
    lang = MarkovLanguage(8, seed=2)
    tok = SymbolTokenizer(8)
    train = make_iterator(cfg, "train", tok, 4, seed=0, shuffle=False, num_epochs=1)
    assert _rows(train) == [lang.sequence(i, 10).tolist() for i in range(40)]
    val = make_iterator(cfg, "validation", tok, 2, seed=0)
    assert _rows(val) == [lang.sequence(40 + i, 10).tolist() for i in range(4)]
    shuffled = make_iterator(cfg, "train", tok, 4, seed=0)
    first_epoch = _rows(shuffled, 10)
    assert sorted(first_epoch) == sorted(lang.sequence(i, 10).tolist() for i in range(40))


# --- checkpointing -------------------------------------------------------------------


def _assert_restores(make, skip, then):
    """After `skip` batches, a saved (JSON round-tripped) state replays the next `then`."""
    it = make()
    _rows(it, skip)
    state = json.loads(json.dumps(it.get_state()))
    expected = _rows(it, then)
    restored = make()
    _rows(restored, 1)  # move it somewhere else first
    restored.set_state(state)
    assert _rows(restored, then) == expected


def test_state_restore_embedded():
    cfg = _cfg(seq_len=64)
    _assert_restores(lambda: make_iterator(cfg, "train", ByteTokenizer(), 8, seed=3), 5, 4)


def test_state_restore_across_epoch_boundaries(tmp_path):
    cfg = _write_corpus(tmp_path, _random_texts(10, seed=4))  # about 26 windows
    cfg.seq_len = 13
    make = lambda: make_iterator(cfg, "train", ByteTokenizer(), 3, seed=5)  # noqa: E731
    for skip in (2, 8, 9):
        _assert_restores(make, skip, 20)
    cfg.mode = "pad"
    _assert_restores(make, 2, 9)


def test_state_restore_synthetic():
    cfg = _cfg(source="synthetic", seq_len=12, synthetic_num_sequences=30)
    make = lambda: make_iterator(cfg, "train", SymbolTokenizer(8), 4, seed=0)  # noqa: E731
    _assert_restores(make, 6, 12)


# --- per-process shards --------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True])
def test_process_shards_are_disjoint_and_cover(tmp_path, shuffle):
    texts = _random_texts(50, seed=6)
    cfg = _write_corpus(tmp_path, texts)
    windows = _windows([list(t) for t in texts], cfg.seq_len)
    count = 3
    shards = [
        _rows(
            make_iterator(
                cfg, "train", ByteTokenizer(), 1, seed=0, process_index=p, process_count=count, shuffle=shuffle, num_epochs=1
            )
        )
        for p in range(count)
    ]
    assert len({len(s) for s in shards}) == 1
    everything = [tuple(r) for s in shards for r in s]
    assert len(set(everything)) == len(everything)  # windows are unique, so disjoint
    assert sorted(everything) == sorted(map(tuple, windows[: len(windows) // count * count]))


def test_process_shards_of_batches(tmp_path):
    texts = _random_texts(50, seed=7)
    cfg = _write_corpus(tmp_path, texts)
    cfg.val_percent = 100
    windows = _windows([list(t) for t in texts], cfg.seq_len)
    rows = [
        _rows(make_iterator(cfg, "validation", ByteTokenizer(), 4, seed=0, process_index=p, process_count=2)) for p in range(2)
    ]
    per_process = len(windows) // 2 // 4 * 4
    assert rows[0] == windows[0::2][:per_process]
    assert rows[1] == windows[1::2][:per_process]


# --- tfds (mock data, no TensorFlow) ---------------------------------------------------


@pytest.fixture
def mock_lm1b():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=30, policy=tfds.testing.MockPolicy.USE_CODE):
        source = tfds.data_source("lm1b", split="train")
        yield [source[i]["text"] for i in range(len(source))]


def _utf8(text):
    return list(text.encode("utf-8") if isinstance(text, str) else text)


def test_tfds_streamed_pack_is_exact(mock_lm1b):
    cfg = _cfg(source="tfds", tfds_name="lm1b", seq_len=8)
    it = make_iterator(cfg, "train", ByteTokenizer(), 3, seed=0, shuffle=False, num_epochs=1)
    expected = _windows([_utf8(t) for t in mock_lm1b], 8)
    assert _rows(it) == expected[: len(expected) // 3 * 3]
    shard = make_iterator(cfg, "train", ByteTokenizer(), 1, seed=0, process_index=1, process_count=4, shuffle=False, num_epochs=1)
    assert _rows(shard) == _windows([_utf8(t) for t in mock_lm1b[:28][1::4]], 8)
    shuffled = _rows(make_iterator(cfg, "train", ByteTokenizer(), 3, seed=0), 4)
    assert shuffled != expected[:12]


def test_tfds_streamed_state_restore(mock_lm1b):
    cfg = _cfg(source="tfds", tfds_name="lm1b", seq_len=8)
    per_epoch = len(_windows([_utf8(t) for t in mock_lm1b], 8)) // 3
    make = lambda: make_iterator(cfg, "train", ByteTokenizer(), 3, seed=1)  # noqa: E731
    for skip in (1, per_epoch - 1, per_epoch + 2):
        _assert_restores(make, skip, per_epoch + 3)


def test_tfds_validation_is_one_pass(mock_lm1b):
    cfg = _cfg(source="tfds", tfds_name="lm1b", seq_len=8)
    expected = _windows([_utf8(t) for t in mock_lm1b], 8)  # mock splits hold the same data
    rows = _rows(make_iterator(cfg, "validation", ByteTokenizer(), 3, seed=0))
    assert rows == expected[: len(expected) // 3 * 3]


# --- errors ---------------------------------------------------------------------------


def test_corpus_smaller_than_a_batch(tmp_path):
    cfg = _write_corpus(tmp_path, ["x" * 40, "y" * 40])  # 84 tokens = 5 windows of 16
    with pytest.raises(DataError, match="84 tokens") as e:
        make_iterator(cfg, "train", ByteTokenizer(), 6, seed=0)
    assert "lower batch_size or data.seq_len" in str(e.value) and "\n" not in str(e.value)
    make_iterator(cfg, "train", ByteTokenizer(), 5, seed=0)
    with pytest.raises(DataError, match="3 processes"):
        make_iterator(cfg, "train", ByteTokenizer(), 2, seed=0, process_count=3)
    cfg.mode = "pad"
    with pytest.raises(DataError, match="2 documents"):
        make_iterator(cfg, "train", ByteTokenizer(), 3, seed=0)
    with pytest.raises(DataError, match="validation split"):
        make_iterator(cfg, "validation", ByteTokenizer(), 1, seed=0)  # val_percent=0


@pytest.mark.parametrize("mode", ["pack", "pad"])
def test_a_one_file_corpus_has_an_empty_validation_split_reported_in_one_line(tmp_path, mode):
    text = b"one file is one document; " * 40
    assert zlib.crc32(text) % 100 >= 5  # the rule sends it to train, so validation is empty
    (tmp_path / "only.txt").write_bytes(text)
    cfg = _cfg(source="text", path=str(tmp_path / "*.txt"), val_percent=5, mode=mode)
    make_iterator(cfg, "train", ByteTokenizer(), 1, seed=0)
    with pytest.raises(DataError) as e:
        make_iterator(cfg, "validation", ByteTokenizer(), 1, seed=0)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("the validation split of data.source='text'") and "has no documents" in message
    assert "add more files/documents" in message and "raise data.val_percent" in message


def test_empty_splits_from_val_percent_name_the_split_and_the_fix(tmp_path):
    cfg = _write_corpus(tmp_path, _random_texts(20, seed=3))  # val_percent=0
    with pytest.raises(DataError, match=r"validation split .* has no documents: data.val_percent=0 sends every"):
        make_iterator(cfg, "validation", ByteTokenizer(), 1, seed=0)
    cfg.val_percent = 100
    with pytest.raises(DataError, match=r"train split .* has no documents: .*lower data.val_percent"):
        make_iterator(cfg, "train", ByteTokenizer(), 1, seed=0)
    with pytest.raises(DataError, match=r"train split of data.source='embedded' has no documents"):
        make_iterator(_cfg(val_percent=100), "train", ByteTokenizer(), 1, seed=0)


def test_concatenating_no_documents_is_an_empty_stream():
    stream = packing.concatenate_documents([], BOS, EOS)
    assert stream.dtype == np.int32 and stream.shape == (0,)


def test_streamed_corpus_smaller_than_a_batch(mock_lm1b):
    cfg = _cfg(source="tfds", tfds_name="lm1b", seq_len=64)
    with pytest.raises(DataError, match="fewer than one batch"):
        make_iterator(cfg, "train", ByteTokenizer(), 1000, seed=0)


def test_shape_and_config_errors():
    with pytest.raises(DataError, match="seq_len=1"):
        make_iterator(_cfg(seq_len=1), "train", ByteTokenizer(), 2, seed=0)
    with pytest.raises(DataError, match="batch_size=0"):
        make_iterator(_cfg(), "train", ByteTokenizer(), 0, seed=0)
    with pytest.raises(ConfigError, match="data.mode='chunk'"):
        make_iterator(_cfg(mode="chunk"), "train", ByteTokenizer(), 2, seed=0)
    with pytest.raises(DataError, match="synthetic_vocab=8"):
        make_iterator(_cfg(source="synthetic"), "train", SymbolTokenizer(4), 2, seed=0)


class _OutOfRange(ByteTokenizer):
    """Emits an id past its vocabulary for the letter 'z'."""

    def encode(self, text):
        ids = super().encode(text)
        ids[ids == ord("z")] = self.vocab_size + 5
        return ids


def test_token_id_outside_vocabulary(tmp_path):
    cfg = _write_corpus(tmp_path, ["abc" * 30, "xyz" * 30])
    with pytest.raises(DataError, match="token id 264 is outside"):
        make_iterator(cfg, "train", _OutOfRange(), 1, seed=0)
    cfg.mode = "pad"
    it = make_iterator(cfg, "train", _OutOfRange(), 1, seed=0, shuffle=False)
    next(it)
    with pytest.raises(DataError, match="token id 264 is outside"):
        next(it)


# --- speed and statistics ----------------------------------------------------------------


def test_embedded_train_iterator_builds_fast():
    start = time.perf_counter()
    it = make_iterator(_cfg(seq_len=1024), "train", ByteTokenizer(), 16, seed=0)
    next(it)
    assert time.perf_counter() - start < 2.0


def test_corpus_statistics_documents():
    cfg = _cfg()
    stats = corpus_statistics(cfg, ByteTokenizer(), "validation")
    data = b"".join(documents(cfg, "validation"))
    counts = np.array(list(Counter(data).values()), dtype=float)
    p = counts / counts.sum()
    entropy = -(p * np.log2(p)).sum()
    assert stats["unigram_entropy_bits_per_byte"] == pytest.approx(entropy, rel=1e-12)
    assert stats["num_bytes"] == stats["num_tokens"] == len(data)
    assert stats["token_unigram_bits_per_byte"] == pytest.approx(stats["unigram_entropy_bits_per_byte"], rel=1e-12)


def test_corpus_statistics_synthetic():
    cfg = _cfg(source="synthetic", seq_len=32)
    stats = corpus_statistics(cfg, SymbolTokenizer(8), "validation")
    lang = MarkovLanguage(8, seed=0)
    assert stats["entropy_bits_per_token"] == pytest.approx(lang.entropy(32) / 32 / math.log(2))
    assert stats["entropy_rate_bits_per_token"] == pytest.approx(lang.entropy_rate / math.log(2))
    assert stats["num_sequences"] == 409
