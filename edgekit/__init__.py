"""edgekit: small language models from Hugging Face checkpoints to laptops and Raspberry Pi.

The public API is imported lazily, so ``import edgekit`` (and the CLI's help)
does not load llama.cpp.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load": "edgekit.model",
    "Model": "edgekit.model",
    "Completion": "edgekit.model",
    "Stats": "edgekit.model",
    "Chat": "edgekit.chat",
    "plan": "edgekit.planner",
    "Plan": "edgekit.planner",
    "Sampling": "edgekit.sampling",
}

from edgekit.errors import *  # noqa: E402,F403


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
    import importlib

    mod = importlib.import_module(module)
    return getattr(mod, name)
