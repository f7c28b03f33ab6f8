"""Counters and gauges for ``/metrics`` in Prometheus text format (no client library needed)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, float("inf"))


class Metrics:
    """What the server counts. Thread-safe: worker threads end sequences, the loop counts requests."""

    def __init__(self, slots: int, queue: int) -> None:
        self.slots = slots
        self.queue = queue
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (path, status) -> count
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.sequences = 0  # admitted and not yet ended (running or waiting for a slot)
        self.rejected = 0
        self.cancelled = 0
        self.ttft = [0] * len(TTFT_BUCKETS)
        self.ttft_sum = 0.0
        self.ttft_count = 0
        self.decode_seconds = 0.0
        self.decode_tokens = 0
        self.last_decode_tps = 0.0
        self.drafted_tokens = 0
        self.accepted_tokens = 0

    # -- admission: sequences in flight never exceed slots + queue ------------------------------------------

    def admit(self, n: int) -> bool:
        with self._lock:
            if self.sequences + n > self.slots + self.queue:
                self.rejected += 1
                return False
            self.sequences += n
            return True

    def release(self, n: int = 1) -> None:
        with self._lock:
            self.sequences -= n

    running: Callable[[], int] | None = None  # sequences holding a slot now (the engine's view), if known
    prompt_cache: Callable[[], object] | None = None  # the model's PromptCache (None until loaded, or off)

    @property
    def slots_busy(self) -> int:
        return min(self.running(), self.slots) if self.running is not None else min(self.sequences, self.slots)

    @property
    def queue_depth(self) -> int:
        return max(0, self.sequences - self.slots_busy)

    # -- counting -----------------------------------------------------------------------------------------

    def count_request(self, path: str, status: int) -> None:
        with self._lock:
            self.requests[(path, status)] += 1

    def sequence_ended(self, completion: object) -> None:
        """A sequence ended (its :class:`edgekit.Completion`, or None if it failed): its slot is free."""
        with self._lock:
            self.sequences -= 1
            if completion is None:
                return
            if completion.finish_reason == "cancelled":  # type: ignore[attr-defined]
                self.cancelled += 1
            stats = completion.stats  # type: ignore[attr-defined]
            self.generated_tokens += stats.gen_tokens  # type: ignore[attr-defined]
            self.drafted_tokens += stats.drafted_tokens  # type: ignore[attr-defined]
            self.accepted_tokens += stats.accepted_tokens  # type: ignore[attr-defined]
            ttft = stats.ttft_s  # type: ignore[attr-defined]
            self.ttft_sum += ttft
            self.ttft_count += 1
            for i, bound in enumerate(TTFT_BUCKETS):
                if ttft <= bound:
                    self.ttft[i] += 1
            if stats.decode_s > 0:  # type: ignore[attr-defined]
                self.decode_seconds += stats.decode_s  # type: ignore[attr-defined]
                self.decode_tokens += max(0, stats.gen_tokens - 1)  # type: ignore[attr-defined]
                self.last_decode_tps = stats.decode_tps  # type: ignore[attr-defined]

    def count_prompt(self, tokens: int) -> None:
        with self._lock:
            self.prompt_tokens += tokens

    def render(self) -> str:
        """The Prometheus text exposition."""
        with self._lock:
            lines = ["# HELP edgekit_requests_total HTTP requests by path and status.",
                     "# TYPE edgekit_requests_total counter"]
            for (path, status), count in sorted(self.requests.items()):
                lines.append(f'edgekit_requests_total{{path="{path}",status="{status}"}} {count}')

            def metric(name: str, kind: str, help_: str, value: float) -> None:
                lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value:g}"])

            metric("edgekit_rejected_total", "counter", "Requests refused with 503 because the queue was full.",
                   self.rejected)
            metric("edgekit_cancelled_total", "counter", "Sequences cancelled (client gone, or shutdown).",
                   self.cancelled)
            metric("edgekit_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.",
                   self.prompt_tokens)
            metric("edgekit_generated_tokens_total", "counter", "Tokens generated.", self.generated_tokens)
            metric("edgekit_drafted_tokens_total", "counter", "Speculative decoding: drafted tokens the model "
                   "evaluated.", self.drafted_tokens)
            metric("edgekit_accepted_tokens_total", "counter", "Speculative decoding: drafted tokens the model's "
                   "own samples confirmed.", self.accepted_tokens)
            metric("edgekit_slots", "gauge", "Sequences the model decodes at once (--slots).", self.slots)
            metric("edgekit_slots_busy", "gauge", "Slots running a sequence.", self.slots_busy)
            metric("edgekit_queue_depth", "gauge", "Sequences waiting for a slot.", self.queue_depth)
            metric("edgekit_queue_capacity", "gauge", "Sequences that may wait (--queue).", self.queue)
            lines += ["# HELP edgekit_time_to_first_token_seconds Request start to first generated token.",
                      "# TYPE edgekit_time_to_first_token_seconds histogram"]
            for bound, count in zip(TTFT_BUCKETS, self.ttft, strict=True):
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f'edgekit_time_to_first_token_seconds_bucket{{le="{le}"}} {count}')
            lines += [f"edgekit_time_to_first_token_seconds_sum {self.ttft_sum:g}",
                      f"edgekit_time_to_first_token_seconds_count {self.ttft_count}"]
            metric("edgekit_decode_seconds_total", "counter", "Time sequences spent decoding.", self.decode_seconds)
            metric("edgekit_decode_tokens_total", "counter", "Tokens decoded after each first token.",
                   self.decode_tokens)
            metric("edgekit_decode_tokens_per_second", "gauge", "Decode speed of the last finished sequence.",
                   self.last_decode_tps)
            cache = getattr(self.prompt_cache(), "counters", None) if self.prompt_cache is not None else None
            if cache is not None:
                for name, help_, value in (
                        ("hits", "Prompts restored from the disk prompt cache.", cache.hits),
                        ("misses", "Long prompts the disk prompt cache had nothing for.", cache.misses),
                        ("read_bytes", "Bytes of snapshots read from the prompt cache.", cache.bytes_read),
                        ("written_bytes", "Bytes of snapshots written to the prompt cache.", cache.bytes_written),
                        ("evictions", "Snapshots evicted to keep the prompt cache in its budget.", cache.evictions),
                        ("restored_tokens", "Prompt tokens restored from the prompt cache.", cache.restored_tokens)):
                    metric(f"edgekit_prompt_cache_{name}_total", "counter", help_, value)
        return "\n".join(lines) + "\n"
