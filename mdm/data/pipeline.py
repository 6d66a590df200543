"""grain input pipelines: batches {'tokens': int32 [batch_size, seq_len]}.

Records (int32 [seq_len] each) are made in one of five ways:
- pack mode, in memory (embedded, text, and the tfds validation split): all
  documents are tokenized once into one stream, cut into `packing.Windows`.
- pack mode, streamed (tfds train split, too big for memory): documents are
  shuffled by index, tokenized on the fly and cut by `packing.PackIterDataset`.
- pad mode: each document is tokenized and padded when its record is read.
- synthetic: `MarkovLanguage.sequence(index, seq_len)` (data.mode is ignored).
- tokens (prepared by `mdm.data.prepare`): windows of the memory-mapped token
  stream (pack) or stored documents padded (pad), the same records as in memory.
Process p of P keeps records (documents, when streamed) p, p + P, ... of the
first P * (n // P), so all processes get equally many; each shuffles its own.
Random-access records make a checkpoint a record index. `data.read_threads`
threads make whole batches (reading, tokenizing on the fly, packing) ahead of
the training step, `data.prefetch` batches deep (by default on accelerators
only); the order and the resume state are those of the single-threaded pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import grain
import jax
import numpy as np

from mdm.data import packing, pairs, sources, store
from mdm.data.tokenizers import Tokenizer
from mdm.errors import ConfigError, DataError

MODES = ("pack", "pad")
_NO_THREADS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def _checked(tokens: np.ndarray, tokenizer: Tokenizer) -> np.ndarray:
    """`tokens`, after checking every id is in [0, vocab_size)."""
    if tokens.size:
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= tokenizer.vocab_size:
            raise DataError(
                f"token id {high if high >= tokenizer.vocab_size else low} is outside the"
                f" tokenizer's vocabulary [0, {tokenizer.vocab_size}): use a tokenizer"
                " whose vocab_size covers every id it produces"
            )
    return tokens


def _describe(data_cfg: Any, split: str) -> str:
    return f"the {split} split of data.source={data_cfg.source!r}"


def _too_small(data_cfg: Any, split: str, have: str, records: int, batch_size: int, process_count: int) -> DataError:
    return DataError(
        f"{_describe(data_cfg, split)} has {have}, i.e. {records // process_count} records"
        f" of seq_len {data_cfg.seq_len} per process ({process_count} processes), fewer"
        f" than one batch of {batch_size}: lower batch_size or data.seq_len, or use a"
        " larger corpus"
    )


def _empty_split(data_cfg: Any, split: str) -> DataError:
    """The one-line error for a split with no documents, with the fix for its cause."""
    where = _describe(data_cfg, split)
    if data_cfg.source == "tfds":
        key = "tfds_train_split" if split == "train" else "tfds_eval_split"
        return DataError(f"{where} has no documents: set data.{key} to a non-empty split of {data_cfg.tfds_name!r}")
    if data_cfg.source == "tokens":
        fix = "a larger corpus or --val_percent > 0" if split == "validation" else "a larger corpus or a lower --val_percent"
        return DataError(f"{where} (data.path={data_cfg.path!r}) holds no documents: prepare the store again from {fix}")
    if data_cfg.source == "text":
        where += f" (data.path={data_cfg.path!r})"
    val_percent = data_cfg.val_percent
    key = "its bytes" if data_cfg.source == "text" else "its file name"
    rule = f"a document goes to validation when crc32({key}) % 100 < data.val_percent={val_percent}"
    if split == "validation" and val_percent == 0:
        fix = "data.val_percent=0 sends every document to train: set data.val_percent to e.g. 5"
    elif split == "validation":
        fix = f"{rule}; add more files/documents (a .jsonl file holds one per line) or raise data.val_percent"
    else:
        fix = f"{rule}; add more files/documents or lower data.val_percent"
    return DataError(f"{where} has no documents: {fix}")


def _split_documents(data_cfg: Any, split: str) -> Sequence[sources.Document]:
    """`sources.documents(data_cfg, split)`, which must hold at least one document."""
    docs = sources.documents(data_cfg, split)
    if len(docs) == 0:
        raise _empty_split(data_cfg, split)
    return docs


def _synthetic_records(data_cfg: Any, split: str, tokenizer: Tokenizer) -> grain.MapDataset:
    if data_cfg.synthetic_vocab > tokenizer.vocab_size:
        raise DataError(
            f"data.synthetic_vocab={data_cfg.synthetic_vocab} symbols do not fit a tokenizer"
            f" with vocab_size {tokenizer.vocab_size}: build it with make_tokenizer(data_cfg)"
        )
    return grain.MapDataset.source(sources.synthetic_sequences(data_cfg, split))


def _padded_records(data_cfg: Any, split: str, tokenizer: Tokenizer) -> grain.MapDataset:
    def pad(doc: sources.Document) -> np.ndarray:
        tokens = _checked(tokenizer.encode(doc), tokenizer)
        return packing.pad_document(tokens, data_cfg.seq_len, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)

    return grain.MapDataset.source(_split_documents(data_cfg, split)).map(pad)


def _packed_records(data_cfg: Any, split: str, tokenizer: Tokenizer) -> tuple[grain.MapDataset, int]:
    """Windows of the split's whole token stream, and the stream's length."""
    docs = list(_split_documents(data_cfg, split))
    tokens = [_checked(t, tokenizer) for t in tokenizer.encode_batch(docs)]
    stream = packing.concatenate_documents(tokens, tokenizer.bos_id, tokenizer.eos_id)
    return grain.MapDataset.source(packing.Windows(stream, data_cfg.seq_len)), len(stream)


def _pair_records(data_cfg: Any, split: str, tokenizer: Tokenizer) -> grain.MapDataset:
    """One `pairs.encode_pair` record per prompt/response pair. The embedded corpus's function
    pairs that do not fit seq_len whole are left out; a JSONL response that does not fit is cut."""
    val = sources._val_percent(data_cfg)
    if data_cfg.source == "embedded":
        found, whole = pairs.python_function_pairs(split, val), True
    else:
        found, whole = pairs.jsonl_pairs(data_cfg.path, data_cfg.prompt_key, data_cfg.response_key, split, val), False
    records = []
    for prompt, response in found:
        p_ids, r_ids = (_checked(tokenizer.encode(text), tokenizer) for text in (prompt, response))
        if whole and len(p_ids) + len(r_ids) + 2 > data_cfg.seq_len:
            continue
        records.append(pairs.encode_pair(p_ids, r_ids, data_cfg.seq_len, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id))
    if not records:
        raise _empty_split(data_cfg, split)
    return grain.MapDataset.source(records)


def _stored_records(data_cfg: Any, split: str, tokenizer: Tokenizer) -> tuple[grain.MapDataset, str]:
    """Records of a prepared store (`data.path`), checked against the run's tokenizer."""
    opened = store.TokenStore.open(data_cfg.path, tokenizer, data_cfg.tokenizer)
    if data_cfg.mode == "pad":
        docs = opened.documents(split)
        if not len(docs):
            raise _empty_split(data_cfg, split)
        pad = lambda doc: packing.pad_record(doc, data_cfg.seq_len, tokenizer.pad_id)  # noqa: E731
        return grain.MapDataset.source(docs).map(pad), f"{len(docs)} documents"
    stream = opened.stream(split)
    if not len(stream):
        raise _empty_split(data_cfg, split)
    return grain.MapDataset.source(packing.Windows(stream, data_cfg.seq_len)), f"{len(stream)} tokens (BOS/EOS included)"


