"""Prepared token files: a corpus tokenized once (`mdm.data.prepare`), read by memory map.

A store is a directory:
- `{split}-{i:05d}-of-{n:05d}.tokens`: slice i of the split's documents, each as `[BOS] doc [EOS]`,
  concatenated; little-endian uint16, or uint32 when the vocabulary needs it.
- `{split}-{i:05d}-of-{n:05d}.index`: int64 [documents + 1] start offsets into that file (.npy).
- `manifest.json`: the format, the tokenizer (fingerprint, vocabulary size, BOS/EOS/PAD ids), the
  source and its split rule, and per shard and split its documents, tokens and text bytes.
  Preparing one slice (`--shard i --num_shards n`) writes `manifest-{i:05d}-of-{n:05d}.json`;
  `merge_manifests` joins the n parts into `manifest.json`.
Slices are contiguous runs of the split's documents in the source's order, so shards 0..n-1 read in
turn give exactly the token stream the in-memory pipeline builds from the same documents.
Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from mdm.data.sources import SPLITS
from mdm.data.tokenizers import Tokenizer
from mdm.errors import DataError

FORMAT = "mdm-tokens/1"
MANIFEST = "manifest.json"


def shard_stem(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}"


def part_manifest_name(index: int, count: int) -> str:
    return f"manifest-{index:05d}-of-{count:05d}.json"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocabularies up to 65,536), else uint32."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def tokenizer_record(tokenizer: Tokenizer, spec: str) -> dict[str, Any]:
    """What a manifest says about the tokenizer that wrote it (`spec`: data.tokenizer)."""
    return {
        "spec": spec,
        "fingerprint": tokenizer.fingerprint(),
        "vocab_size": int(tokenizer.vocab_size),
        "bos_id": int(tokenizer.bos_id),
        "eos_id": int(tokenizer.eos_id),
        "pad_id": int(tokenizer.pad_id),
    }


def _atomic_write(path: pathlib.Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Appends tokenized documents (each already `[BOS] doc [EOS]`) to one shard of one split;
    `close()` renames the finished files into place and returns the shard's manifest entry."""

    def __init__(self, directory: pathlib.Path, split: str, index: int, count: int, dtype: np.dtype) -> None:
        self.stem = shard_stem(split, index, count)
        self.directory = directory
        self.dtype = dtype
        self._tmp = directory / f"{self.stem}.tokens.tmp"
        self._file = open(self._tmp, "wb")
        self._offsets = [0]
        self.text_bytes = 0

    def add(self, documents: Sequence[np.ndarray], text_bytes: int) -> None:
        for doc in documents:
            self._file.write(np.asarray(doc).astype(self.dtype).tobytes())
            self._offsets.append(self._offsets[-1] + len(doc))
        self.text_bytes += text_bytes

    def close(self) -> dict[str, Any]:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        _atomic_write(self.directory / f"{self.stem}.index", lambda f: np.save(f, np.asarray(self._offsets, np.int64)))
        os.replace(self._tmp, self.directory / f"{self.stem}.tokens")
        documents, tokens = len(self._offsets) - 1, self._offsets[-1]
        return {"stem": self.stem, "documents": documents, "tokens": tokens, "text_bytes": self.text_bytes}


def write_manifest(directory: pathlib.Path, manifest: dict[str, Any], name: str = MANIFEST) -> None:
    _atomic_write(directory / name, lambda f: f.write(json.dumps(manifest, indent=1, sort_keys=True).encode()))


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path} cannot be read ({type(e).__name__}): prepare the store again") from e


