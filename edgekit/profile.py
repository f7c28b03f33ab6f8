"""Tuned profiles: the runtime settings ``edgekit tune`` measured as fastest for one model on one device.

A profile is a JSON file in ``data_dir()/profiles``, one per model file path. It is valid
only for the key it was measured under: the device (:func:`edgekit.device.device_id`), the
model file's identity (:func:`edgekit.gguf_check.model_identity`, the rule saved KV states use too)
and the llama.cpp build (llama-cpp-python's
version and llama.cpp's system info). :func:`lookup` returns the profile's settings when the
key matches, and otherwise a note that says why the profile was ignored.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Settings", "Profile", "profile_path", "build_identity", "device_and_build",
           "current_key", "lookup",
           "read", "write", "SCHEMA_VERSION", "read_recipe_speeds", "write_recipe_speeds", "recipe_speed_path"]

SCHEMA = "edgekit.profile"
SCHEMA_VERSION = 1
# The header region hashed for a file's identity: the metadata and tensor infos are at the


@dataclass(frozen=True)
class Settings:
    """Runtime settings a profile chooses (what :func:`edgekit.load` would otherwise default)."""

    threads: int  # decode threads (llama.cpp's n_threads)
    threads_batch: int  # prefill threads (n_threads_batch)
    flash_attn: bool
    type_k: str
    type_v: str
    n_ubatch: int

    @property
    def kv(self) -> str:
        """The K/V cache types as ``"K/V"``, e.g. ``q8_0/f16``."""
        return f"{self.type_k}/{self.type_v}"

    def describe(self) -> str:
        """Short text, e.g. ``threads 2 (prefill 2), flash attention on, KV f16/f16, ubatch 512``."""
        return (f"threads {self.threads} (prefill {self.threads_batch}), flash attention "
                f"{'on' if self.flash_attn else 'off'}, KV {self.type_k}/{self.type_v}, ubatch {self.n_ubatch}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Profile:
    """A measured profile (see the module docstring); ``partial`` when tuning was interrupted or ran out of budget."""

    key: dict[str, Any]
    model: str
    n_ctx: int
    settings: Settings | None
    partial: bool = False
    job: dict[str, Any] = field(default_factory=dict)  # the representative job configs are ranked by
    depths: list[int] = field(default_factory=list)
    measured: list[dict[str, Any]] = field(default_factory=list)  # one entry per configuration measured
    not_measured: list[str] = field(default_factory=list)
    budget_s: float = 0.0
    elapsed_s: float = 0.0
    created: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **d}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Profile:
        s = d.get("settings")
        return cls(key=dict(d["key"]), model=str(d["model"]), n_ctx=int(d["n_ctx"]),
                   settings=Settings(**s) if s else None, partial=bool(d.get("partial")), job=dict(d.get("job") or {}),
                   depths=[int(x) for x in d.get("depths") or []], measured=list(d.get("measured") or []),
                   not_measured=list(d.get("not_measured") or []), budget_s=float(d.get("budget_s") or 0),
                   elapsed_s=float(d.get("elapsed_s") or 0), created=str(d.get("created") or ""))


def profiles_dir() -> Path:
    from edgekit.paths import data_dir

    return data_dir() / "profiles"


def profile_path(model: Path) -> Path:
    """Where the profile of the GGUF at ``model`` lives (one per absolute path)."""
    resolved = str(Path(model).expanduser().resolve())
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:16]
    return profiles_dir() / f"{Path(model).stem}-{digest}.json"


def build_identity() -> dict[str, Any]:
    """llama-cpp-python's version and a hash of llama.cpp's system info (its CPU features and backends)."""
    from edgekit import _llama

    info = _llama.system_info()
    return {"llama_cpp_python": _llama.bindings_version(), "system_info_sha256": hashlib.sha256(info.encode()).hexdigest()[:16]}


def current_key(path: Path) -> dict[str, Any]:
    """The key a profile of ``path`` must carry to be used here and now."""
    device, build = device_and_build()
    from edgekit.gguf_check import model_identity

    return {"device_id": device, "model": model_identity(path), "build": dict(build)}


@functools.cache
def device_and_build() -> tuple[str, dict[str, Any]]:
    """This device's id and the llama.cpp build (:func:`build_identity`), worked out once per process
    (every load looks a profile up). Don't change the returned dict: copy it."""
    from edgekit.device import fingerprint

    return fingerprint()["device_id"], build_identity()


