"""Where edgekit keeps its files: ``EDGEKIT_HOME`` if set, else the platform's user dirs."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def _home() -> Path | None:
    value = os.environ.get("EDGEKIT_HOME")
    return Path(value).expanduser() if value else None


def data_dir() -> Path:
    """Directory for user data (the local model store lives in ``data_dir()/models``)."""
    home = _home()
    path = home / "data" if home else platformdirs.user_data_path("edgekit")
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Directory for re-creatable files (converted checkpoints, assets)."""
    home = _home()
    path = home / "cache" if home else platformdirs.user_cache_path("edgekit")
    path.mkdir(parents=True, exist_ok=True)
    return path
