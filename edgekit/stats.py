"""What a generation returns: the :class:`Completion` and its :class:`Stats`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "eog", "cancelled"]  # cancelled: Sequence.cancel() or its consumer left


def running_average(old: float | None, new: float, weight: float) -> float:
    """An exponential running average: ``new`` alone at first, then moving ``weight`` of the way to it."""
    return new if old is None else (1 - weight) * old + weight * new


def peak_rss() -> int:
    """Peak resident set size of this process, in bytes.

    On Linux this is VmHWM: ru_maxrss would also count a parent process that
    spawned us (exec keeps the old high-water mark), which skews measurements.
    """
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


@dataclass
class Stats:
    """Timings and sizes of one generation (the last item of every stream)."""

    load_s: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV was reused from the previous evaluation (the slot's live KV)
    new_prompt_tokens: int = 0  # prompt tokens actually prefilled (prompt = cached + disk + new)
    ttft_s: float = 0.0  # call start -> first token sampled
    prefill_tps: float = 0.0
    gen_tokens: int = 0
    decode_s: float = 0.0
    decode_tps: float = 0.0
    peak_rss: int = 0
    n_ctx: int = 0
    ctx_used: int = 0
    finish_reason: str = ""
    drafted_tokens: int = 0  # speculative decoding: drafted tokens the model evaluated (0 when off)
    accepted_tokens: int = 0  # of them, those the model's own sample confirmed (each saved a decode step)
    disk_tokens: int = 0  # prompt tokens whose KV was restored from the disk prompt cache (docs/prompt-cache.md)
    disk_restore_s: float = 0.0  # time spent finding, reading and restoring that snapshot

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Completion:
    """The result of :meth:`Model.generate` / :meth:`Model.chat`."""

    text: str
    tokens: list[int]
    finish_reason: FinishReason
    stats: Stats = field(default_factory=Stats)
