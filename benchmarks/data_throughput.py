"""Data at pretraining scale: tokenizing once (`mdm.data.prepare`) and reading prepared token files.

    python benchmarks/data_throughput.py [--corpus '../shared/data/*.txt'] [--repeat 4] [--vocab 32000]
        [--batch 64] [--seq_len 1024] [--batches 200] [--step_ms 50] [--train_steps 60]

The corpus files are cut into paragraphs (blank-line separated), written `--repeat` times to one
JSONL file (documents), and a byte-level BPE of `--vocab` ids is trained on them. Rows, in one sitting:
- prepare, 1 and 2 worker processes: documents -> sharded token files, tokens/s and MB/s of text;
- the format alone: random batches of windows from the memory-mapped token file and from
  ArrayRecord (the same windows, one record each, read through grain's ArrayRecordDataSource);
- the reader delivering global batches of batch x seq_len from the prepared files, with no prefetch
  threads and with 2 threads 4 batches deep: alone (tokens/s), and feeding a consumer that spends
  `step_ms` per batch (a stand-in for the device step; 'stall ms' is the wait per batch beyond it);
- train.py's loop on the default config (embedded corpus, stdlib-bpe), windows held in memory against
  the same windows read from prepared files: median tokens/s of `--train_steps` steps each.
The reference is one H200 training gpt2_small at 413k-660k tokens/s (docs/accelerators.md); the
target is a reader at least 10x that per host.
"""

from __future__ import annotations

import argparse
import glob
import json
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.table import print_table  # noqa: E402
from mdm.config import base_config  # noqa: E402
from mdm.data import make_iterator, make_tokenizer, packing  # noqa: E402
from mdm.data.bpe import train_bpe  # noqa: E402
from mdm.data.store import TokenStore  # noqa: E402
from mdm.data.prepare import data_config, prepare  # noqa: E402

H200_GPT2_SMALL = (413_000, 660_000)  # tokens/s, the accelerator issue's table


def _documents(pattern: str, repeat: int, out: pathlib.Path) -> tuple[pathlib.Path, list[str]]:
    paragraphs = []
    for path in sorted(glob.glob(pattern)):
        text = pathlib.Path(path).read_text(errors="replace")
        paragraphs += [p.strip() for p in text.split("\n\n") if p.strip()]
    if not paragraphs:
        raise SystemExit(f"no text matches --corpus {pattern!r}")
    jsonl = out / "corpus" / "docs.jsonl"
    jsonl.parent.mkdir(parents=True)
    with open(jsonl, "w") as f:
        for _ in range(repeat):
            for p in paragraphs:
                f.write(json.dumps({"text": p}) + "\n")
    return jsonl, paragraphs


def _bpe(paragraphs: list[str], vocab: int, path: pathlib.Path) -> str:
    train_bpe(paragraphs, vocab).save(str(path))
    return str(path)


def _reader_rows(store: pathlib.Path, tokenizer: str, args) -> list[dict]:
    rows = []
    for threads in (0, 2):
        cfg = base_config().data
        cfg.update(source="tokens", path=str(store), tokenizer=tokenizer, seq_len=args.seq_len, read_threads=threads, prefetch=4)
        tok = make_tokenizer(cfg)
        for step_ms in (0, args.step_ms):
            it = make_iterator(cfg, "train", tok, args.batch, seed=0)
            next(it)  # opens the files, starts the threads
            waits, start = [], time.perf_counter()
            for _ in range(args.batches):
                t0 = time.perf_counter()
                next(it)
                waits.append(time.perf_counter() - t0)
                if step_ms:
                    time.sleep(step_ms / 1e3)
            seconds = time.perf_counter() - start
            tokens = args.batches * args.batch * args.seq_len
            rows.append(
                {
                    "stage": f"read {args.batch}x{args.seq_len}",
                    "variant": f"{threads} threads" + (f", {step_ms} ms step" if step_ms else ", alone"),
                    "tokens/s": tokens / seconds if not step_ms else "",
                    "x H200 gpt2_small (max)": tokens / seconds / H200_GPT2_SMALL[1] if not step_ms else "",
                    "stall ms": statistics.mean(waits) * 1e3 if step_ms else "",
                }
            )
    return rows


