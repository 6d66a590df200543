"""Metric records: JSONL writing, unit conversions and pooled evaluation summaries.

Every record is one JSON object per line of `metrics.jsonl` with an integer `step`. Likelihoods
are pooled over all evaluated tokens (sum of nats / sum of tokens), never averaged per batch.

When `tensorboardX` is installed (pure Python, no TensorFlow), the same numbers also go to a
TensorBoard event file beside metrics.jsonl (`tensorboard --logdir runs/`); it is rewritten
from metrics.jsonl whenever a resumed run drops records, so both always hold the same scalars.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import socket
import struct
import time
from typing import Iterable, Mapping

import numpy as np

from mdm.errors import TrainingError

log = logging.getLogger("mdm")

LN2 = math.log(2.0)


def nats_to_bits(nats: float) -> float:
    return nats / LN2


def summarize_eval(sums: Mapping[str, float], prefix: str) -> dict[str, float]:
    """Turns pooled sums (see objectives.base.per_example_sums) into reported metrics.

    nats_per_token = sum nats / sum tokens; its standard error is the ratio estimator's,
    sqrt(sum_b (e_b - r n_b)^2) / sum_b n_b over sequences b.
    """
    tokens = float(sums["tokens"])
    if tokens <= 0:
        raise ValueError("evaluation saw no tokens; raise train.eval_batches or check the validation split")
    if not all(math.isfinite(float(sums[k])) for k in ("nats", "nats_sq", "nats_tokens")):
        raise TrainingError(
            f"evaluation summed a non-finite NLL (nats={float(sums['nats'])}): the params hold NaN or Inf; "
            "evaluate an earlier checkpoint (--step) or retrain with a lower --config.optim.lr"
        )
    r = float(sums["nats"]) / tokens
    resid_sq = float(sums["nats_sq"]) - 2 * r * float(sums["nats_tokens"]) + r * r * float(sums["tokens_sq"])
    n_seq = float(sums["sequences"])
    stderr = math.sqrt(max(resid_sq, 0.0) * n_seq / max(n_seq - 1, 1)) / tokens
    out = {
        f"{prefix}/nats_per_token": r,
        f"{prefix}/nats_per_token_stderr": stderr,
        f"{prefix}/bits_per_token": nats_to_bits(r),
        f"{prefix}/perplexity": math.exp(min(r, 700.0)),
        f"{prefix}/tokens": tokens,
    }
    if float(sums["bytes"]) > 0:
        out[f"{prefix}/bits_per_byte"] = nats_to_bits(float(sums["nats"])) / float(sums["bytes"])
    return out


def _jsonable(value):
    if isinstance(value, (np.generic, np.ndarray)):
        return value.item()
    if hasattr(value, "item"):
        return value.item()
    return value


TB_SUFFIX = ".mdm"  # event files this module writes end with it (and only those are ever deleted)


def tensorboard_available() -> bool:
    """Whether tensorboardX (the event-file protos) can be imported."""
    try:
        import tensorboardX.proto.event_pb2  # noqa: F401
    except ImportError:
        return False
    return True


class EventFile:
    """TensorBoard scalars for the records of one metrics.jsonl, in `directory`.

    Writes `events.out.tfevents.<time>.<host>.mdm` (TFRecord framing of `Event` protos, the
    protos from tensorboardX), appending and closing on every write like the JSONL file.
    """

    def __init__(self, directory: str | pathlib.Path):
        self.directory = pathlib.Path(directory)
        self.path: pathlib.Path | None = None

    def files(self) -> list[pathlib.Path]:
        """This module's event files in `directory`."""
        return sorted(self.directory.glob(f"events.out.tfevents.*{TB_SUFFIX}"))

    def reset(self) -> None:
        """Deletes this module's event files; the next write starts a new one."""
        for path in self.files():
            path.unlink()
        self.path = None

    def write(self, records: Iterable[Mapping]) -> None:
        """Appends one Event per record: a scalar per numeric (non-bool) value, at the record's step."""
        from tensorboardX.proto import event_pb2, summary_pb2

        frames = []
        if self.path is None:
            self.path = self.directory / f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}{TB_SUFFIX}"
            frames.append(_frame(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")))
        for record in records:
            values = [
                summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                for k, v in record.items()
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
            event = event_pb2.Event(wall_time=time.time(), step=int(record["step"]), summary=summary_pb2.Summary(value=values))
            frames.append(_frame(event))
        with open(self.path, "ab") as f:
            f.write(b"".join(frames))


def _frame(event) -> bytes:
    """One TFRecord: length, masked CRC32C of the length, data, masked CRC32C of the data."""
    from tensorboardX.record_writer import masked_crc32c

    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


class MetricsWriter:
    """Appends records to `<workdir>/metrics.jsonl`, flushing each line; only the process with
    `is_writer` (process 0 of a multi-host run) touches the file.

    tensorboard: also write a TensorBoard event file beside it (None: when tensorboardX is installed).
    """

    def __init__(self, path: str | pathlib.Path, is_writer: bool = True, tensorboard: bool | None = None):
        self.path = pathlib.Path(path)
        self.is_writer = is_writer
        self.path.parent.mkdir(parents=True, exist_ok=True)
        use_tb = tensorboard_available() if tensorboard is None else tensorboard
        self.events = EventFile(self.path.parent) if use_tb else None

    def write(self, step: int, values: Mapping[str, float]) -> None:
        if not self.is_writer:
            return
        record = {"step": int(step), **{k: _jsonable(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.events is not None:
            self.events.write([record])

    def truncate_after(self, step: int) -> None:
        """Drops records with step > `step` (written by a run that died after its last checkpoint).

        The file is rewritten atomically (temporary file + rename); the TensorBoard event file, if
        any, is rewritten from the kept records.
        """
        if not self.is_writer:
            return
        kept = [line for line in read_metrics(self.path) if line["step"] <= step] if self.path.exists() else []
        if self.path.exists():
            tmp = self.path.with_suffix(".jsonl.tmp")
            with open(tmp, "w") as f:
                for record in kept:
                    f.write(json.dumps(record) + "\n")
            os.replace(tmp, self.path)
        if self.events is not None:
            self.events.reset()
            if kept:
                self.events.write(kept)


def read_metrics(path: str | pathlib.Path) -> list[dict]:
    """All records of a metrics.jsonl file, in order. Lines that are not a JSON object with an
    integer `step` (a torn last line, binary garbage, a hand edit) are skipped with one warning."""
    records, skipped = [], []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
                record = None
            step = record.get("step") if isinstance(record, dict) else None
            if isinstance(step, int) and not isinstance(step, bool):
                records.append(record)
            else:
                skipped.append(number)
    if skipped:
        lines = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
        log.warning("%s: skipped %d line(s) that are not a record with a step (line %s)", path, len(skipped), lines)
    return records
