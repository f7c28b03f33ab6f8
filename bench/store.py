"""The local results store: every record ever measured or imported, in SQLite in the user data dir.

The full record is kept as JSON; the columns used to filter and group are copied
out next to it. A record's key is a hash of its content, so importing the same
file twice adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import BenchError

from . import records, tables

__all__ = ["Store", "Filters", "compare", "COMPARE_BY", "default_path"]

_COLUMNS = ("device_id", "cpu_info", "engine", "test", "name", "model_filename", "model_type", "model_size",
            "n_prompt", "n_gen", "n_depth", "n_threads", "type_k", "type_v", "flash_attn", "avg_ts", "stddev_ts",
            "test_time", "schema_version")
_SCHEMA_SQL = f"""
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    key TEXT UNIQUE NOT NULL,
    {", ".join(f"{c}" for c in _COLUMNS)},
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_device ON records(device_id);
CREATE INDEX IF NOT EXISTS records_model ON records(model_type);
"""


def default_path() -> Path:
    from edgekit.paths import data_dir

    return data_dir() / "bench.sqlite"


def _key(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Filters:
    """Substring filters (case-insensitive) and exact values; None = any."""

    device: str | None = None  # device id, CPU or board name
    model: str | None = None  # file name or model type
    test: str | None = None  # pp | tg | chat
    engine: str | None = None
    kv: str | None = None  # "q8_0" or "q8_0/f16"
    depth: int | None = None
    threads: int | None = None
    since: str | None = None  # ISO date, compared with test_time


class Store:
    """The SQLite results store (``Store()`` opens the default one in the data dir)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path else default_path()
        try:
            self.db = sqlite3.connect(self.path)
            self.db.executescript(_SCHEMA_SQL)
        except sqlite3.DatabaseError as exc:
            raise BenchError(f"the results store {self.path} can't be opened ({exc})",
                             "Move the file away; a new store is created on the next run.") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, recs: Iterable[dict[str, Any]]) -> int:
        """Insert records (already validated); return how many were new."""
        added = 0
        with self.db:
            for r in recs:
                desc = (r.get("device") or {}) if isinstance(r.get("device"), dict) else {}
                values = [r.get(c) for c in _COLUMNS]
                values[1] = desc.get("board") or desc.get("apple_chip") or r.get("cpu_info")
                cur = self.db.execute(
                    f"INSERT OR IGNORE INTO records (key, {', '.join(_COLUMNS)}, json) "
                    f"VALUES (?, {', '.join('?' for _ in _COLUMNS)}, ?)",
                    [_key(r), *values, json.dumps(r)],
                )
                added += cur.rowcount
        return added

    def import_jsonl(self, path: Path) -> tuple[int, int]:
        """Merge a JSONL file (e.g. measured on a Pi); return (added, already present)."""
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise BenchError(f"file not found: {path}", "Pass a JSONL file written by edgekit bench --output.") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise BenchError(f"can't read {path}: {exc}", "Pass a JSONL file written by edgekit bench --output.") from None
        recs = records.read_jsonl(text, source=str(path))
        if not recs:
            raise BenchError(f"{path} holds no benchmark records", "Pass a JSONL file written by edgekit bench --output.")
        added = self.add(recs)
        return added, len(recs) - added

    def query(self, filters: Filters | None = None) -> list[dict[str, Any]]:
        """Records matching ``filters``, oldest first."""
        f = filters or Filters()
        where, args = [], []
        if f.device:
            where.append("(device_id LIKE ? OR cpu_info LIKE ? OR json LIKE ?)")
            args += [f"{f.device}%", f"%{f.device}%", f'%"board": "%{f.device}%']
        if f.model:
            where.append("(model_filename LIKE ? OR model_type LIKE ?)")
            args += [f"%{f.model}%", f"%{f.model}%"]
        if f.test:
            where.append("test = ?")
            args.append(f.test)
        if f.engine:
            where.append("engine = ?")
            args.append(f.engine)
        if f.kv:
            k, _, v = f.kv.lower().partition("/")
            where.append("type_k = ? AND type_v = ?")
            args += [k, v or k]
        if f.depth is not None:
            where.append("n_depth = ?")
            args.append(f.depth)
        if f.threads is not None:
            where.append("n_threads = ?")
            args.append(f.threads)
        if f.since:
            where.append("test_time >= ?")
            args.append(f.since)
        sql = "SELECT json FROM records" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        return [json.loads(row[0]) for row in self.db.execute(sql, args)]

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM records").fetchone()[0])