def _format_rows(store: pathlib.Path, args) -> list[dict]:
    """Random batches of windows straight from the format, no pipeline: the memory-mapped token
    file against ArrayRecord (one record per window, group_size 1, read through grain's source)."""
    import grain
    from array_record.python.array_record_module import ArrayRecordWriter

    windows = packing.Windows(TokenStore.open(store).stream("train"), args.seq_len)
    path = store / "windows.array_record"
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for i in range(len(windows)):
        writer.write(windows[i].astype(np.uint16).tobytes())
    writer.close()
    source = grain.sources.ArrayRecordDataSource([str(path)])
    readers = {
        "memory map": lambda idx: np.stack([windows[i] for i in idx]),
        "ArrayRecord": lambda idx: np.stack([np.frombuffer(r, np.uint16) for r in source.__getitems__(idx)]).astype(np.int32),
    }
    rows = []
    for name, read in readers.items():
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for _ in range(args.batches):
            read(rng.integers(0, len(windows), args.batch).tolist())
        rate = args.batches * args.batch * args.seq_len / (time.perf_counter() - start)
        rows.append(
            {"stage": "random windows", "variant": name, "tokens/s": rate, "x H200 gpt2_small (max)": rate / H200_GPT2_SMALL[1]}
        )
    return rows


def _train_rows(store: pathlib.Path, steps: int) -> list[dict]:
    from mdm.config import validate
    from mdm.loop import run
    from mdm.metrics import read_metrics
    from mdm.presets import tiny_cpu_config

    rows = []
    for label, overrides in (("windows in memory", {}), ("prepared files", {"source": "tokens", "path": str(store)})):
        c = tiny_cpu_config()
        c.train.num_steps, c.train.log_every, c.train.eval_every = steps, 10, 10 * steps
        c.train.checkpoint_every, c.sample.num_samples, c.train.progress_bar = steps, 0, False
        c.optim.warmup_steps = 10
        for k, v in overrides.items():
            c.data[k] = v
        validate(c)
        workdir = pathlib.Path(tempfile.mkdtemp()) / "run"
        run(c, workdir)
        rates = [r["train/tokens_per_s"] for r in read_metrics(workdir / "metrics.jsonl") if "train/tokens_per_s" in r]
        rows.append({"stage": "train.py default", "variant": label, "tokens/s": statistics.median(rates[1:])})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "*.txt"))
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq_len", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--step_ms", type=float, default=50.0)
    parser.add_argument("--train_steps", type=int, default=60)
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="data_throughput_"))
    jsonl, paragraphs = _documents(args.corpus, args.repeat, work)
    tokenizer = _bpe(paragraphs, args.vocab, work / "bpe.json")
    rows = []
    for workers in (1, 2):
        cfg = data_config(source="text", path=str(jsonl), tokenizer=tokenizer)
        stats = prepare(cfg, work / f"store{workers}", workers=workers, num_shards=4, progress=False)
        rows.append(
            {
                "stage": "prepare",
                "variant": f"{workers} worker{'s' if workers > 1 else ''}",
                "tokens/s": stats["tokens"] / stats["seconds"],
                "MB/s": stats["text_bytes"] / stats["seconds"] / 2**20,
                "x H200 gpt2_small (max)": stats["tokens"] / stats["seconds"] / H200_GPT2_SMALL[1],
            }
        )
    print(f"corpus: {stats['documents']:,} documents, {stats['tokens']:,} tokens, {stats['text_bytes'] / 2**20:.1f} MB of text")
    rows += _format_rows(work / "store1", args)
    rows += _reader_rows(work / "store1", tokenizer, args)
    embedded = work / "embedded"
    from mdm.presets import tiny_cpu_config

    prepare(data_config(source="embedded", tokenizer=tiny_cpu_config().data.tokenizer), embedded, progress=False)
    rows += _train_rows(embedded, args.train_steps)
    print(f"reference: one H200 trains gpt2_small at {H200_GPT2_SMALL[0]:,}-{H200_GPT2_SMALL[1]:,} tokens/s")
    columns = ("stage", "variant", "tokens/s", "MB/s", "x H200 gpt2_small (max)", "stall ms")
    print_table([{k: row.get(k, "") for k in columns} for row in rows])


if __name__ == "__main__":
    main()
