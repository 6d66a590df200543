"""Document sources: contents, the deterministic split, tfds via mock data, errors."""

import json
import os
import sysconfig
import zlib
from collections import Counter

import numpy as np
import pytest

from mdm.data import MarkovLanguage, documents, synthetic_sequences
from data_config import data_cfg
from mdm.errors import ConfigError, DataError


def _cfg(**overrides):
    return data_cfg(**overrides)


# --- embedded ------------------------------------------------------------------


def test_embedded_is_the_top_level_stdlib_split_by_file_name_hash():
    stdlib = sysconfig.get_paths()["stdlib"]
    names = sorted(n for n in os.listdir(stdlib) if n.endswith(".py") and os.path.isfile(os.path.join(stdlib, n)))
    val_names = [n for n in names if zlib.crc32(n.encode()) % 100 < 5]
    train_names = [n for n in names if n not in val_names]

    def read(ns):
        return [open(os.path.join(stdlib, n), "rb").read() for n in ns]

    train, val = documents(_cfg(), "train"), documents(_cfg(), "validation")
    assert train == read(train_names)
    assert val == read(val_names)
    assert 100 < len(names) and val and train
    assert documents(_cfg(), "validation") == val  # stable across calls
    assert documents(_cfg(val_percent=0), "validation") == []
    assert documents(_cfg(val_percent=100), "train") == []


# --- text ----------------------------------------------------------------------


@pytest.fixture
def corpus(tmp_path):
    """60 .txt documents and a .jsonl file with 40 more (plus blank lines)."""
    rng = np.random.default_rng(0)
    txt = [f"document {i}: " + "".join(rng.choice(list("abcdé "), 30)) for i in range(60)]
    for i, text in enumerate(txt):
        (tmp_path / f"doc{i:03d}.txt").write_text(text, encoding="utf-8")
    lines = [f"line {i} ünïcode {rng.integers(1000)}" for i in range(40)]
    with open(tmp_path / "more.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(lines):
            f.write(json.dumps({"text": text, "id": i}) + "\n")
            if i % 10 == 0:
                f.write("\n")
    return tmp_path, [t.encode("utf-8") for t in txt], lines


def _as_bytes(docs):
    return [d.encode("utf-8") if isinstance(d, str) else d for d in docs]


def test_text_documents_split_by_content_hash(corpus):
    root, txt, lines = corpus
    cfg = _cfg(source="text", path=str(root / "*"), val_percent=20)
    train, val = documents(cfg, "train"), documents(cfg, "validation")
    everything = txt + [s.encode("utf-8") for s in lines]
    assert Counter(_as_bytes(train)) + Counter(_as_bytes(val)) == Counter(everything)
    expected_val = [d for d in everything if zlib.crc32(d) % 100 < 20]
    assert sorted(_as_bytes(val)) == sorted(expected_val)
    assert not set(_as_bytes(train)) & set(_as_bytes(val))
    assert 0 < len(val) < len(everything)
    txt_cfg = _cfg(source="text", path=str(root / "*.txt"), val_percent=20)
    only_txt = documents(txt_cfg, "validation")
    assert sorted(only_txt) == sorted(d for d in txt if zlib.crc32(d) % 100 < 20)


def test_text_split_does_not_depend_on_file_names(corpus):
    root, _, _ = corpus
    cfg = _cfg(source="text", path=str(root / "*.txt"), val_percent=30)
    before = sorted(documents(cfg, "validation"))
    for path in root.glob("*.txt"):
        path.rename(root / f"renamed_{path.stem[::-1]}.txt")
    assert sorted(documents(cfg, "validation")) == before


def test_text_jsonl_text_key(tmp_path):
    with open(tmp_path / "a.jsonl", "w") as f:
        f.write(json.dumps({"body": "first"}) + "\n" + json.dumps({"body": "second"}) + "\n")
    cfg = _cfg(source="text", path=str(tmp_path / "*.jsonl"), text_key="body", val_percent=0)
    assert documents(cfg, "train") == ["first", "second"]
    with pytest.raises(DataError, match=r"a\.jsonl:1 has no text field 'text'"):
        documents(_cfg(source="text", path=str(tmp_path / "*.jsonl")), "train")


def test_text_errors(tmp_path):
    pattern = str(tmp_path / "missing" / "*.txt")
    with pytest.raises(DataError, match="no files match") as e:
        documents(_cfg(source="text", path=pattern), "train")
    assert pattern in str(e.value) and "data.path" in str(e.value)
    (tmp_path / "empty1.txt").write_text("")
    (tmp_path / "empty2.txt").write_text("")
    with pytest.raises(DataError, match="hold no text"):
        documents(_cfg(source="text", path=str(tmp_path / "*.txt")), "train")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2 is not valid JSON"):
        documents(_cfg(source="text", path=str(tmp_path / "*.jsonl")), "train")


def test_unknown_source_and_split():
    with pytest.raises(ConfigError, match="data.source='web'"):
        documents(_cfg(source="web"), "train")
    with pytest.raises(ConfigError, match="val_percent"):
        documents(_cfg(val_percent=101), "train")
    with pytest.raises(ValueError, match="split"):
        documents(_cfg(), "test")


# --- tfds ------------------------------------------------------------------------


def test_tfds_documents_from_mock_lm1b():
    tfds = pytest.importorskip("tensorflow_datasets")
    cfg = _cfg(source="tfds", tfds_name="lm1b")
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        train = documents(cfg, "train")
        val = documents(cfg, "validation")
        reference = tfds.data_source("lm1b", split="test")
        assert len(train) == 12 and len(val) == 12
        assert [val[i] for i in range(12)] == [reference[i]["text"] for i in range(12)]
        assert all(isinstance(train[i], (str, bytes)) and train[i] for i in range(12))
        with pytest.raises(DataError, match="has no field 'body'"):
            documents(_cfg(source="tfds", tfds_name="lm1b", text_key="body"), "train")


def test_tfds_errors_are_one_line(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    cfg = _cfg(source="tfds", tfds_name="lm1b", tfds_data_dir=str(tmp_path))
    with pytest.raises(DataError, match="tfds dataset 'lm1b' split 'train' is not available") as e:
        documents(cfg, "train")
    assert "\n" not in str(e.value) and "tfds build lm1b" in str(e.value)
    assert not any(tmp_path.rglob("*.array_record*"))  # nothing was downloaded or built
    cfg.tfds_name = "no_such_dataset_xyz"
    with pytest.raises(DataError, match="no_such_dataset_xyz") as e:
        documents(cfg, "validation")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="tfds_name"):
        documents(_cfg(source="tfds"), "train")


# --- synthetic ---------------------------------------------------------------------


def test_synthetic_sequences_index_ranges():
    cfg = _cfg(source="synthetic", synthetic_num_sequences=50, seq_len=12, synthetic_seed=4)
    lang = MarkovLanguage(8, seed=4)
    train, val = synthetic_sequences(cfg, "train"), synthetic_sequences(cfg, "validation")
    assert (len(train), len(val)) == (50, 5)
    np.testing.assert_array_equal(train[3], lang.sequence(3, 12))
    np.testing.assert_array_equal(val[2], lang.sequence(52, 12))
    assert train[0].shape == (12,) and train[0].dtype == np.int32
    with pytest.raises(IndexError):
        train[50]
    with pytest.raises(ConfigError, match="synthetic"):
        documents(cfg, "train")
