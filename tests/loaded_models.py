"""The models the runtime tests share (no tests here): one SmolLM2 load per test session."""

from __future__ import annotations

import functools

SYSTEM = "You are a helpful AI assistant."
QUESTION = "What is the capital of France?"
# Two greedy streams may part at a position where the two best log-probabilities lie this close (see
# assert_same_or_near_tie).
NEAR_TIE = 0.1


@functools.cache
def smol(n_ctx: int = 2048, kv_cache: str = "auto"):
    """SmolLM2-135M-Instruct (real weights), loaded once per (n_ctx, kv_cache) for the whole session.

    It keeps no persistent prompt cache: tests that count reused prompt tokens see the live KV cache only,
    whatever earlier tests prefilled (tests/test_prompt_cache.py covers the disk cache)."""
    import edgekit
    from edgekit.samples.assets import smollm2_gguf

    return edgekit.load(smollm2_gguf(), n_ctx=n_ctx, kv_cache=kv_cache, seed=1, prompt_cache="off")


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


def no_eog(m) -> dict[int, float]:
    """A logit_bias that bans the end-of-generation tokens, so a stream runs until max_tokens."""
    return {t: -100.0 for t in range(m.n_vocab) if m.is_eog(t)}


def assert_same_or_near_tie(solo_steps, steps) -> None:
    """``steps`` (a greedy stream's Steps) are ``solo_steps`` (the same call run alone, with ``logprobs=2``),
    or a prefix of them, up to a near-tie.

    llama.cpp computes a batch of several sequences with other kernels than a batch of one (other matmul
    shapes, so other rounding), so a stream may leave the solo path where the solo run's two best
    log-probabilities lie within NEAR_TIE; from there on the two are not compared.
    """
    solo = [s.token for s in solo_steps if s.token >= 0]
    got = [s.token for s in steps if s.token >= 0]
    i = next((i for i, (a, b) in enumerate(zip(solo, got, strict=False)) if a != b), None)
    if i is None:
        assert len(got) <= len(solo), f"{len(got)} tokens, but the solo run ended after {len(solo)}"
        return
    top = solo_steps[i].top_logprobs
    assert top[0][1] - top[1][1] < NEAR_TIE, f"streams differ at token {i}, which is no near-tie: {top[:2]}"


def llama_cpp_python_greedy(llm, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy tokens llama-cpp-python's ``Llama`` generates after ``prompt_ids``: at most ``n``, stopping
    before an end-of-generation token (the like-for-like anchor of the runtime tests)."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    out: list[int] = []
    for token in llm.generate(prompt_ids, temp=0.0):
        if llama_cpp.llama_vocab_is_eog(vocab, token) or len(out) == n:
            break
        out.append(token)
    return out