# -- compare -----------------------------------------------------------------------------------------------

def _device_label(r: dict[str, Any]) -> str:
    from edgekit.device import describe

    d = r.get("device")
    return describe(d) if isinstance(d, dict) else str(r.get("cpu_info") or r.get("device_id"))


# What `compare --by` puts side by side; everything else (model, test, depth, KV...) must match.
COMPARE_BY = {
    "device": _device_label,
    "engine": lambda r: str(r.get("engine")),
    "kv": lambda r: f"{r.get('type_k')}/{r.get('type_v')}",
    "threads": lambda r: str(r.get("n_threads")),
    "model": lambda r: str(r.get("model_type")),
    "flash_attn": lambda r: "fa on" if r.get("flash_attn") else "fa off",
}
_KEY_FIELDS = {
    "device": ("model_type", "name", "type_k", "type_v", "flash_attn", "engine"),
    "engine": ("device_id", "model_type", "name", "type_k", "type_v", "flash_attn", "n_threads"),
    "kv": ("device_id", "model_type", "name", "flash_attn", "n_threads", "engine"),
    "threads": ("device_id", "model_type", "name", "type_k", "type_v", "flash_attn", "engine"),
    "model": ("device_id", "name", "type_k", "type_v", "flash_attn", "n_threads", "engine"),
    "flash_attn": ("device_id", "model_type", "name", "type_k", "type_v", "n_threads", "engine"),
}


def compare(recs: list[dict[str, Any]], by: str = "device", baseline: str | None = None) -> dict[str, Any]:
    """Pivot records: one row per test setting, one column per value of ``by``, with ratios to the baseline.

    Repeated measurements of the same cell are averaged (the latest ones are not preferred:
    the store is a history). ``baseline`` is a substring of a column label; default: the first column.
    Returns ``{"columns": [...], "baseline": label, "rows": [{"key": {...}, "values": {label: ts},
    "ratios": {label: ratio}}]}``.
    """
    if by not in COMPARE_BY:
        raise BenchError(f"can't compare by {by!r}", f"Use one of: {', '.join(COMPARE_BY)}.")
    label_of, key_fields = COMPARE_BY[by], _KEY_FIELDS[by]
    columns: list[str] = []
    cells: dict[tuple, dict[str, list[float]]] = {}
    for r in recs:
        if not isinstance(r.get("avg_ts"), (int, float)):
            continue
        label = label_of(r)
        if label not in columns:
            columns.append(label)
        key = tuple(r.get(k) for k in key_fields)
        cells.setdefault(key, {}).setdefault(label, []).append(float(r["avg_ts"]))
    base = columns[0] if columns else None
    if baseline is not None:
        matches = [c for c in columns if baseline.lower() in c.lower()]
        if not matches:
            raise BenchError(f"no results match the baseline {baseline!r}", f"Columns are: {', '.join(columns)}.")
        base = matches[0]
    rows = []
    for key, by_label in cells.items():
        values = {label: sum(v) / len(v) for label, v in by_label.items()}
        ref = values.get(base) if base else None
        ratios = {label: (v / ref if ref else None) for label, v in values.items()}
        rows.append({"key": dict(zip(key_fields, key, strict=True)), "values": values, "ratios": ratios})
    rows.sort(key=lambda row: tuple(str(v) for v in row["key"].values()))
    return {"columns": columns, "baseline": base, "by": by, "rows": rows}


def format_compare(result: dict[str, Any], fmt: str = "table") -> str:
    """Render :func:`compare`'s result as an aligned table (or md, csv, json)."""
    if fmt == "json":
        return json.dumps(result, indent=2) + "\n"
    key_fields = list(result["rows"][0]["key"]) if result["rows"] else []
    header = [*key_fields, *[f"{c} t/s" for c in result["columns"]],
              *[f"{c} / {result['baseline']}" for c in result["columns"] if c != result["baseline"]]]
    lines = []
    for row in result["rows"]:
        cells = [str(v) for v in row["key"].values()]
        cells += [f"{row['values'][c]:.2f}" if c in row["values"] else "-" for c in result["columns"]]
        cells += [f"{row['ratios'][c]:.3f}" if row["ratios"].get(c) is not None else "-"
                  for c in result["columns"] if c != result["baseline"]]
        lines.append(cells)
    if fmt not in tables.TABLE_FORMATS:
        raise BenchError(f"unknown format {fmt!r}", "Use one of: table, md, csv, json.")
    return tables.render(header, lines, fmt)
