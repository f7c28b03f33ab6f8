"""The benchmark record: one JSONL line per test, in a stable, versioned schema.

Where a field means the same as in llama.cpp's ``llama-bench -o jsonl``, it has the
same name (``n_prompt``, ``n_gen``, ``n_depth``, ``avg_ts``, ``samples_ns``, ...), so
the two outputs can be read side by side. edgekit adds the chat-turn latency,
memory, roofline and device fingerprint fields.

Record kinds (``test``):
- ``pp``: prompt processing of ``n_prompt`` tokens after ``n_depth`` tokens of context;
- ``tg``: generating ``n_gen`` tokens one by one after ``n_depth`` tokens of context;
- ``chat``: one realistic chat turn (system prompt + user message, ``n_gen`` answer tokens):
  time to first token and end-to-end latency, p50/p95 over the repetitions. ``speculative`` is the
  model's speculative decoding mode (it changes only the chat turn: pp/tg drive llama.cpp directly);
  ``drafted_tokens`` / ``accepted_tokens`` sum the chat turn's drafts over the repetitions.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from edgekit.errors import BenchError

from . import tables

__all__ = ["SCHEMA", "SCHEMA_VERSION", "FIELDS", "REQUIRED", "FORMATS", "make_record", "stats_from_ns",
           "validate", "test_name", "format_records", "read_jsonl", "percentile"]

SCHEMA = "edgekit.bench"
# Bump on any incompatible change (renamed/removed field or changed meaning); adding fields is compatible.
SCHEMA_VERSION = 1

# Field order of the flat outputs (CSV/table) and of the JSON objects.
FIELDS: tuple[str, ...] = (
    "schema", "schema_version", "engine", "test", "name",
    # llama-bench names
    "build_commit", "cpu_info", "gpu_info", "backends", "model_filename", "model_type", "model_size",
    "model_n_params", "n_batch", "n_ubatch", "n_threads", "type_k", "type_v", "n_gpu_layers", "flash_attn",
    "n_prompt", "n_gen", "n_depth", "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts",
    "samples_ns", "samples_ts",
    # edgekit additions
    "n_ctx", "reps", "warmup", "load_s", "rss_bytes", "peak_rss_bytes",
    "ttft_p50_ms", "ttft_p95_ms", "e2e_p50_ms", "e2e_p95_ms", "samples_ttft_ns", "samples_e2e_ns",
    "prompt_tokens", "gen_tokens", "speculative", "drafted_tokens", "accepted_tokens",
    "mem_bw_gbs", "bytes_per_token", "ceiling_ts", "efficiency",
    "llama_bench_ts", "ratio_vs_llama_bench",
    "tuned", "tuned_settings",  # whether the load settings came from a tuned profile (edgekit tune), and which
    "edgekit_version", "llama_cpp_python", "device_id", "device",
)
REQUIRED: tuple[str, ...] = (
    "schema", "schema_version", "engine", "test", "name", "model_filename", "model_type", "model_size",
    "model_n_params", "n_batch", "n_ubatch", "n_threads", "type_k", "type_v", "flash_attn", "n_prompt", "n_gen",
    "n_depth", "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts", "samples_ns", "samples_ts",
    "device_id", "device",
)
TESTS = ("pp", "tg", "chat")
FORMATS = ("table", "json", "jsonl", "csv", "md")


def test_name(test: str, n_prompt: int, n_gen: int, n_depth: int) -> str:
    """llama-bench's label: ``pp512``, ``tg128``, ``tg128 @ d4096``; ``chat`` for chat turns."""
    if test == "pp":
        base = f"pp{n_prompt}"
    elif test == "tg":
        base = f"tg{n_gen}"
    else:
        base = f"chat{n_gen}"
    return f"{base} @ d{n_depth}" if n_depth else base


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 0.0
    mean = statistics.fmean(values)
    # llama-bench's stddev is the sample standard deviation (n - 1); 0 for a single sample.
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def stats_from_ns(samples_ns: Sequence[int], n_tokens: int) -> dict[str, Any]:
    """avg/stddev of time and of tokens/s from raw per-repetition nanoseconds (as llama-bench computes them)."""
    samples_ts = [1e9 * n_tokens / ns for ns in samples_ns if ns > 0]
    avg_ns, std_ns = _mean_std([float(ns) for ns in samples_ns])
    avg_ts, std_ts = _mean_std(samples_ts)
    return {"samples_ns": [int(ns) for ns in samples_ns], "samples_ts": samples_ts, "avg_ns": int(avg_ns),
            "stddev_ns": int(std_ns), "avg_ts": avg_ts, "stddev_ts": std_ts}


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; ``nan`` for no values."""
    if not values:
        return math.nan
    import numpy as np  # here, not at the top: the record schema stays importable without numpy's start-up

    return float(np.percentile(values, q))


def make_record(**fields: Any) -> dict[str, Any]:
    """Build a record with the schema header, every known field (None when unknown) and extras kept."""
    record: dict[str, Any] = dict.fromkeys(FIELDS)
    record.update(schema=SCHEMA, schema_version=SCHEMA_VERSION, engine="edgekit")
    record.update(fields)
    if record.get("name") is None and record.get("test") in TESTS:
        record["name"] = test_name(record["test"], record.get("n_prompt") or 0, record.get("n_gen") or 0,
                                   record.get("n_depth") or 0)
    return record


def validate(record: dict[str, Any]) -> dict[str, Any]:
    """Check a record read from a file; raise BenchError naming what is wrong. Returns the record."""
    if not isinstance(record, dict):
        raise BenchError("a benchmark record is not a JSON object", "Pass a JSONL file written by edgekit bench.")
    if record.get("schema") != SCHEMA:
        raise BenchError(f"not an edgekit bench record (schema={record.get('schema')!r})",
                         "Pass a JSONL file written by `edgekit bench --output`.")
    version = record.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise BenchError(f"record schema version {version!r} is newer than this edgekit's ({SCHEMA_VERSION})",
                         "Upgrade edgekit to read it.")
    missing = [f for f in REQUIRED if f not in record]
    if missing:
        raise BenchError(f"benchmark record lacks fields: {', '.join(missing)}",
                         "The file was not written by edgekit bench or was edited.")
    if record["test"] not in TESTS:
        raise BenchError(f"unknown test kind {record['test']!r} in a benchmark record", f"Expected one of {TESTS}.")
    return record


def read_jsonl(text: str, source: str = "input") -> list[dict[str, Any]]:
    """Parse and validate JSONL text (blank lines skipped)."""
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchError(f"{source} line {lineno} is not valid JSON ({exc.msg})",
                             "Pass a JSONL file written by edgekit bench.") from None
        try:
            records.append(validate(obj))
        except BenchError as exc:
            raise BenchError(f"{source} line {lineno}: {exc.message}", exc.hint) from None
    return records


# -- formatting --------------------------------------------------------------------------------------------

_TABLE_COLUMNS = ("engine", "model", "size", "params", "type_k/v", "fa", "threads", "test", "t/s", "ceiling", "eff", "ttft p50/p95 ms",
                  "e2e p50/p95 ms", "vs llama-bench")


def _fmt_size(n: Any) -> str:
    if not isinstance(n, (int, float)) or n <= 0:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return "-"


def _fmt_params(n: Any) -> str:
    if not isinstance(n, (int, float)) or n <= 0:
        return "-"
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


# llama.cpp's model description ("qwen2 1B Q4_K - Medium") names a size bucket, not the parameter count
# (a 494M-parameter Qwen2.5-0.5B is "1B"); the table shows the count in its own column instead.
_SIZE_BUCKET = re.compile(r"^\d+(\.\d+)?[KMBT]$")


def _model_label(model_type: Any) -> str:
    """``model_type`` without llama.cpp's size bucket: ``qwen2 1B Q4_0`` -> ``qwen2 Q4_0``."""
    if not model_type:
        return "-"
    words = str(model_type).split()
    return " ".join(w for i, w in enumerate(words) if not (i == 1 and _SIZE_BUCKET.match(w)))


