"""What the chat CLI shows besides the answer: stats lines, /stats, /context, notices.

The answer itself is written as plain text to stdout; everything here goes to
stderr through a rich Console that uses colour only on a terminal and never
when ``NO_COLOR`` is set, so piped output and SSH sessions stay clean.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from edgekit.runtime.model import Model
    from edgekit.stats import Stats


def use_colour(stream: TextIO) -> bool:
    """Colour only on a real terminal, never with NO_COLOR or TERM=dumb."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    return stream.isatty()


def stderr_console() -> Console:
    """The console for everything that is not the answer."""
    colour = use_colour(sys.stderr)
    # color_system=None makes rich emit no escape codes at all (also no bold/dim).
    return Console(stderr=True, highlight=False, color_system="auto" if colour else None,
                   no_color=not colour, emoji=False)


def _unicode_ok(stream: TextIO) -> bool:
    encoding = (stream.encoding or "").lower().replace("-", "")
    return encoding in ("utf8", "utf_8")


SEP = " · " if _unicode_ok(sys.stderr) else " | "


def fmt_bytes(n: float | int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def stats_line(stats: Stats) -> str:
    """Compact one-line summary of a turn: time to first token, decode speed, context used."""
    parts = [f"{stats.ttft_s:.2f} s to first token", f"{stats.decode_tps:.1f} tok/s ({stats.gen_tokens} tokens)"]
    used, total = stats.ctx_used, stats.n_ctx
    pct = f" ({100 * used / total:.0f}%)" if total else ""
    parts.append(f"context {used}/{total}{pct}")
    if stats.finish_reason == "length":
        parts.append("stopped at max tokens")
    return SEP.join(parts)


_STATS_ROWS = [
    # (field, label, formatter)
    ("load_s", "model load", lambda v: f"{v:.2f} s"),
    ("prompt_tokens", "prompt tokens", str),
    ("cached_tokens", "  reused from cache", str),
    ("disk_tokens", "  restored from disk", str),
    ("new_prompt_tokens", "  prefilled", str),
    ("disk_restore_s", "disk restore time", lambda v: f"{v:.3f} s"),
    ("ttft_s", "time to first token", lambda v: f"{v:.3f} s"),
    ("prefill_tps", "prefill speed", lambda v: f"{v:.1f} tok/s"),
    ("gen_tokens", "generated tokens", str),
    ("decode_s", "decode time", lambda v: f"{v:.2f} s"),
    ("decode_tps", "decode speed", lambda v: f"{v:.1f} tok/s"),
    ("drafted_tokens", "drafted tokens", str),
    ("accepted_tokens", "  accepted", str),
    ("finish_reason", "finish reason", str),
    ("ctx_used", "context used", str),
    ("n_ctx", "context size", str),
    ("peak_rss", "peak RSS", fmt_bytes),
]


def stats_table(stats: Stats) -> Table:
    """The last turn's stats, every field."""
    table = Table(title="Last turn", show_header=False, box=None, title_justify="left", pad_edge=False)
    table.add_column(style="dim")
    table.add_column()
    values = stats.as_dict()
    for field, label, fmt in _STATS_ROWS:
        value = values.pop(field)
        table.add_row(label, fmt(value) if value is not None else "-")
    for key, value in values.items():  # a field without a row of its own still shows up
        table.add_row(key.replace("_", " "), str(value))
    return table


def memory_table(model: Model) -> Table:
    """The memory plan next to what the process uses now."""
    import psutil

    table = Table(title="Memory", show_header=False, box=None, title_justify="left", pad_edge=False)
    table.add_column(style="dim")
    table.add_column()
    plan = model.plan
    for value, label in ((plan.weights_bytes, "weights"), (plan.kv_bytes, "KV cache"),
                         (plan.compute_bytes, "compute buffers"), (plan.overhead_bytes, "overhead"),
                         (plan.total_bytes, "planned total"), (plan.available_bytes, "available on device")):
        table.add_row(label, fmt_bytes(value))
    fa = "on" if plan.flash_attn else "off"
    fits = "fits" if plan.fits else "does NOT fit"
    table.add_row("plan", f"n_ctx {plan.n_ctx}, KV {plan.type_k}/{plan.type_v}, flash attention {fa}: {fits}")
    table.add_row("settings", plan.tuning() + (f" ({plan.note})" if plan.note else ""))
    proc = psutil.Process()
    table.add_row("process RSS now", fmt_bytes(proc.memory_info().rss))
    table.add_row("system available", fmt_bytes(psutil.virtual_memory().available))
    return table


def meter(used: int, total: int, width: int = 30, unicode: bool = True) -> str:
    """A text bar like ``████░░░░`` for ``used`` out of ``total``."""
    full, empty = ("█", "░") if unicode else ("#", "-")
    filled = 0 if total <= 0 else min(width, round(width * used / total))
    return full * filled + empty * (width - filled)


def context_report(used: int, total: int, turns: int, dropped_total: int, system_tokens: int | None) -> str:
    """The /context text: a meter, tokens, turns kept and dropped so far."""
    pct = 100 * used / total if total else 0.0
    lines = [f"{meter(used, total, unicode=SEP != ' | ')} {used}/{total} tokens ({pct:.0f}%)",
             f"{turns} turn{'s' if turns != 1 else ''} kept"
             + (f", {dropped_total} dropped earlier to fit" if dropped_total else "")]
    if system_tokens:
        lines.append(f"system prompt: {system_tokens} tokens (always kept)")
    return "\n".join(lines)


def snippet(text: str, limit: int = 50) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dropped_notice(dropped: list[dict]) -> str:
    """Say which turns the runtime dropped to make room (never silently)."""
    users = [m for m in dropped if m.get("role") == "user"]
    count = len(users) or len(dropped)
    what = f"{count} oldest turn{'s' if count != 1 else ''}"
    first = users[0] if users else (dropped[0] if dropped else {})
    example = f' (starting with "{snippet(first.get("content", ""))}")' if first else ""
    return f"Context full: dropped the {what}{example} to make room; the system prompt is kept."