def read(path: Path) -> Profile | None:
    """The profile stored at ``path``; None if there is none or it isn't readable as one."""
    try:
        d = json.loads(path.read_text())
        if d.get("schema") != SCHEMA or d.get("schema_version") != SCHEMA_VERSION:
            return None
        return Profile.from_dict(d)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write(profile: Profile, path: Path | None = None) -> Path:
    """Write ``profile`` atomically (a reader never sees half a file); return its path."""
    from edgekit.atomic import atomic_output

    path = path or profile_path(Path(profile.model))
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(profile.as_dict(), indent=2) + "\n")
    return path


def mismatch(stored: dict[str, Any], current: dict[str, Any]) -> str:
    """Why a stored key doesn't match (empty if it does)."""
    if stored.get("device_id") != current["device_id"]:
        return "it was measured on another device"
    if stored.get("build") != current["build"]:
        return "it was measured with another llama.cpp build"
    if stored.get("model") != current["model"]:
        return "the model file has changed since"
    return ""


def lookup(path: Path) -> tuple[Profile | None, str]:
    """The valid profile of the model at ``path`` and a note.

    (profile, "") when one matches this device, file and build; (None, note) when a profile
    exists but can't be used (stale, partial, unreadable); (None, "") when there is none.
    """
    where = profile_path(path)
    if not where.exists():
        return None, ""
    profile = read(where)
    if profile is None:
        return None, f"ignored the tuned profile {where.name}: it isn't readable; run `edgekit tune` again"
    why = mismatch(profile.key, current_key(path))
    if why:
        return None, f"ignored the tuned profile of {path.name}: {why}; run `edgekit tune` again"
    if profile.partial:  # a checkpoint to continue from, not a result
        return None, (f"ignored the tuned profile of {path.name}: tuning was interrupted; run `edgekit tune` "
                      "again to finish it")
    return profile, ""


# -- the recipe speed table (written by edgekit.bench.recipe_speed, read by the converter's auto recipe) --

RECIPE_SPEED_SCHEMA = "edgekit.recipe_speed"


def recipe_speed_path(device: str | None = None) -> Path:
    """Where this device's (or ``device``'s) recipe speed table lives."""
    return profiles_dir() / f"recipe-speed-{device or device_and_build()[0]}.json"


def read_recipe_speeds() -> dict[str, float] | None:
    """{recipe: decode tokens/s} measured on this device with this llama.cpp build, or None."""
    if not any(profiles_dir().glob("recipe-speed-*.json")):  # nothing stored: don't start llama.cpp to find out
        return None
    path = recipe_speed_path()
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if table.get("schema") != RECIPE_SPEED_SCHEMA or table.get("build") != device_and_build()[1]:
        return None
    recipes = table.get("recipes") or {}
    speeds = {name: float(row["tg_ts"]) for name, row in recipes.items() if isinstance(row, dict) and row.get("tg_ts")}
    return speeds or None


def write_recipe_speeds(recipes: dict[str, dict[str, Any]], model: str, repacked: bool | None = None) -> Path:
    """Store ``{recipe: {"tg_ts", "pp_ts"}}`` for this device and build (atomically); return the path."""
    from edgekit.atomic import atomic_output

    device, build = device_and_build()
    table = {"schema": RECIPE_SPEED_SCHEMA, "device_id": device, "build": dict(build), "model": model,
             "repacked_weights": repacked, "recipes": recipes,
             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = recipe_speed_path(device)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(table, indent=2) + "\n")
    return path
