"""Prepared token files: the same windows as the in-memory pipeline, exact resume, disjoint
per-process shards, sliced preparation merged into the same store, one-line errors."""

import json
import pathlib

import numpy as np
import pytest
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from data_config import data_cfg
from mdm.data import make_iterator, make_tokenizer, packing
from mdm.data.prepare import data_config, main, merge, prepare, prepare_slice
from mdm.data.store import TokenStore
from mdm.errors import DataError

WORDS = "the of and a to in is was for on that with as by at from his an were are which this be or".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pathlib.Path:
    """Five .txt documents and two .jsonl files of 40 lines, lengths 0 to 400 characters."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    text = lambda n: " ".join(rng.choice(WORDS, size=n))  # noqa: E731
    for i in range(5):
        (root / f"doc{i}.txt").write_text(text(int(rng.integers(20, 80))))
    for j in range(2):
        lines = [json.dumps({"text": text(int(rng.integers(0, 80)))}) for _ in range(40)]
        (root / f"part{j}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _text(corpus, **kw):
    return data_cfg(source="text", path=str(corpus / "*"), val_percent=20, **kw)


def _tokens(store_dir, **kw):
    return data_cfg(source="tokens", path=str(store_dir), val_percent=20, **kw)


def _prepared(corpus, out, **kw) -> pathlib.Path:
    prepare(data_config(source="text", path=str(corpus / "*"), val_percent=20), out, progress=False, **kw)
    return out


def _batches(cfg, split, n, **kw):
    tok = make_tokenizer(cfg)
    it = make_iterator(cfg, split, tok, 4, seed=3, **kw)
    return [next(it)["tokens"] for _ in range(n)] if n else [b["tokens"] for b in it]


@pytest.mark.parametrize("mode", ["pack", "pad"])
def test_a_prepared_store_yields_the_in_memory_windows(corpus, tmp_path, mode):
    """Same documents and seed: every batch of both splits is identical (3 shards per split)."""
    store_dir = _prepared(corpus, tmp_path / "store", num_shards=3)
    for split, n in (("train", 12), ("validation", 0)):
        want = _batches(_text(corpus, mode=mode), split, n)
        got = _batches(_tokens(store_dir, mode=mode), split, n)
        assert len(got) == len(want) > 0
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_a_prepared_store_trains_exactly_like_the_source(tmp_path):
    """train.py's loop on the embedded corpus and on its prepared store: the same metrics."""
    from mdm.loop import run
    from mdm.metrics import read_metrics
    from test_loop import tiny_config

    prepare(data_config(source="embedded"), tmp_path / "store", progress=False)
    run(tiny_config(), tmp_path / "memory")
    run(tiny_config(**{"data.source": "tokens", "data.path": str(tmp_path / "store")}), tmp_path / "prepared")
    strip = lambda rs: [{k: v for k, v in r.items() if k != "train/tokens_per_s"} for r in rs]  # noqa: E731
    memory, prepared = (strip(read_metrics(tmp_path / d / "metrics.jsonl")) for d in ("memory", "prepared"))
    assert prepared == memory and any("eval/nats_per_token" in r for r in memory)


def test_reading_resumes_at_the_same_window_with_prefetch_threads(corpus, tmp_path):
    cfg = _tokens(_prepared(corpus, tmp_path / "store"), read_threads=2, prefetch=3)
    tok = make_tokenizer(cfg)
    it = make_iterator(cfg, "train", tok, 4, seed=5)
    for _ in range(7):
        next(it)
    state = it.get_state()
    want = [next(it)["tokens"] for _ in range(5)]
    again = make_iterator(cfg, "train", tok, 4, seed=5)
    again.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(again)["tokens"], w)


def test_processes_read_disjoint_shards_that_cover_the_split(corpus, tmp_path):
    cfg = _tokens(_prepared(corpus, tmp_path / "store", num_shards=2))
    stream = TokenStore.open(tmp_path / "store").stream("train")
    windows = packing.Windows(stream, cfg.seq_len)
    count = 3
    usable = len(windows) - len(windows) % count
    tok = make_tokenizer(cfg)
    seen = []
    for p in range(count):
        it = make_iterator(cfg, "train", tok, 1, seed=0, process_index=p, process_count=count, shuffle=False, num_epochs=1)
        rows = [b["tokens"][0] for b in it]
        assert len(rows) == usable // count
        for k, row in enumerate(rows):  # process p reads windows p, p + P, ...
            np.testing.assert_array_equal(row, windows[p + k * count])
        seen += [p + k * count for k in range(len(rows))]
    assert sorted(seen) == list(range(usable))


