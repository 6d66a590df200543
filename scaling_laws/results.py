"""A sweep's results.csv: one RunResult per finished run, read (and written) with one-line errors,
grouped by objective and budget, and the seed spread of replicated cells.

Columns: C is a run's planned budget (`budget`, FLOPs), shared by all runs of one IsoFLOP curve; N
the non-embedding parameter count (`params`), D the tokens trained (`tokens`), L the final
validation loss in nats/token (`loss`). `flops` is what the run spent, so its FLOPs per token
f(N) = flops / tokens is read from the runs, not assumed to be 6N.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import pathlib
from typing import Sequence

import numpy as np

from mdm.errors import MdmError

RESULT_COLUMNS = (
    "objective",
    "run",
    "budget",
    "params",
    "params_total",
    "tokens",
    "flops",
    "loss",
    "steps",
    "batch_size",
    "seq_len",
    "workdir",
)
_INT_COLUMNS = ("params", "params_total", "tokens", "steps", "batch_size", "seq_len")
_FLOAT_COLUMNS = ("budget", "flops", "loss")
_POSITIVE_COLUMNS = ("budget", "params", "tokens", "flops", "loss")


class FitError(MdmError):
    """Results that cannot be read or fitted: a missing file or column, a degenerate sweep design,
    non-finite or non-positive values."""


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One finished run of a sweep (one row of results.csv); `extra` keeps any further columns."""

    objective: str
    run: str
    budget: float
    params: int
    params_total: int
    tokens: int
    flops: float
    loss: float
    steps: int
    batch_size: int
    seq_len: int
    workdir: str
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def flops_per_token(self) -> float:
        """f(N): training FLOPs per token of this run's model."""
        return self.flops / self.tokens


def _parse_int(text: str, column: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value.is_integer():
        raise FitError(f"{where}: {column}={text!r} is not an integer; fix the row or re-run the collector")
    return int(value)


def _parse_float(text: str, column: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise FitError(f"{where}: {column}={text!r} is not a number; fix the row or re-run the collector") from None


def read_results(path: str | pathlib.Path) -> list[RunResult]:
    """Reads a sweep's results.csv (header + one row per finished run) into RunResults, in file order."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FitError(f"no results file at {path}: run the sweep's collector first (it writes SWEEP_DIR/results.csv)")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        missing = [c for c in RESULT_COLUMNS if c not in header]
        if missing:
            raise FitError(f"{path} lacks column(s) {', '.join(missing)}: results.csv needs {', '.join(RESULT_COLUMNS)}")
        extra_columns = [c for c in header if c not in RESULT_COLUMNS]
        rows = []
        for line, record in enumerate(reader, start=2):
            where = f"{path}:{line}"
            if None in record or any(record[c] is None for c in header):
                raise FitError(f"{where}: the row has {'more' if None in record else 'fewer'} fields than the header")
            values: dict[str, object] = {c: record[c] for c in ("objective", "run", "workdir")}
            values.update({c: _parse_int(record[c], c, where) for c in _INT_COLUMNS})
            values.update({c: _parse_float(record[c], c, where) for c in _FLOAT_COLUMNS})
            rows.append(RunResult(**values, extra=tuple((c, record[c]) for c in extra_columns)))
    return rows


def objectives_in(rows: Sequence[RunResult]) -> list[str]:
    """The objectives present, "mdm" and "ar" first, then any others alphabetically."""
    names = {r.objective for r in rows}
    return [n for n in ("mdm", "ar") if n in names] + sorted(names - {"mdm", "ar"})


def runs_of(rows: Sequence[RunResult], objective: str) -> list[RunResult]:
    """The rows of one objective."""
    return [r for r in rows if r.objective == objective]


@dataclasses.dataclass(frozen=True)
class ReplicateSpread:
    """How much the loss of one cell (objective, budget, N) moves between replicates (seeds)."""

    cells: int  # cells with two or more runs
    runs: int  # the runs in those cells
    pooled_std: float  # sqrt of the cells' mean unbiased variance: one run's noise, nats/token
    max_range: float  # the largest max - min within a cell


def replicate_spread(runs: Sequence[RunResult]) -> ReplicateSpread | None:
    """The seed noise of the replicated cells among `runs` (one objective); None when no cell is replicated."""
    cells: dict[tuple[float, int], list[float]] = {}
    for r in runs:
        cells.setdefault((r.budget, r.params), []).append(r.loss)
    repl = [np.asarray(v) for v in cells.values() if len(v) > 1]
    if not repl:
        return None
    return ReplicateSpread(
        cells=len(repl),
        runs=sum(v.size for v in repl),
        pooled_std=float(np.sqrt(np.mean([v.var(ddof=1) for v in repl]))),
        max_range=float(max(v.max() - v.min() for v in repl)),
    )


def check_runs(runs: Sequence[RunResult]) -> str:
    """Validates the runs of one fit (one objective; finite, positive budgets, sizes, tokens, FLOPs
    and losses); returns their objective."""
    if not runs:
        raise FitError("no runs to fit: results.csv has no rows for this objective; finish some runs first")
    objectives = sorted({r.objective for r in runs})
    if len(objectives) > 1:
        raise FitError(f"runs of several objectives ({', '.join(objectives)}) in one fit: fit each with runs_of(rows, name)")
    for r in runs:
        for column in _POSITIVE_COLUMNS:
            value = getattr(r, column)
            if not (math.isfinite(value) and value > 0):
                raise FitError(
                    f"run {r.run!r} ({r.objective}) has {column}={value!r}: budgets, sizes, tokens, FLOPs and losses "
                    "must be finite and positive; fix or drop the row"
                )
    return objectives[0]


def runs_by_budget(runs: Sequence[RunResult], objective: str, min_budgets: int = 2) -> dict[float, list[RunResult]]:
    """The runs grouped by budget, in increasing budget order; fewer than `min_budgets` budgets is a FitError."""
    groups: dict[float, list[RunResult]] = {}
    for r in runs:
        groups.setdefault(r.budget, []).append(r)
    if len(groups) < min_budgets:
        only = ", ".join(f"{c:.3g}" for c in groups)
        raise FitError(
            f"objective {objective!r} has runs at {len(groups)} budget(s) ({only} FLOPs): a compute scaling law needs "
            f">= {min_budgets}; add budgets to the sweep"
        )
    return dict(sorted(groups.items()))
