"""Document sources: random-access sequences of documents for one split.

Sources ('embedded', 'text', 'tfds') yield documents (bytes or str, no special
tokens); 'synthetic' yields token sequences of length `seq_len` directly.

Split rule for 'embedded' and 'text': a document goes to 'validation' when
crc32(key) % 100 < data_cfg.val_percent, else to 'train'. The key is the file
name for 'embedded' and the document's own bytes for 'text', so the split never
depends on file order or location, and duplicate documents share a split.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import sysconfig
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from mdm.data.synthetic import MarkovLanguage
from mdm.errors import ConfigError, DataError

SPLITS = ("train", "validation")
DOCUMENT_SOURCES = ("embedded", "text", "tfds")
SOURCES = DOCUMENT_SOURCES + ("synthetic", "tokens")  # 'tokens': files from mdm.data.prepare (mdm.data.store)

Document = bytes | str


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def in_validation(key: bytes, val_percent: int) -> bool:
    """The deterministic split rule: crc32(key) % 100 < val_percent."""
    return zlib.crc32(key) % 100 < val_percent


def _val_percent(data_cfg: Any) -> int:
    val_percent = data_cfg.val_percent
    if not 0 <= val_percent <= 100:
        raise ConfigError(f"data.val_percent={val_percent} must be in 0..100")
    return val_percent


def _keep(key: bytes, split: str, val_percent: int) -> bool:
    return in_validation(key, val_percent) == (split == "validation")


def embedded_documents(split: str, val_percent: int) -> list[bytes]:
    """The running interpreter's top-level stdlib `*.py` files, as bytes, sorted by name."""
    check_split(split)
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))
    return [f.read_bytes() for f in files if _keep(f.name.encode(), split, val_percent)]


def jsonl_records(path: str):
    """(line number, stripped line bytes, parsed value) of each non-empty line of a JSONL file;
    a line that is not JSON is a one-line DataError naming the file and line."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield number, line.strip(), json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number} is not valid JSON ({e.msg}): fix or remove that line") from e


def _read_jsonl(path: str, text_key: str) -> list[Document]:
    docs: list[Document] = []
    for number, _, record in jsonl_records(path):
        if not isinstance(record, dict) or not isinstance(record.get(text_key), str):
            raise DataError(f"{path}:{number} has no text field {text_key!r}: set data.text_key to the field holding the text")
        docs.append(record[text_key])
    return docs


def text_files(pattern: str) -> list[str]:
    """The files matching the glob `pattern`, sorted by path (the document order of 'text')."""
    paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not paths:
        raise DataError(
            f"no files match data.path={pattern!r}: set data.path to a glob of .txt/.jsonl/.parquet files, e.g. 'corpus/*.txt'"
        )
    return paths


def _read_parquet(path: str, text_key: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq  # optional: pip install 'mdm[parquet]'
    except ImportError as e:
        raise DataError(f"{path} is a Parquet file and pyarrow is not installed: pip install pyarrow") from e
    try:
        table = pq.ParquetFile(path)
        names = table.schema_arrow.names
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
        raise DataError(f"{path} is not a readable Parquet file ({type(e).__name__}: {e}): fix or remove it") from e
    if text_key not in names:
        raise DataError(f"{path} has no column {text_key!r} (columns: {names}): set data.text_key to the text column")
    for batch in table.iter_batches(columns=[text_key]):
        yield from (text for text in batch.column(0).to_pylist() if isinstance(text, str))


def read_files(paths: Sequence[str], text_key: str) -> Iterator[Document]:
    """The non-empty documents of `paths` in order: a `.jsonl` file holds one per line (field
    `text_key`), a `.parquet` file one per row (column `text_key`), any other file is one."""
    for path in paths:
        if path.endswith(".jsonl"):
            docs: Iterable[Document] = _read_jsonl(path, text_key)
        elif path.endswith(".parquet"):
            docs = _read_parquet(path, text_key)
        else:
            docs = [pathlib.Path(path).read_bytes()]
        yield from (d for d in docs if d)


def in_split(doc: Document, split: str, val_percent: int) -> bool:
    """The 'text' split rule on a document's own UTF-8 bytes."""
    return _keep(doc.encode("utf-8") if isinstance(doc, str) else doc, split, val_percent)


