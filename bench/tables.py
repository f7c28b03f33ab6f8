"""Render rows under a header as an aligned text table, markdown or CSV.

The one table renderer of the bench records and of ``edgekit bench compare``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

__all__ = ["TABLE_FORMATS", "render"]

TABLE_FORMATS = ("table", "md", "csv")


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    """``rows`` under the header ``columns`` as ``table`` (aligned text), ``md`` or ``csv``.

    Table and markdown cells must already be strings; CSV cells may be anything the
    ``csv`` module writes (``None`` becomes an empty cell).
    """
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        return buf.getvalue()
    if fmt == "md":
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines) + "\n"
    if fmt == "table":
        widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(columns)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        return "\n".join(line.rstrip() for line in lines) + "\n"
    raise ValueError(f"unknown table format {fmt!r}; expected one of {TABLE_FORMATS}")