def _read_options(data_cfg: Any) -> grain.ReadOptions:
    """`data.read_threads` threads making batches ahead, `data.prefetch` deep (0: none). Auto (-1)
    is 2 threads when an accelerator trains and none on CPUs, where the threads would take cores
    from the step itself (5-8% slower on 2 cores: docs/data.md)."""
    threads = data_cfg.read_threads
    if threads < 0:
        threads = 0 if jax.default_backend() == "cpu" else 2
    if threads == 0:
        return _NO_THREADS
    return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(data_cfg.prefetch, 1))


def _records(data_cfg: Any, split: str, tokenizer: Tokenizer, batch_size: int, process_count: int) -> grain.MapDataset:
    """Random-access records int32 [seq_len] (or pair dicts); at least one batch per process."""
    if data_cfg.format == "pairs":
        records = _pair_records(data_cfg, split, tokenizer)
        have = f"{len(records)} prompt/response pairs"
    elif data_cfg.source == "synthetic":
        records = _synthetic_records(data_cfg, split, tokenizer)
        have = f"{len(records)} sequences"
    elif data_cfg.source == "tokens":
        records, have = _stored_records(data_cfg, split, tokenizer)
    elif data_cfg.mode == "pad":
        records = _padded_records(data_cfg, split, tokenizer)
        have = f"{len(records)} documents"
    else:
        records, num_tokens = _packed_records(data_cfg, split, tokenizer)
        have = f"{num_tokens} tokens (BOS/EOS included)"
    if len(records) // process_count < batch_size:
        raise _too_small(data_cfg, split, have, len(records), batch_size, process_count)
    return records