def text_documents(pattern: str, text_key: str, split: str, val_percent: int) -> list[Document]:
    """Documents of `split` from local files matching the glob `pattern` (`read_files`, sorted
    by path). Empty documents are dropped."""
    check_split(split)
    paths = text_files(pattern)
    docs = list(read_files(paths, text_key))
    if not docs:
        raise DataError(
            f"the {len(paths)} files matching data.path={pattern!r} hold no text: point data.path at a non-empty corpus"
        )
    return [d for d in docs if in_split(d, split, val_percent)]


class _FieldView(Sequence):
    """Random-access view of one field of a tfds data source's records."""

    def __init__(self, source: Sequence, key: str) -> None:
        self._source = source
        self._key = key

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Document:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._source[index][self._key]


def tfds_documents(name: str, split_name: str, text_key: str, data_dir: str | None) -> Sequence[Document]:
    """`tfds.data_source(name, split=split_name)` (array_record), field `text_key`.

    Nothing is downloaded or prepared: the dataset must already be built.
    """
    import tensorflow_datasets as tfds  # slow import, only for this source

    if not name:
        raise ConfigError("data.source='tfds' needs data.tfds_name, e.g. 'lm1b'")
    where = f"data_dir={data_dir!r}" if data_dir else "the default data_dir"
    try:
        source = tfds.data_source(name, split=split_name, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises many unrelated types here
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(
            f"tfds dataset {name!r} split {split_name!r} is not available in {where}"
            f" ({reason}): prepare it with `tfds build {name} --file_format=array_record`"
            " or set data.tfds_data_dir / data.tfds_train_split / data.tfds_eval_split"
        ) from e
    if len(source) and text_key not in source[0]:
        raise DataError(f"tfds dataset {name!r} has no field {text_key!r} (fields: {sorted(source[0])}): set data.text_key")
    return _FieldView(source, text_key)


def documents(data_cfg: Any, split: str) -> Sequence[Document]:
    """The documents of `split` for a document source ('embedded', 'text', 'tfds')."""
    check_split(split)
    source = data_cfg.source
    if source == "embedded":
        return embedded_documents(split, _val_percent(data_cfg))
    if source == "text":
        return text_documents(data_cfg.path, data_cfg.text_key, split, _val_percent(data_cfg))
    if source == "tfds":
        split_name = data_cfg.tfds_train_split if split == "train" else data_cfg.tfds_eval_split
        return tfds_documents(data_cfg.tfds_name, split_name, data_cfg.text_key, data_cfg.tfds_data_dir or None)
    if source in ("synthetic", "tokens"):
        raise ConfigError(f"data.source={source!r} yields token sequences, not documents")
    raise ConfigError(f"data.source={source!r} is not one of {SOURCES}")


class SyntheticSequences(Sequence):
    """Records `language.sequence(start + i, seq_len)` for i in range(count): int32 [seq_len]."""

    def __init__(self, language: MarkovLanguage, start: int, count: int, seq_len: int) -> None:
        self.language = language
        self.start = start
        self.count = count
        self.seq_len = seq_len

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.language.sequence(self.start + index, self.seq_len)


def synthetic_sequences(data_cfg: Any, split: str) -> SyntheticSequences:
    """The synthetic split: N = data_cfg.synthetic_num_sequences train records at
    indices [0, N); validation holds max(1, N // 10) records at [N, N + N // 10).
    """
    check_split(split)
    count = data_cfg.synthetic_num_sequences
    if count < 1:
        raise ConfigError(f"data.synthetic_num_sequences={count} must be >= 1")
    language = MarkovLanguage(data_cfg.synthetic_vocab, data_cfg.synthetic_seed)
    if split == "train":
        return SyntheticSequences(language, 0, count, data_cfg.seq_len)
    return SyntheticSequences(language, count, max(1, count // 10), data_cfg.seq_len)
