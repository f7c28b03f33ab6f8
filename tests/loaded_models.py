"""The models the runtime tests share (no tests here): one SmolLM2 load per test session."""

from __future__ import annotations

import functools

SYSTEM = "You are a helpful AI assistant."
QUESTION = "What is the capital of France?"


@functools.cache
def smol(n_ctx: int = 2048, kv_cache: str = "auto"):
    """SmolLM2-135M-Instruct (real weights), loaded once per (n_ctx, kv_cache) for the whole session."""
    import edgekit
    from edgekit.samples.assets import smollm2_gguf

    return edgekit.load(smollm2_gguf(), n_ctx=n_ctx, kv_cache=kv_cache, seed=1)


@functools.cache
def tiny_qwen2_gguf(quant: str = "q8_0"):
    """A tiny random-weight Qwen2 (real Qwen2 vocabulary, 32k trained context), converted by edgekit once."""
    import tempfile
    from pathlib import Path

    from edgekit.convert import convert
    from edgekit.samples.assets import qwen2_vocab
    from edgekit.samples.checkpoints import random_qwen2_checkpoint

    root = Path(tempfile.mkdtemp(prefix="edgekit-tiny-qwen2-"))
    ckpt = random_qwen2_checkpoint(root / "ckpt", qwen2_vocab(), layers=2, hidden=128, heads=4, kv_heads=2,
                                   intermediate=128)
    return ckpt, convert(ckpt, out=root / "gguf", quant=(quant,))[0].path
