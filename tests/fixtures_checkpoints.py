"""Session fixtures for Hugging Face test checkpoints (imported by conftest.py)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory, qwen2_vocab_gguf):
    """A tiny Qwen2ForCausalLM (2 layers, hidden 64, bf16, tied, 4.x config) with the real Qwen2 vocabulary."""
    from edgekit.samples.checkpoints import random_qwen2_checkpoint

    return random_qwen2_checkpoint(tmp_path_factory.mktemp("tiny-qwen2") / "tiny-qwen2", qwen2_vocab_gguf)


def with_config(src, dst, **changes):
    """A copy of checkpoint ``src`` (weights symlinked) whose config.json has ``changes``."""
    return with_edited(src, dst, "config.json", lambda config: config.update(changes))


def with_edited(src, dst, name, edit):
    """A copy of checkpoint ``src`` (its other files symlinked) whose JSON file ``name`` is changed in place by
    ``edit(obj)``."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name != name:
            (dst / f.name).symlink_to(f)
    obj = json.loads((src / name).read_text(encoding="utf-8"))
    edit(obj)
    (dst / name).write_text(json.dumps(obj), encoding="utf-8")
    return dst