def test_sliced_preparation_merges_into_the_same_store(corpus, tmp_path):
    """Three `--shard i` runs (out of order, one with 2 worker processes) and a merge give
    byte-identical files and manifest to one run (2 worker processes for all its slices); one slice
    gives the same windows too."""
    _prepared(corpus, tmp_path / "one_run", num_shards=3, workers=2)  # one pool for all slices
    sliced = tmp_path / "sliced"
    common = ["--source", "text", "--path", str(corpus / "*"), "--val_percent", "20", "--out", str(sliced), "--no_progress"]
    for shard, workers in ((2, 1), (0, 2), (1, 1)):
        assert main([*common, "--num_shards", "3", "--shard", str(shard), "--workers", str(workers)]) == 0
    assert not (sliced / "manifest.json").exists()
    assert main(["merge", str(sliced)]) == 0
    files = sorted(p.name for p in (tmp_path / "one_run").iterdir())
    assert files == sorted(p.name for p in sliced.iterdir()) and "train-00002-of-00003.tokens" in files
    for name in files:
        assert (sliced / name).read_bytes() == (tmp_path / "one_run" / name).read_bytes(), name
    single = _prepared(corpus, tmp_path / "single", num_shards=1)
    for split in ("train", "validation"):
        a, b = (TokenStore.open(d).stream(split) for d in (single, sliced))
        np.testing.assert_array_equal(a[0 : len(a)], b[0 : len(b)])
        assert TokenStore.open(sliced).manifest["splits"][split]["documents"] > 0


def _bpe(path) -> str:
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator([" ".join(WORDS)] * 20, trainer)
    raw.save(str(path))
    return str(path)


def _one_line(excinfo, *needles):
    message = str(excinfo.value)
    assert "\n" not in message and all(n in message for n in needles), message


def test_mismatched_tokenizer_missing_or_truncated_files_are_one_line(corpus, tmp_path):
    store_dir = _prepared(corpus, tmp_path / "store", num_shards=2)
    tok_path = _bpe(tmp_path / "bpe.json")
    other = _tokens(store_dir, tokenizer=tok_path)
    with pytest.raises(DataError) as e:
        make_iterator(other, "train", make_tokenizer(other), 4, seed=0)
    _one_line(e, "--config.data.tokenizer=bytes", "prepare the corpus again")
    # The same tokenizer spec with another vocabulary is caught by the fingerprint too.
    bpe_store = tmp_path / "bpe_store"
    prepare(data_config(source="text", path=str(corpus / "*"), val_percent=20, tokenizer=tok_path), bpe_store, progress=False)
    assert TokenStore.open(bpe_store).manifest["dtype"] == "<u2"
    with pytest.raises(DataError) as e:
        TokenStore.open(store_dir, make_tokenizer(other), tok_path)
    _one_line(e, "was tokenized with data.tokenizer='bytes'")

    shard = store_dir / "train-00001-of-00002.tokens"
    data = shard.read_bytes()
    shard.write_bytes(data[:-6])
    with pytest.raises(DataError) as e:
        TokenStore.open(store_dir)
    _one_line(e, "truncated", "prepare that slice again")
    shard.unlink()
    with pytest.raises(DataError) as e:
        make_iterator(_tokens(store_dir), "train", make_tokenizer(_tokens(store_dir)), 4, seed=0)
    _one_line(e, "is missing")


def test_empty_sources_missing_slices_and_missing_manifests_are_one_line(corpus, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    assert main(["--source", "text", "--path", str(empty / "*.txt"), "--out", str(tmp_path / "e"), "--no_progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "holds no documents" in err
    cfg = data_config(source="text", path=str(corpus / "*"), val_percent=20)
    prepare_slice(cfg, tmp_path / "part", 0, 3, progress=False)
    prepare_slice(cfg, tmp_path / "part", 2, 3, progress=False)
    with pytest.raises(DataError) as e:
        merge(tmp_path / "part")
    _one_line(e, "lacks 1 of 3 slices (--shard 1)")
    with pytest.raises(DataError) as e:
        TokenStore.open(tmp_path / "part")
    _one_line(e, "python -m mdm.data.prepare merge")
    with pytest.raises(DataError) as e:
        TokenStore.open(tmp_path / "nothing")
    _one_line(e, "python -m mdm.data.prepare --source")
    # A file added while the slices were being prepared: their listings differ, so no merge.
    grown = tmp_path / "grown"
    grown.mkdir()
    for f in corpus.iterdir():
        (grown / f.name).write_bytes(f.read_bytes())
    cfg = data_config(source="text", path=str(grown / "*"), val_percent=20)
    prepare_slice(cfg, tmp_path / "mixed", 0, 2, progress=False)
    (grown / "late.txt").write_text("a file that arrived late")
    prepare_slice(cfg, tmp_path / "mixed", 1, 2, progress=False)
    with pytest.raises(DataError) as e:
        merge(tmp_path / "mixed")
    _one_line(e, "comes from another preparation", "file listing")


def test_parquet_files_prepare_like_their_text(corpus, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    lines = (corpus / "part0.jsonl").read_text().splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), tmp_path / "data.parquet")
    (tmp_path / "jsonl").mkdir()
    (tmp_path / "jsonl" / "data.jsonl").write_text("\n".join(lines) + "\n")
    a = prepare(data_config(source="text", path=str(tmp_path / "*.parquet"), val_percent=20), tmp_path / "pq", progress=False)
    b = prepare(data_config(source="text", path=str(tmp_path / "jsonl" / "*"), val_percent=20), tmp_path / "js", progress=False)
    assert a["documents"] == b["documents"] > 0
    for split in ("train", "validation"):
        x, y = (TokenStore.open(tmp_path / d).stream(split) for d in ("pq", "js"))
        np.testing.assert_array_equal(x[0 : len(x)], y[0 : len(y)])
    with pytest.raises(DataError, match="no column 'body'"):
        prepare(data_config(source="text", path=str(tmp_path / "*.parquet"), text_key="body"), tmp_path / "bad", progress=False)