def _row(r: dict[str, Any]) -> list[str]:
    def num(key: str, fmt: str) -> str:
        value = r.get(key)
        return format(value, fmt) if isinstance(value, (int, float)) and not math.isnan(value) else "-"

    model = _model_label(r.get("model_type"))
    ttft = f"{num('ttft_p50_ms', '.0f')}/{num('ttft_p95_ms', '.0f')}" if r.get("test") == "chat" else "-"
    e2e = f"{num('e2e_p50_ms', '.0f')}/{num('e2e_p95_ms', '.0f')}" if r.get("test") == "chat" else "-"
    eff = f"{100 * r['efficiency']:.0f}%" if isinstance(r.get("efficiency"), (int, float)) else "-"
    ratio = num("ratio_vs_llama_bench", ".3f")
    return [str(r.get("engine")), model, _fmt_size(r.get("model_size")), _fmt_params(r.get("model_n_params")),
            f"{r.get('type_k')}/{r.get('type_v')}", "on" if r.get("flash_attn") else "off", str(r.get("n_threads")),
            str(r.get("name")), f"{num('avg_ts', '.2f')} ± {num('stddev_ts', '.2f')}", num("ceiling_ts", ".1f"),
            eff, ttft, e2e, ratio]


def _csv_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def format_records(records: Iterable[dict[str, Any]], fmt: str) -> str:
    """Render records as ``table`` (aligned text), ``md``, ``csv``, ``json`` (an array) or ``jsonl``."""
    records = list(records)
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in records)
    if fmt == "json":
        return json.dumps(records, indent=2) + "\n"
    if fmt == "csv":
        columns = [*FIELDS, *sorted({k for r in records for k in r} - set(FIELDS))]
        return tables.render(columns, [[_csv_value(r.get(k)) for k in columns] for r in records], "csv")
    if fmt in ("md", "table"):
        return tables.render(_TABLE_COLUMNS, [_row(r) for r in records], fmt)
    raise BenchError(f"unknown output format {fmt!r}", f"Use one of: {', '.join(FORMATS)}.")
