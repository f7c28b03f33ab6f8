"""edgekit.bench: measure latency and throughput per device, and compare devices.

``run(grid)`` yields one record per finished test (see :mod:`edgekit.bench.records`);
``suite_grid(models, "quick")`` builds a grid from a suite. The store, plots and the
llama-bench comparison live in their own modules.
"""

from __future__ import annotations

from edgekit.bench.records import SCHEMA, SCHEMA_VERSION
from edgekit.bench.runner import SUITES, Grid, run, suite_grid

__all__ = ["run", "suite_grid", "Grid", "SUITES", "SCHEMA", "SCHEMA_VERSION"]