def _shard(ds: grain.MapDataset, process_index: int, process_count: int) -> grain.MapDataset:
    """Elements process_index, process_index + process_count, ... of an equal-size cut."""
    usable = len(ds) - len(ds) % process_count
    return ds[:usable][process_index::process_count]


def _order(ds: grain.MapDataset, seed: int, shuffle: bool, num_epochs: int | None) -> grain.MapDataset:
    if shuffle:
        ds = ds.shuffle(seed)  # `repeat` reseeds it: a new permutation each epoch
    return ds if num_epochs == 1 else ds.repeat(num_epochs)


def _as_batch(records: list) -> dict[str, np.ndarray]:
    """{'tokens': int32[B, L]} from token records, or each field stacked from pair records."""
    if isinstance(records[0], dict):
        return {k: np.stack([r[k] for r in records]) for k in records[0]}
    return {"tokens": np.stack(records).astype(np.int32)}


def _streamed_batches(
    data_cfg: Any,
    split: str,
    tokenizer: Tokenizer,
    batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    shuffle: bool,
    num_epochs: int | None,
) -> grain.IterDataset:
    """Pack mode without materializing the split: shuffled documents, packed on the fly."""
    docs = grain.MapDataset.source(_split_documents(data_cfg, split))
    docs = _shard(docs, process_index, process_count)
    need, have = batch_size * data_cfg.seq_len, 0
    for i in range(len(docs)):  # tokenize only as much as proves one batch fits
        have += len(tokenizer.encode(docs[i])) + 2
        if have >= need:
            break
    else:
        raise DataError(
            f"{_describe(data_cfg, split)} has {have} tokens (BOS/EOS included) per process,"
            f" fewer than one batch of {batch_size} x seq_len {data_cfg.seq_len} = {need}:"
            " lower batch_size or data.seq_len, or use a larger corpus"
        )

    def encode(doc: sources.Document) -> np.ndarray:
        tokens = _checked(tokenizer.encode(doc), tokenizer)
        return packing.with_specials(tokens, tokenizer.bos_id, tokenizer.eos_id)

    tokens = _order(docs, seed, shuffle, num_epochs).map(encode)
    windows = packing.PackIterDataset(tokens.to_iter_dataset(_read_options(data_cfg)), data_cfg.seq_len)
    return windows.batch(batch_size, drop_remainder=True, batch_fn=_as_batch)


