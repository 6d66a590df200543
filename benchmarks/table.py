"""Plain-text tables for the benchmark scripts."""

from __future__ import annotations


def print_table(rows: list[dict]) -> None:
    """Prints rows (dicts with the same keys) as a '|'-separated table; floats get 2 decimals
    below 100 and 1 above."""

    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:,.1f}" if abs(v) >= 100 else f"{v:,.2f}"
        return str(v)

    keys = list(rows[0])
    widths = [max(len(k), *(len(fmt(r.get(k, ""))) for r in rows)) for k in keys]
    print(" | ".join(k.ljust(w) for k, w in zip(keys, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(fmt(r.get(k, "")).ljust(w) for k, w in zip(keys, widths)))
