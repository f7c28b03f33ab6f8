"""Roofline: the device's memory read bandwidth and the decode ceiling it implies.

Decoding one token reads every weight once plus the KV cache up to the current
depth, so on CPUs tokens/s can't exceed ``bandwidth / (weights + KV bytes)``.
Efficiency = measured tg / that ceiling tells whether a slow result is the
device (high efficiency) or the software (low efficiency).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

__all__ = ["measure_bandwidth", "bandwidth", "decode_ceiling"]

_CACHE_FILE = "roofline.json"


def measure_bandwidth(seconds: float = 1.0, size_bytes: int = 256 * 2**20) -> float:
    """Memory read bandwidth in bytes/s: the best of repeated reductions over a buffer far larger than caches.

    Bounded: stops after ``seconds`` (at least 3 passes). numpy's reduction runs on one
    thread, like the ~34 GB/s figure measured for this project; it is a floor of what
    several llama.cpp threads can pull, which is what the ceiling should be.
    """
    import numpy as np

    data = np.ones(size_bytes // 8, dtype=np.float64)
    data.max()  # touch every page first so the timing excludes page faults
    best = 0.0
    passes = 0
    start = time.perf_counter()
    while passes < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        data.max()
        dt = time.perf_counter() - t0
        best = max(best, data.nbytes / dt)
        passes += 1
        if passes >= 50:
            break
    return best


def bandwidth(device_id: str, *, refresh: bool = False, cache_dir: Path | None = None) -> float:
    """The cached bandwidth of this device (bytes/s), measured once per device id and kept in the data dir."""
    if cache_dir is None:
        from edgekit.paths import data_dir

        cache_dir = data_dir()
    path = cache_dir / _CACHE_FILE
    cache: dict[str, Any] = {}
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(device_id)
    if not refresh and isinstance(entry, dict) and isinstance(entry.get("read_bytes_per_s"), (int, float)):
        return float(entry["read_bytes_per_s"])
    value = measure_bandwidth()
    cache[device_id] = {"read_bytes_per_s": value, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=1))
    tmp.replace(path)
    return value


def decode_ceiling(bandwidth_bytes_per_s: float, weights_bytes: int, kv_per_token: float, depth: int) -> tuple[float, float]:
    """(bytes read per generated token, ceiling tokens/s) at a context ``depth``.

    Every weight is read once per token (the whole file size: with tied embeddings the
    output matmul reads the full table), plus the KV cache of ``depth`` tokens.
    """
    per_token = float(weights_bytes) + kv_per_token * depth
    return per_token, (bandwidth_bytes_per_s / per_token if per_token > 0 else 0.0)
