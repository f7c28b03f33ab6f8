"""edgekit: small language models from Hugging Face checkpoints to laptops and Raspberry Pi.

The public API is imported lazily, so ``import edgekit`` (and the CLI's help)
does not load llama.cpp.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load": "edgekit.runtime.load",
    "Model": "edgekit.runtime.model",
    "Completion": "edgekit.stats",
    "Stats": "edgekit.stats",
    "Chat": "edgekit.runtime.chat",
    "plan": "edgekit.planner",
    "Plan": "edgekit.planner",
    "Sampling": "edgekit.runtime.sampling",
}
# Public modules, by the names the docs use (``from edgekit import tools``).
_LAZY_MODULES = {
    "tools": "edgekit.runtime.tools",
}

from edgekit.errors import *  # noqa: E402,F403


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY_MODULES:
        return importlib.import_module(_LAZY_MODULES[name])
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