def merge_manifests(directory: str | os.PathLike) -> dict[str, Any]:
    """Joins the part manifests of a sliced preparation into `manifest.json` (and returns it);
    a missing part or parts of different preparations are one-line DataErrors."""
    directory = pathlib.Path(directory)
    parts = sorted(directory.glob("manifest-*-of-*.json"))
    if not parts:
        raise DataError(f"{directory} holds no part manifests (manifest-*-of-*.json): run python -m mdm.data.prepare first")
    manifests = [_read_json(p) for p in parts]
    count = manifests[0]["num_shards"]
    keys = ("format", "tokenizer", "source", "split_rule", "dtype", "num_shards")
    for path, m in zip(parts, manifests):
        if any(m.get(k) != manifests[0].get(k) for k in keys):
            raise DataError(
                f"{path.name} comes from another preparation than {parts[0].name} (another tokenizer, split rule or file "
                "listing): remove the stale parts and prepare those slices again"
            )
    have = {m["shard_index"] for m in manifests}
    missing = sorted(set(range(count)) - have)
    if missing:
        shown = ", ".join(str(i) for i in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise DataError(f"{directory} lacks {len(missing)} of {count} slices (--shard {shown}): prepare them, then merge again")
    by_index = {m["shard_index"]: m for m in manifests}
    merged = {k: manifests[0][k] for k in keys}
    merged["shards"] = {split: [by_index[i]["shards"][split][0] for i in range(count)] for split in SPLITS}
    merged["splits"] = {
        split: {k: sum(s[k] for s in merged["shards"][split]) for k in ("documents", "tokens", "text_bytes")} for split in SPLITS
    }
    write_manifest(directory, merged)
    return merged


class TokenStream:
    """The concatenation of shard token arrays (memory maps) as one int32 stream: `len()` and
    contiguous slices `stream[a:b]`, which may cross shards (what `packing.Windows` reads)."""

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        self._arrays = list(arrays)
        self._starts = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("TokenStream supports contiguous slices only")
        pieces, pos = [], start
        while pos < stop:
            shard = bisect.bisect_right(self._starts, pos) - 1
            local = pos - int(self._starts[shard])
            take = min(stop, int(self._starts[shard + 1])) - pos
            pieces.append(self._arrays[shard][local : local + take])
            pos += take
        return np.concatenate(pieces).astype(np.int32) if pieces else np.empty(0, np.int32)


class DocumentTokens(Sequence):
    """Document i of a split as int32 `[BOS] doc [EOS]`, across its shards."""

    def __init__(self, arrays: Sequence[np.ndarray], offsets: Sequence[np.ndarray]) -> None:
        self._arrays, self._offsets = list(arrays), list(offsets)
        self._first = np.concatenate([[0], np.cumsum([len(o) - 1 for o in offsets])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._first[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = bisect.bisect_right(self._first, index) - 1
        j = index - int(self._first[shard])
        offsets = self._offsets[shard]
        return np.asarray(self._arrays[shard][offsets[j] : offsets[j + 1]], np.int32)


@dataclasses.dataclass(frozen=True)
class TokenStore:
    """An opened store: its directory and manifest (checked against the run's tokenizer)."""

    directory: pathlib.Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | os.PathLike, tokenizer: Tokenizer | None = None, spec: str = "") -> TokenStore:
        """The store at `path`; with `tokenizer`, a mismatch with the one that wrote it is a
        one-line DataError naming the fix, as is a missing, truncated or foreign file."""
        directory = pathlib.Path(path)
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            parts = list(directory.glob("manifest-*-of-*.json"))
            fix = (
                f"merge its slices: python -m mdm.data.prepare merge {directory}"
                if parts
                else f"prepare one: python -m mdm.data.prepare --source ... --out {directory}"
            )
            raise DataError(f"data.path={str(directory)!r} holds no {MANIFEST}: {fix}")
        manifest = _read_json(manifest_path)
        if manifest.get("format") != FORMAT:
            raise DataError(f"{manifest_path} is format {manifest.get('format')!r}, not {FORMAT!r}: prepare the store again")
        store = cls(directory, manifest)
        if tokenizer is not None:
            store.check_tokenizer(tokenizer, spec)
        for split in SPLITS:
            for shard in manifest["shards"][split]:
                store._check_files(shard)
        return store

    def check_tokenizer(self, tokenizer: Tokenizer, spec: str) -> None:
        theirs = self.manifest["tokenizer"]
        if theirs["fingerprint"] != tokenizer.fingerprint():
            if theirs["spec"] == spec:
                raise DataError(
                    f"{self.directory} was tokenized with another version of {spec!r} (its fingerprint differs): "
                    "prepare the corpus again with this tokenizer, or restore the file it was prepared with"
                )
            raise DataError(
                f"{self.directory} was tokenized with data.tokenizer={theirs['spec']!r} (vocabulary {theirs['vocab_size']}), "
                f"not this run's {spec!r} (vocabulary {tokenizer.vocab_size}): set --config.data.tokenizer={theirs['spec']} "
                "or prepare the corpus again with this tokenizer"
            )

    def _check_files(self, shard: dict[str, Any]) -> None:
        itemsize = np.dtype(self.manifest["dtype"]).itemsize
        tokens, index = self.directory / f"{shard['stem']}.tokens", self.directory / f"{shard['stem']}.index"
        for path in (tokens, index):
            if not path.is_file():
                raise DataError(f"shard file {path} is missing: copy the whole store, or prepare that slice again")
        if tokens.stat().st_size != shard["tokens"] * itemsize:
            raise DataError(
                f"shard file {tokens} has {tokens.stat().st_size} bytes, not the {shard['tokens'] * itemsize} its manifest "
                "records (truncated or replaced): prepare that slice again"
            )

    def _tokens(self, shard: dict[str, Any]) -> np.ndarray:
        if shard["tokens"] == 0:  # a zero-length file cannot be memory-mapped
            return np.empty(0, self.manifest["dtype"])
        return np.memmap(self.directory / f"{shard['stem']}.tokens", dtype=self.manifest["dtype"], mode="r")

    def _offsets(self, shard: dict[str, Any]) -> np.ndarray:
        offsets = np.load(self.directory / f"{shard['stem']}.index")
        if offsets.shape != (shard["documents"] + 1,) or int(offsets[-1]) != shard["tokens"]:
            raise DataError(f"{self.directory / shard['stem']}.index does not match its manifest: prepare that slice again")
        return offsets

    def stream(self, split: str) -> TokenStream:
        """The split's token stream `[BOS] d_0 [EOS] [BOS] d_1 [EOS] ...` over all its shards."""
        return TokenStream([self._tokens(s) for s in self.manifest["shards"][split]])

    def documents(self, split: str) -> DocumentTokens:
        shards = self.manifest["shards"][split]
        return DocumentTokens([self._tokens(s) for s in shards], [self._offsets(s) for s in shards])

    def num_tokens(self, split: str) -> int:
        return int(self.manifest["splits"][split]["tokens"])
