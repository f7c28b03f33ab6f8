"""Model metadata (name, basename, size label, license, source) and default file names."""

from __future__ import annotations

from pathlib import Path

import gguf

from edgekit import __version__

CONVERTER = f"edgekit {__version__}"


def model_metadata(checkpoint: Path, n_params: int, repo_id: str | None, url: str | None) -> gguf.Metadata:
    """Gather authorship metadata with gguf-py's heuristics (model card, config, repo name)."""
    meta = gguf.Metadata.load(model_path=checkpoint, total_params=n_params)
    model_id = repo_id or checkpoint.name
    _full, org, basename, finetune, version, size = gguf.Metadata.get_model_id_components(model_id, n_params)
    if repo_id or not meta.basename:
        meta.name = meta.name if meta.name and not repo_id else (model_id.split("/")[-1])
        meta.basename = basename or meta.basename
        meta.finetune = finetune if finetune is not None else meta.finetune
        meta.version = version if version is not None else meta.version
        meta.organization = meta.organization or org
    if not meta.name:
        meta.name = checkpoint.name
    meta.size_label = meta.size_label or size or gguf.size_label(n_params, 0, 0, 0)
    if url:
        meta.repo_url = meta.repo_url or url
        meta.source_url = url
    return meta


def default_filename(meta: gguf.Metadata, type_name: str) -> str:
    """``<basename>-<size>-<TYPE>.gguf``, e.g. ``qwen2.5-0.5B-Q4_K_M.gguf``."""
    base = (meta.basename or meta.name or "model").strip().replace(" ", "-").replace("/", "-")
    size = (meta.size_label or "").strip()
    parts = [base] + ([size] if size and size.lower() not in base.lower() else []) + [type_name.upper()]
    return "-".join(parts) + ".gguf"
