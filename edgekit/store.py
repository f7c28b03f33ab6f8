"""Resolve what the user calls a model to a GGUF file.

A model is one of:
- a GGUF path;
- a Hugging Face checkpoint directory, or a Hub repo id ``owner/name[@revision]``:
  converted once with :func:`edgekit.convert.convert` into
  ``cache_dir()/models/<key>/`` (key = source + revision + type) and reused after;
- a name from the local store: ``data_dir()/models/<name>.gguf``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from edgekit.errors import SourceError
from edgekit.paths import cache_dir, data_dir
from edgekit.progress import ProgressFn

# What `edgekit chat` runs when no model is given, and the type HF sources are converted to.
DEFAULT_MODEL = "terasut/gkd-qwen-2.5-0.5b-base_v4_from3b_eff32"
# What a checkpoint is converted to when the caller names no type: the fastest quantization
# recipe within the default KL-divergence budget (see the quality table in docs/quantization.md).
DEFAULT_QUANT = "auto"


def models_dir() -> Path:
    """The local store: GGUF files the user keeps, addressed by file stem."""
    path = data_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def list_models() -> list[Path]:
    """GGUF files in the local store, sorted by name."""
    return sorted(models_dir().glob("*.gguf"))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "model"


def _dir_fingerprint(directory: Path) -> str:
    """Changes when the checkpoint's files change, so an edited checkpoint is converted again."""
    h = hashlib.sha256(str(directory.resolve()).encode())
    for f in sorted(directory.iterdir()):
        if f.is_file() and (f.suffix in (".json", ".safetensors", ".model", ".txt") or f.name == "tokenizer.model"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def _converted(src: str, key: str, quant: str, progress: ProgressFn | None) -> Path:
    out_dir = cache_dir() / "models" / key
    existing = sorted(out_dir.glob("*.gguf")) if out_dir.is_dir() else []
    if existing:
        return existing[0]
    from edgekit.convert import convert

    files = convert(src, out=out_dir, quant=(quant,), progress=progress)
    return files[0].path


def resolve(model: str | Path, *, quant: str = DEFAULT_QUANT, progress: ProgressFn | None = None) -> Path:
    """The GGUF path for ``model`` (see module docstring), converting and caching if needed.

    Raises :class:`~edgekit.SourceError` when it is none of the accepted forms.
    """
    text = str(model)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    from edgekit.convert.recipes import get_recipe, is_recipe

    if is_recipe(quant):  # key the cache on the concrete recipe, not on "auto"
        quant = get_recipe(quant).name
    if path.is_dir():
        if (path / "config.json").is_file():
            key = f"{_safe(path.name)}-{_dir_fingerprint(path)}-{quant.lower()}"
            return _converted(str(path), key, quant, progress)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
        raise SourceError(f"{path} is neither a Hugging Face checkpoint (no config.json) nor holds one GGUF file",
                          "Pass a .gguf file or a checkpoint directory.")
    stored = models_dir() / (text if text.endswith(".gguf") else f"{text}.gguf")
    if "/" not in text and stored.is_file():
        return stored
    if text.endswith(".gguf") or text.startswith((".", "/", "~")):
        raise SourceError(f"{text} does not exist", "Check the path, or run `edgekit models` to list stored models.")
    from edgekit.convert.source import parse_repo_id, resolve_source

    parsed = parse_repo_id(text)
    if parsed is None:
        names = ", ".join(p.stem for p in list_models()) or "none"
        raise SourceError(f"no model named {text!r}",
                          f"Pass a GGUF path, a checkpoint dir or a Hub repo id; stored models: {names}.")
    repo_id, revision = parsed
    source = resolve_source(text, progress=progress)
    rev = source.commit or revision or "default"
    key = f"{_safe(repo_id)}-{_safe(str(rev))[:40]}-{quant.lower()}"
    return _converted(text, key, quant, progress)
