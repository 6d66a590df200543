"""Tokenize a corpus once into sharded token files (`mdm.data.store`), in worker processes.

    python -m mdm.data.prepare --source text --path 'corpus/*.jsonl' --tokenizer tok.json --out DIR [--workers 4]
    python -m mdm.data.prepare --source tfds --tfds_name lm1b --tokenizer tok.json --out DIR
    python -m mdm.data.prepare ... --out DIR --num_shards 64 --shard 7    # one slice (a SLURM array task)
    python -m mdm.data.prepare merge DIR                                  # once every slice is done
    python -m mdm.data.prepare tokenizer --source text --path ... --vocab_size 8192 --out tok.json

Sources are the library's document sources: 'text' (a glob of .txt files, one document each,
.jsonl files, one per line, and .parquet files, one per row; --text_key names the field or
column), 'tfds' (a built dataset by name) and 'embedded'; the split rule is the one training
uses (--val_percent). Slice i of n holds a contiguous run of the documents: for 'text' the files
i n_files / n .. (i + 1) n_files / n, otherwise documents i N / n .. (i + 1) N / n of each split.
Without --shard, one process prepares every slice in turn and merges them. Train on the result
with `--config.data.source=tokens --config.data.path=DIR` (and the same data.tokenizer).
`tokenizer` learns a byte-level BPE from the train split's documents instead (`mdm.data.bpe`).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import multiprocessing
import os
import pathlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np
import tqdm

from mdm.data import bpe, packing, sources, store
from mdm.data.tokenizers import Tokenizer, make_tokenizer
from mdm.errors import ConfigError, DataError, MdmError

CHUNK_DOCUMENTS = 256  # documents per task handed to a worker


DATA_KEYS = {  # the run config's data keys that choose and split documents and the tokenizer (their defaults)
    "source": "text",
    "path": "",
    "text_key": "text",
    "tfds_name": "",
    "tfds_data_dir": "",
    "tfds_train_split": "train",
    "tfds_eval_split": "test",
    "tokenizer": "bytes",
    "val_percent": 5,
}


def data_config(**overrides: Any) -> ml_collections.ConfigDict:
    """A data config (the keys of `DATA_KEYS`, as in a run config's `data` section)."""
    unknown = set(overrides) - set(DATA_KEYS)
    if unknown:
        raise ConfigError(f"unknown data keys {sorted(unknown)}; known: {', '.join(DATA_KEYS)}")
    return ml_collections.ConfigDict({**DATA_KEYS, **overrides})


def _split_rule(data_cfg) -> str:
    if data_cfg.source == "tfds":
        return f"tfds splits: train={data_cfg.tfds_train_split!r}, validation={data_cfg.tfds_eval_split!r}"
    key = "the document's UTF-8 bytes" if data_cfg.source == "text" else "the file name"
    return f"validation iff crc32({key}) % 100 < {data_cfg.val_percent}"


def _source_record(data_cfg) -> dict[str, Any]:
    """What the manifests of all slices must agree on; for 'text' the file list too (its count and
    a hash of the sorted paths and sizes), so slices cut from different listings never merge."""
    keys = {"text": ("path", "text_key"), "tfds": ("tfds_name", "tfds_data_dir", "text_key"), "embedded": ()}
    record = {"source": data_cfg.source, "val_percent": data_cfg.val_percent, **{k: data_cfg[k] for k in keys[data_cfg.source]}}
    if data_cfg.source == "text":
        paths = sources.text_files(data_cfg.path)
        listing = "\n".join(f"{p}\t{os.path.getsize(p)}" for p in paths)
        record.update(files=len(paths), files_sha256=hashlib.sha256(listing.encode()).hexdigest())
    return record


def _slice(count: int, index: int, num_shards: int) -> slice:
    return slice(index * count // num_shards, (index + 1) * count // num_shards)


def slice_documents(data_cfg, index: int, num_shards: int) -> tuple[Iterator[tuple[str, sources.Document]], int | None]:
    """((split, document) pairs of slice `index`, in the source's order; the slice's file bytes
    when known (for the progress bar) else None)."""
    val = data_cfg.val_percent
    if data_cfg.source == "text":
        every = sources.text_files(data_cfg.path)
        paths = every[_slice(len(every), index, num_shards)]
        pairs = (
            ("validation" if not sources.in_split(d, "train", val) else "train", d)
            for d in sources.read_files(paths, data_cfg.text_key)
        )
        return pairs, sum(pathlib.Path(p).stat().st_size for p in paths)
    per_split = {split: sources.documents(data_cfg, split) for split in sources.SPLITS}
    mine = {split: range(len(docs))[_slice(len(docs), index, num_shards)] for split, docs in per_split.items()}
    pairs = ((split, per_split[split][i]) for split, indices in mine.items() for i in indices)
    return pairs, None


_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(data_cfg_dict: dict[str, Any]) -> None:
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism: no thread pool per worker
    _WORKER_TOKENIZER = make_tokenizer(data_config(**data_cfg_dict))


def _tokenize(chunk: list[tuple[str, sources.Document]], tokenizer: Tokenizer | None = None) -> list[tuple[str, np.ndarray, int]]:
    """(split, `[BOS] doc [EOS]` int32, the document's UTF-8 bytes) per document of `chunk`."""
    tok = tokenizer or _WORKER_TOKENIZER
    texts = [doc for _, doc in chunk]
    encoded = tok.encode_batch(texts)
    out = []
    for (split, doc), ids in zip(chunk, encoded):
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= tok.vocab_size):
            raise DataError(f"the tokenizer produced id {int(ids.max())} outside its vocabulary [0, {tok.vocab_size})")
        size = len(doc.encode("utf-8")) if isinstance(doc, str) else len(doc)
        out.append((split, packing.with_specials(ids, tok.bos_id, tok.eos_id), size))
    return out


def _chunks(pairs: Iterator, size: int) -> Iterator[list]:
    while chunk := list(itertools.islice(pairs, size)):
        yield chunk


def _pool(data_cfg, workers: int):
    """`workers` tokenizer processes (None for 1: tokenize in this process)."""
    return multiprocessing.get_context("spawn").Pool(workers, _init_worker, (dict(data_cfg),)) if workers > 1 else None


def prepare_slice(
    data_cfg, out: pathlib.Path, index: int, num_shards: int, workers: int = 1, progress: bool = True, pool=None
) -> dict:
    """Tokenizes slice `index` of `num_shards` into its shard files and part manifest, in `pool`
    (or `workers` new processes); returns {documents, tokens, text_bytes, seconds}."""
    tokenizer = make_tokenizer(data_cfg)
    dtype = store.token_dtype(tokenizer.vocab_size)
    out.mkdir(parents=True, exist_ok=True)
    writers = {split: store.ShardWriter(out, split, index, num_shards, dtype) for split in sources.SPLITS}
    pairs, total_bytes = slice_documents(data_cfg, index, num_shards)
    start, tokens = time.perf_counter(), 0
    bar = tqdm.tqdm(
        total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=f"slice {index}/{num_shards}", disable=not progress
    )
    own = pool is None
    pool = _pool(data_cfg, workers) if own else pool
    try:
        chunks = _chunks(pairs, CHUNK_DOCUMENTS)
        results = pool.imap(_tokenize, chunks) if pool else (_tokenize(c, tokenizer) for c in chunks)
        for result in results:
            for split in sources.SPLITS:
                mine = [(ids, size) for s, ids, size in result if s == split]
                writers[split].add([ids for ids, _ in mine], sum(size for _, size in mine))
            done = sum(size for _, _, size in result)
            tokens += sum(len(ids) for _, ids, _ in result)
            bar.update(done)
            bar.set_postfix_str(f"{tokens / max(time.perf_counter() - start, 1e-9) / 1e3:,.0f}k tokens/s")
    finally:
        bar.close()
        if own and pool:
            pool.terminate()
    shards = {split: [writer.close()] for split, writer in writers.items()}
    manifest = {
        "format": store.FORMAT,
        "tokenizer": store.tokenizer_record(tokenizer, data_cfg.tokenizer),
        "source": _source_record(data_cfg),
        "split_rule": _split_rule(data_cfg),
        "dtype": dtype.str,
        "num_shards": num_shards,
        "shard_index": index,
        "shards": shards,
    }
    store.write_manifest(out, manifest, store.part_manifest_name(index, num_shards))
    seconds = time.perf_counter() - start
    totals = {k: sum(s[0][k] for s in shards.values()) for k in ("documents", "tokens", "text_bytes")}
    return {**totals, "seconds": seconds}


def merge(out: str | pathlib.Path) -> dict[str, Any]:
    """`store.merge_manifests`, refusing a corpus with no documents at all."""
    manifest = store.merge_manifests(out)
    if not sum(s["documents"] for s in manifest["splits"].values()):
        raise DataError(f"the source of {out} holds no documents: point --path (or --tfds_name) at a non-empty corpus")
    return manifest


def prepare(data_cfg, out: str | pathlib.Path, workers: int = 1, num_shards: int = 1, progress: bool = True) -> dict:
    """Every slice in turn, then the merged manifest; returns the totals and seconds."""
    out = pathlib.Path(out)
    start = time.perf_counter()
    pool = _pool(data_cfg, workers)
    try:
        stats = [prepare_slice(data_cfg, out, i, num_shards, workers, progress, pool) for i in range(num_shards)]
    finally:
        if pool:
            pool.terminate()
    merge(out)
    totals = {k: sum(s[k] for s in stats) for k in ("documents", "tokens", "text_bytes")}
    return {**totals, "seconds": time.perf_counter() - start}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mdm.data.prepare", description=__doc__.split("\n\n")[0])
    for key, default in DATA_KEYS.items():
        parser.add_argument(f"--{key}", type=type(default), default=default)
    parser.add_argument("--out", default="", help="the store directory (tokenizer: the tokenizer.json to write)")
    parser.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    parser.add_argument("--shard", type=int, default=-1, help="prepare only this slice (-1: every slice, then merge)")
    parser.add_argument("--num_shards", type=int, default=1, help="slices (files per split)")
    parser.add_argument("--no_progress", action="store_true")
    parser.add_argument("--vocab_size", type=int, default=2048, help="tokenizer: ids of the BPE, specials included")
    return parser


def _body(argv: list[str]) -> None:
    if argv[:1] == ["merge"]:
        if len(argv) != 2:
            raise ConfigError("usage: python -m mdm.data.prepare merge DIR")
        manifest = merge(argv[1])
        print(f"merged {manifest['num_shards']} slices into {argv[1]}/{store.MANIFEST}")
        return
    learn = argv[:1] == ["tokenizer"]
    args = _parser().parse_args(argv[1:] if learn else argv)
    if args.source not in sources.DOCUMENT_SOURCES:
        raise ConfigError(f"--source={args.source!r}: choose one of {', '.join(sources.DOCUMENT_SOURCES)}")
    if not args.out:
        wanted = "FILE is required: the tokenizer.json to write" if learn else "DIR is required: where the token files go"
        raise ConfigError(f"--out {wanted}")
    if args.source == "text" and not args.path:
        raise ConfigError("--source text needs --path 'corpus/*.jsonl' (a glob of .txt/.jsonl/.parquet files)")
    if args.workers < 1 or args.num_shards < 1 or not -1 <= args.shard < args.num_shards:
        raise ConfigError("need --workers >= 1, --num_shards >= 1 and 0 <= --shard < --num_shards (or -1: every slice)")
    if not 0 <= args.val_percent < 100:
        raise ConfigError(f"--val_percent={args.val_percent} must lie in [0, 100)")
    data_cfg = data_config(**{k: getattr(args, k) for k in DATA_KEYS})
    out, progress = pathlib.Path(args.out), not args.no_progress
    if learn:
        _learn_tokenizer(data_cfg, out, args.vocab_size)
        return
    if args.shard >= 0:
        stats = prepare_slice(data_cfg, out, args.shard, args.num_shards, args.workers, progress)
        done = f"slice {args.shard} of {args.num_shards}: {_summary(stats)}"
        print(f"{done}; when all are done: python -m mdm.data.prepare merge {out}")
        return
    stats = prepare(data_cfg, out, args.workers, args.num_shards, progress)
    print(f"wrote {out}: {_summary(stats)}; train with --config.data.source=tokens --config.data.path={out}")


def _learn_tokenizer(data_cfg, out: pathlib.Path, vocab_size: int) -> None:
    """Writes the byte-level BPE of the train split's documents to `out` (atomically)."""
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory: give the file to write, e.g. {out / 'tokenizer.json'}")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the directory {out.parent} does not exist; create it first")
    docs = sources.documents(data_cfg, "train")
    if len(docs) == 0:
        raise DataError("the train split has no documents: check --source/--path and --val_percent")
    tok = bpe.train_bpe(docs, vocab_size)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(tok.to_str(pretty=True), encoding="utf-8")
    os.replace(tmp, out)
    print(
        f"wrote {out}: a byte-level BPE of {tok.get_vocab_size():,} ids from {len(docs):,} documents; "
        f"train with --config.data.tokenizer={out}"
    )


def _summary(stats: dict) -> str:
    rate = stats["tokens"] / max(stats["seconds"], 1e-9)
    mb = stats["text_bytes"] / max(stats["seconds"], 1e-9) / 2**20
    counts = f"{stats['documents']:,} documents, {stats['tokens']:,} tokens"
    return f"{counts} in {stats['seconds']:.1f} s ({rate:,.0f} tokens/s, {mb:.2f} MB/s)"


def main(argv: list[str]) -> int:
    """Runs the command; a library error is one line on stderr and exit status 1."""
    try:
        _body(argv)
    except MdmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
