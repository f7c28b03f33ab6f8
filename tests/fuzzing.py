"""What every fuzz test (tests/test_fuzz_*.py) shares: settings, the property, byte mutations.

The property: a reader given any input either returns or raises edgekit's own
error (the EdgekitError family), never another exception, within a bounded time
and allocation. Examples are drawn from a fixed seed, so CI runs the same ones
(about 2500 in all). A longer run sets the number of examples per test:

    EDGEKIT_FUZZ_EXAMPLES=100000 pytest tests/test_fuzz_*.py
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tracemalloc
from collections.abc import Callable, Iterator

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from edgekit.errors import EdgekitError

# A longer run: EDGEKIT_FUZZ_EXAMPLES=100000 pytest tests/test_fuzz_*.py (examples per test).
EXAMPLES = int(os.environ.get("EDGEKIT_FUZZ_EXAMPLES", "0"))
# A reader may take this long on one tiny input before we call it a hang (generous: the machine may be loaded).
SECONDS = 10.0
# ...and may allocate this much Python/numpy memory (traced by tracemalloc) at its peak.
MEGABYTES = 64


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings for a fuzz test: ``examples`` by default, a fixed seed, no example database."""
    return settings(
        max_examples=EXAMPLES or examples,
        derandomize=True,
        database=None,
        deadline=None,  # time is bounded by bounded() below, which also stops a true hang
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


class Unbounded(AssertionError):
    """A reader ran too long or allocated too much on a small input."""


@contextlib.contextmanager
def bounded(seconds: float = SECONDS, megabytes: int = MEGABYTES) -> Iterator[None]:
    """Fail with :class:`Unbounded` if the block runs longer than ``seconds`` or allocates more than ``megabytes``."""

    fired = []

    def on_alarm(signum, frame):
        fired.append(True)
        raise Unbounded(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    tracemalloc.start()
    try:
        yield
        if fired:  # the reader caught the alarm's exception (e.g. wrapped it in its own error)
            raise Unbounded(f"took longer than {seconds} s")
        peak = tracemalloc.get_traced_memory()[1]
        if peak > megabytes << 20:
            raise Unbounded(f"allocated {peak / 2**20:.0f} MiB at its peak")
    finally:
        tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def only_edgekit_errors(read: Callable, *args, **kwargs):
    """Call ``read``; return its result, or None if it raised an EdgekitError. Anything else fails the test."""
    with bounded():
        try:
            return read(*args, **kwargs)
        except EdgekitError as exc:
            assert str(exc), "an error must say what went wrong"
            return None


# --- byte-level mutations of a valid file ------------------------------------------------------------------

INTERESTING_INTS = [0, 1, 2, 3, 7, 8, 255, 256, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40,
                    2**53, 2**63 - 1, 2**63, 2**64 - 1, 10**12]


def mutations(data: bytes, hot: int | None = None) -> st.SearchStrategy[bytes]:
    """Mutated copies of ``data``: byte flips (mostly in the first ``hot`` bytes), truncation, splices, inserts."""
    n = len(data)
    hot = min(hot or n, n)
    pos = st.one_of(st.integers(0, hot - 1), st.integers(0, n - 1))

    def flip(positions_values):
        out = bytearray(data)
        for p, v in positions_values:
            out[p] = v
        return bytes(out)

    flips = st.lists(st.tuples(pos, st.integers(0, 255)), min_size=1, max_size=8).map(flip)
    truncated = st.integers(0, n - 1).map(lambda k: data[:k])
    deleted = st.tuples(pos, st.integers(1, 64)).map(lambda t: data[: t[0]] + data[t[0] + t[1]:])
    inserted = st.tuples(pos, st.binary(min_size=1, max_size=64)).map(lambda t: data[: t[0]] + t[1] + data[t[0]:])
    duplicated = st.tuples(pos, st.integers(1, 256)).map(lambda t: data[: t[0] + t[1]] + data[t[0]:])
    return st.one_of(flips, truncated, deleted, inserted, duplicated)


# --- JSON values, for the readers of JSON files and headers ----------------------------------------------

DEEP = "\x00deep\x00"  # stands for a value nested thousands of levels deep (json can't dump one)
DTYPE_NAMES = ["BF16", "F16", "F32", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "bf16", "F8_E4M3"]
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from(INTERESTING_INTS),
    st.integers(-3, 300), st.floats(), st.text(max_size=8), st.sampled_from(DTYPE_NAMES),
)
# Any JSON value, with a bias to the numbers and lists a header or config holds; DEEP marks deep nesting.
json_values = st.one_of(
    st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                                        max_size=3), max_leaves=8),
    st.lists(st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(-2, 80)), max_size=4),
    st.just(DEEP),
)


def dump_json(value, depth: int) -> bytes:
    """``value`` as JSON text, each DEEP replaced by a list nested ``depth`` levels deep."""
    return json.dumps(value).replace(json.dumps(DEEP), "[" * depth + "]" * depth).encode()
