"""The runtime on each new architecture: greedy output equal to llama-cpp-python like for like, speculation
lossless, follow-up turns and saved state exact, on the tiny checkpoints of tests/test_models.py.

Gemma 3's sliding-window layers are the hard case: with a KV cache of only the last window, removing
rejected drafts, reusing a prefix or restoring a state could compute something else. edgekit keeps
llama.cpp's default full-size SWA cache (``swa_full``), so every layer keeps every cell and these paths
work as on any model; the memory plan counts every layer at n_ctx, which is what llama.cpp allocates.
The Gemma 3 tests rewind far past its 8-token window, so they would fail with a window-sized cache.
A saved state is the exception: llama.cpp writes only the window layers' last window, so a restored
state may be extended but not cut back (``_llama.window_covers``), which the saved-state case checks.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest
from loaded_models import llama_cpp_python_greedy

import edgekit
from edgekit.runtime import speculative

ARCHS = ["qwen3", "llama3", "smollm3", "gemma3", "phi3"]
PROMPT = ("The lighthouse on Marrow Point was built in 1874 from granite quarried on the island itself. "
          "Its lamp burned whale oil until 1902, when the keepers switched to kerosene.")
N_CTX = 512


@functools.cache
def _gguf(arch: str):
    import tempfile
    from pathlib import Path

    from edgekit.convert import convert
    from edgekit.samples.checkpoints import cached_random_checkpoint

    [f16] = convert(cached_random_checkpoint(arch), out=Path(tempfile.mkdtemp(prefix=f"edgekit-{arch}-")), quant="f16")
    return f16.path


def _load(arch: str):
    m = edgekit.load(_gguf(arch), n_ctx=N_CTX, kv_cache="f16", flash_attn=True, threads=2, n_ubatch=512, seed=1)
    # price drafts by the prior curve, so drafting doesn't depend on this CPU's timings (as test_speculative.py does)
    curve = speculative.CostCurve(timed=False)
    m._engine.cost_curve = curve
    return m


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_equals_llama_cpp_python(arch):
    from llama_cpp import Llama

    with _load(arch) as m:
        ours = m.generate(PROMPT, temperature=0, max_tokens=32, speculative="off")
        prompt_ids = m.tokenize(PROMPT)
    llm = Llama(str(_gguf(arch)), n_ctx=N_CTX, n_batch=512, n_ubatch=512, n_threads=2, flash_attn=True,
                verbose=False, seed=1)
    try:
        assert llm.tokenize(PROMPT.encode(), add_bos=True, special=True) == prompt_ids
        theirs = llama_cpp_python_greedy(llm, prompt_ids, 32)
    finally:
        llm.close()
    assert len(ours.tokens) > 8
    assert ours.tokens == theirs


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gemma3", "smollm3", "phi3"])  # the ones whose random weights repeat
def test_speculation_follow_up_and_state_are_exact(arch, tmp_path):
    with _load(arch) as m:
        # speculation: the same tokens as one at a time (random weights soon repeat themselves, so drafts come;
        # they are all accepted, so rejection is covered by the rewinds below, which go much further back)
        m.reset()
        off = m.generate(PROMPT, temperature=0, max_tokens=64, speculative="off")
        cached_off = m.cached_tokens
        m.reset()
        on = m.generate(PROMPT, temperature=0, max_tokens=64, speculative="ngram")
        assert on.tokens == off.tokens
        assert m.cached_tokens == cached_off  # drafts past max_tokens left nothing behind
        assert on.stats.accepted_tokens > 0
        # a follow-up that extends the cache, and one that leaves it 40 tokens back (far past any window)
        longer = PROMPT + " " + on.text + " The last keeper left in 1989."
        follow = m.generate(longer, temperature=0, max_tokens=24, speculative="off")
        assert follow.stats.cached_tokens > 40
        ids = m.tokenize(PROMPT)
        branch = ids[:-40] + m.tokenize(" and the light has run by itself ever since", add_special=False)
        reused = m.generate(branch, temperature=0, max_tokens=24, speculative="off")
        assert reused.stats.cached_tokens == len(ids) - 40
        m.reset()
        assert m.generate(longer, temperature=0, max_tokens=24, speculative="off").tokens == follow.tokens
        m.reset()
        assert m.generate(branch, temperature=0, max_tokens=24, speculative="off").tokens == reused.tokens
        # saved state: restored, it continues exactly as the live cache did
        m.reset()
        m.generate(PROMPT, temperature=0, max_tokens=1, speculative="off")
        path = m.save_state(tmp_path / "s.state")
        live = m.generate(longer, temperature=0, max_tokens=24, speculative="off")
        m.reset()
        assert m.load_state(path) >= len(ids)
        again = m.generate(longer, temperature=0, max_tokens=24, speculative="off")
        assert again.stats.cached_tokens == live.stats.cached_tokens and again.tokens == live.tokens
        # restored, then left 40 tokens back: a one-slot context saves Gemma 3's whole state, every window
        # cell included, so the prefix is reused as on the others
        m.reset()
        m.load_state(path)
        branched = m.generate(branch, temperature=0, max_tokens=24, speculative="off")
        assert branched.tokens == reused.tokens
        assert branched.stats.cached_tokens == len(ids) - 40
    if arch == "gemma3":
        # with several slots a state is the slot's sequence, which llama.cpp saves with only the window
        # layers' last window: left 40 tokens back, nothing of it is reused, and the answer stays the same
        with edgekit.load(m.path, n_ctx=N_CTX, kv_cache="f16", flash_attn=True, threads=2, n_ubatch=512, seed=1,
                          slots=2, prompt_cache="off") as m2:
            m2.generate(PROMPT, temperature=0, max_tokens=1, speculative="off")
            path2 = m2.save_state(tmp_path / "s2.state")
            m2.reset()
            assert m2.load_state(path2) >= len(ids)
            branched = m2.generate(branch, temperature=0, max_tokens=24, speculative="off")
            assert branched.tokens == reused.tokens and branched.stats.cached_tokens == 0


@pytest.mark.slow
@pytest.mark.parametrize("arch, end_of_turn, marker", [
    ("qwen3", "<|im_end|>", "<|im_start|>assistant\n"),
    ("llama3", "<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("gemma3", "<|im_end|>", "<|im_start|>assistant\n"),
])
def test_chat_uses_the_models_template_and_stops_at_its_end_of_turn(arch, end_of_turn, marker):
    """Random weights never choose to end a turn, so a logit bias makes the end-of-turn token the first
    choice: generation must stop there, with nothing emitted, rather than running to max_tokens."""
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    with _load(arch) as m:
        assert m.render_chat(messages).endswith(marker)
        [eot] = m.tokenize(end_of_turn, add_special=False)
        plain = m.chat(messages, temperature=0, max_tokens=8)
        assert plain.finish_reason == "length"
        ended = m.chat(messages, temperature=0, max_tokens=8, logit_bias={eot: 100.0})
        assert ended.finish_reason == "eog" and ended.text == "" and eot not in ended.tokens


# Each tiny checkpoint's own chat template (its tokenizer_config.json's: Llama 3's for the Llama 3 vocabulary,
# the Qwen2 vocabulary's ChatML for the others), by the end-of-turn token it ends a turn with, the text it
# starts the answer with, and a control token of the same template that does NOT end generation.
OWN_TEMPLATE = {
    "llama3": ("<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|start_header_id|>"),
    **{arch: ("<|im_end|>", "<|im_start|>assistant\n", "<|im_start|>") for arch in ("qwen3", "smollm3", "gemma3", "phi3")},
}


def _chat_cli(arch: str, system: str, cache, *extra: str) -> dict:
    """``edgekit chat FILE -s SYSTEM -p QUESTION --json``: the real CLI in a subprocess, greedy, 8 tokens at most."""
    argv = [sys.executable, "-m", "edgekit", "chat", str(_gguf(arch)), "-s", system, "-p", "What is the capital of "
            "France?", "--temp", "0", "-n", "8", "--ctx", str(N_CTX), "--prompt-cache", str(cache), "--json", *extra]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert "chat template" not in out.stderr  # the model's own template: no fallback warning
    return json.loads(out.stdout)


def _evaluated(cache) -> list[int]:
    """The tokens the CLI's run evaluated (its prompt and answer), from the one prompt-cache snapshot it kept."""
    from edgekit.runtime.prompt_cache import read_header

    [snapshot] = cache.glob("*.ekpc")
    return read_header(snapshot)[0]["tokens"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_chat_cli_renders_its_own_template_and_stops_at_its_own_end_of_turn(arch, tmp_path):
    """``edgekit chat FILE -p`` on each architecture's converted file.

    What the CLI fed the model is read back from its prompt-cache snapshot (a system prompt of more than
    256 tokens makes the CLI keep one; it holds the prompt and the answer's tokens): it must be the
    model's own template rendered, token for token. Random weights never end a turn by themselves, so
    ``--logit-bias`` forces the end-of-turn token as the first choice: the answer must stop there, empty,
    with the token neither printed nor evaluated. Forcing a control token of the same template instead
    must not stop it (the stop set is the model's end-of-generation tokens, not every special token).
    """
    end_of_turn, marker, control = OWN_TEMPLATE[arch]
    system = " ".join([PROMPT] * 8)
    with _load(arch) as m:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": "What is the capital of France?"}]
        assert m.render_chat(messages).endswith(marker)
        want = m.chat_tokens(messages)
        [eot] = m.tokenize(end_of_turn, add_special=False)
        [ctl] = m.tokenize(control, add_special=False)
        assert m.is_eog(eot) and not m.is_eog(ctl)
    assert len(want) > 256  # long enough for the CLI to keep a snapshot

    ended = _chat_cli(arch, system, tmp_path / "ended", "--logit-bias", f"{eot}=100")
    assert ended["finish_reason"] == "eog" and ended["answer"] == "" and ended["stats"]["gen_tokens"] == 0
    assert _evaluated(tmp_path / "ended") == want

    going = _chat_cli(arch, system, tmp_path / "going", "--logit-bias", f"{ctl}=100")
    assert going["finish_reason"] == "length" and going["stats"]["gen_tokens"] == 8
    assert _evaluated(tmp_path / "going")[: len(want)] == want