def _check_arguments(
    data_cfg: Any,
    split: str,
    batch_size: int,
    process_index: int,
    process_count: int,
    num_epochs: int | None,
) -> None:
    sources.check_split(split)
    if data_cfg.source not in sources.SOURCES:
        raise ConfigError(f"data.source={data_cfg.source!r} is not one of {sources.SOURCES}")
    if data_cfg.mode not in MODES:
        raise ConfigError(f"data.mode={data_cfg.mode!r} is not one of {MODES}")
    if data_cfg.seq_len < 2:
        raise DataError(f"data.seq_len={data_cfg.seq_len} is too short: use seq_len >= 2")
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size} is not positive: use a per-process batch >= 1")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be None (forever) or >= 1, got {num_epochs}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, {process_count}")


def make_iterator(
    data_cfg: Any,
    split: str,
    tokenizer: Tokenizer,
    batch_size: int,
    *,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool | None = None,
    num_epochs: int | None = None,
) -> grain.DatasetIterator:
    """Batches {'tokens': int32 [batch_size, seq_len]} of `split` for one process.

    Args:
      batch_size: the per-process batch; an incomplete last batch is dropped.
      seed: shuffle seed (the permutation changes every epoch).
      shuffle, num_epochs: None means the split's default: train is shuffled and
        repeats forever; validation is in order, one pass.
    Returns:
      A grain iterator; `get_state()`/`set_state()` save and restore its position.
    """
    _check_arguments(data_cfg, split, batch_size, process_index, process_count, num_epochs)
    is_train = split == "train"
    shuffle = is_train if shuffle is None else shuffle
    num_epochs = (None if is_train else 1) if num_epochs is None else num_epochs
    if data_cfg.source == "tfds" and is_train and data_cfg.mode == "pack":
        return _streamed_batches(
            data_cfg,
            split,
            tokenizer,
            batch_size,
            seed,
            process_index,
            process_count,
            shuffle,
            num_epochs,
        ).__iter__()
    records = _records(data_cfg, split, tokenizer, batch_size, process_count)
    records = _order(_shard(records, process_index, process_count), seed, shuffle, num_epochs)
    batches = records.batch(batch_size, drop_remainder=True, batch_fn=_as_batch)
    return batches.to_iter_dataset(_read_options(data_cfg)).__iter__()


def _entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def corpus_statistics(data_cfg: Any, tokenizer: Tokenizer, split: str) -> dict[str, float | int]:
    """Reference numbers for a split, from one full pass over it.

    Document sources: num_documents, num_bytes, num_tokens (no BOS/EOS),
    unigram_entropy_bits_per_byte (of the raw bytes) and
    token_unigram_bits_per_byte (code length of a token unigram model, per byte).
    Synthetic: entropy_bits_per_token = entropy(seq_len) / seq_len / ln 2 (the
    best possible loss on its records), entropy_rate_bits_per_token and
    num_sequences.
    """
    sources.check_split(split)
    if data_cfg.source == "synthetic":
        records = sources.synthetic_sequences(data_cfg, split)
        seq_len = data_cfg.seq_len
        return {
            "entropy_bits_per_token": records.language.entropy(seq_len) / seq_len / math.log(2),
            "entropy_rate_bits_per_token": records.language.entropy_rate / math.log(2),
            "num_sequences": len(records),
        }
    docs = list(sources.documents(data_cfg, split))
    byte_counts = np.zeros(256, dtype=np.int64)
    for doc in docs:
        data = doc.encode("utf-8") if isinstance(doc, str) else doc
        byte_counts += np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    token_counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    for tokens in tokenizer.encode_batch(docs):
        token_counts += np.bincount(_checked(tokens, tokenizer), minlength=tokenizer.vocab_size)
    num_bytes, num_tokens = int(byte_counts.sum()), int(token_counts.sum())
    if num_bytes == 0:
        raise DataError(f"{_describe(data_cfg, split)} is empty: use a larger corpus or change data.val_percent")
    return {
        "num_documents": len(docs),
        "num_bytes": num_bytes,
        "num_tokens": num_tokens,
        "unigram_entropy_bits_per_byte": _entropy_bits(byte_counts),
        "token_unigram_bits_per_byte": _entropy_bits(token_counts) * num_tokens / num_bytes,
    }
