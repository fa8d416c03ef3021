"""A GitHub markdown table, for every report the project writes (benchmarks, the study, the front).

Contract: `markdown_table(headers, rows)` gives one line per row, cells written with `str()` (format numbers
before); a row with another number of cells than the headers raises ValueError.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"a row of {len(row)} cells under {len(headers)} headers: {row!r}")
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)
