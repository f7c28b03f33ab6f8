"""``edgekit models``: list the local model store (GGUF files addressed by name)."""

from __future__ import annotations


def models() -> None:
    """List the models in the local store; pass a name from it to chat, bench or load()."""
    from edgekit.store import list_models, models_dir

    found = list_models()
    for path in found:
        print(f"{path.stem}  {path.stat().st_size / 2**20:.0f} MiB")
    if not found:
        print(f"No stored models. Put .gguf files in {models_dir()} to use them by name.")
