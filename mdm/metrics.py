"""Metric records: JSONL writing, unit conversions and pooled evaluation summaries.

Every record is one JSON object per line of `metrics.jsonl` with an integer `step`. Likelihoods
are pooled over all evaluated tokens (sum of nats / sum of tokens), never averaged per batch.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Mapping

import numpy as np

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


class MetricsWriter:
    """Appends records to `<workdir>/metrics.jsonl`, flushing each line; only the process with
    `is_writer` (process 0 of a multi-host run) touches the file."""

    def __init__(self, path: str | pathlib.Path, is_writer: bool = True):
        self.path = pathlib.Path(path)
        self.is_writer = is_writer
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, values: Mapping[str, float]) -> None:
        if not self.is_writer:
            return
        record = {"step": int(step), **{k: _jsonable(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drops records with step > `step` (written by a run that died after its last checkpoint).

        The file is rewritten atomically (temporary file + rename).
        """
        if not self.is_writer or not self.path.exists():
            return
        kept = [line for line in read_metrics(self.path) if line["step"] <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            for record in kept:
                f.write(json.dumps(record) + "\n")
        os.replace(tmp, self.path)


def read_metrics(path: str | pathlib.Path) -> list[dict]:
    """All records of a metrics.jsonl file, in order (a torn last line is ignored)."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
