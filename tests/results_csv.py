"""Writing results.csv files for tests (the library only reads them: sweeps write their own)."""

import csv
import pathlib
from typing import Iterable

from scaling_laws.results import RESULT_COLUMNS, RunResult


def write_results(path: str | pathlib.Path, rows: Iterable[RunResult]) -> None:
    """Writes RunResults as results.csv: the contract columns, then any extra columns (sorted by name)."""
    rows = list(rows)
    extra_columns = sorted({name for r in rows for name, _ in r.extra})
    with pathlib.Path(path).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*RESULT_COLUMNS, *extra_columns])
        for r in rows:
            extra = dict(r.extra)
            base = [repr(v) if isinstance(v, float) else str(v) for v in (getattr(r, c) for c in RESULT_COLUMNS)]
            writer.writerow([*base, *(extra.get(c, "") for c in extra_columns)])
