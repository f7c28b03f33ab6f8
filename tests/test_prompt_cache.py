"""The persistent prompt cache (edgekit/runtime/prompt_cache.py, docs/prompt-cache.md).

A "new process" is simulated in the fast tests by ``Model.reset()`` (the live KV is gone, only the
disk has the prompt) and done for real in the slow ones (a subprocess). Greedy identity is checked
against the same model with the cache off, token for token; speculation is off so that only the
cache differs between the two runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from loaded_models import tiny_qwen2_gguf

from edgekit.errors import PromptCacheWarning
from edgekit.runtime import prompt_cache as pc

N_OUT = 4


@pytest.fixture(scope="module")
def tiny():
    """The tiny Qwen2, loaded once for the module with the cache off (tests attach their own)."""
    import edgekit

    _, path = tiny_qwen2_gguf()
    m = edgekit.load(path, n_ctx=1024, seed=1, speculative="off", prompt_cache="off")
    yield m
    m.close()


def prompt(n: int, salt: int = 0) -> list[int]:
    """``n`` ordinary token ids, different for each ``salt``."""
    return [1000 + (i * 7 + salt * 131) % 5000 for i in range(n)]


def greedy(m, tokens: list[int]):
    m.reset()  # a new process: nothing of the prompt is in the live KV
    return m.generate(tokens, max_tokens=N_OUT, temperature=0, speculative="off")


def cache_for(m, directory: Path, budget: int = 1 << 30) -> pc.PromptCache:
    from edgekit.runtime.prompt_cache import PromptCache, identity_key

    cache = PromptCache(directory, budget, identity_key(m.path, type_k=m.type_k, type_v=m.type_v,
                                                        flash_attn=m.flash_attn), model_file=m.path.name)
    m.attach_prompt_cache(cache)
    return cache


def reference(m, tokens: list[int]) -> list[int]:
    saved = m.prompt_cache
    m.attach_prompt_cache(None)
    try:
        return greedy(m, tokens).tokens
    finally:
        m.attach_prompt_cache(saved)


def snapshots(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{pc.SUFFIX}"))


def test_restore_equal_longer_and_shorter_prompts_give_the_same_tokens(tiny, tmp_path):
    base = prompt(400)
    cache = cache_for(tiny, tmp_path / "pc")
    first = greedy(tiny, base)
    assert first.stats.disk_tokens == 0
    cache.flush()
    assert len(snapshots(tmp_path / "pc")) == 1
    cases = {"equal": base, "longer": base + prompt(100, salt=1), "shorter": base[:300]}
    for name, tokens in cases.items():
        want = reference(tiny, tokens)
        got = greedy(tiny, tokens)
        assert got.tokens == want, name
        s = got.stats
        # a snapshot longer than the prompt is cut back to it; one token is always prefilled for its logits
        assert s.disk_tokens == min(len(tokens), len(base)) - (name != "longer"), name
        assert s.disk_tokens + s.new_prompt_tokens + s.cached_tokens == len(tokens)
        assert s.disk_restore_s > 0
    assert cache.counters.hits == 3 and cache.counters.bytes_read > 0
    cache.flush()
    assert len(snapshots(tmp_path / "pc")) == 1  # every later prompt was covered: nothing new kept


def test_short_prompts_are_not_kept_and_the_live_kv_is_preferred(tiny, tmp_path):
    cache = cache_for(tiny, tmp_path / "pc")
    tiny.generate(prompt(pc.MIN_TOKENS - 1), max_tokens=4, temperature=0)
    cache.flush()
    assert snapshots(tmp_path / "pc") == []
    long = prompt(400, salt=2)
    greedy(tiny, long)
    again = tiny.generate(long, max_tokens=4, temperature=0)  # same process: the slot's live KV covers it
    assert again.stats.disk_tokens == 0 and again.stats.cached_tokens == len(long) - 1


# Python's audit events for the file operations the cache could make (the snapshot reads and writes, the
# directory listing, renames, deletions, LRU touches); os.stat isn't audited, and the cache never needs it alone.
FILE_EVENTS = {"open", "os.scandir", "os.listdir", "os.remove", "os.rename", "os.utime", "os.chmod", "os.mkdir",
               "os.rmdir", "os.truncate", "tempfile.mkstemp", "shutil.rmtree"}
_WATCHED: list[tuple[str, list]] = []  # (directory, the events seen under it) while a test watches


def _audit(event: str, args: tuple) -> None:
    if not _WATCHED or event not in FILE_EVENTS:
        return
    for arg in args[:2]:
        if isinstance(arg, (str, bytes, os.PathLike)):
            path = os.fsdecode(os.fspath(arg))
            for directory, seen in _WATCHED:
                if path.startswith(directory):
                    seen.append((event, path))


@contextlib.contextmanager
def file_access(directory: Path):
    """The file operations (Python's audit events, from any thread) on ``directory`` inside the block."""
    if not getattr(sys, "_edgekit_test_audit", False):
        sys.addaudithook(_audit)  # a hook can't be removed: it is added once and idles outside the block
        sys._edgekit_test_audit = True
    seen: list = []
    _WATCHED.append((str(directory), seen))
    try:
        yield seen
    finally:
        _WATCHED.pop()


def test_a_short_prompt_touches_no_file_of_the_cache(tiny, tmp_path):
    """A run with no long prompt costs the cache one length check: no lookup, no listing, no write."""
    d = tmp_path / "pc"
    cache = cache_for(tiny, d)
    long = prompt(400, salt=70)
    greedy(tiny, long)
    cache.flush()
    listing = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in snapshots(d)}
    assert len(listing) == 1
    counters = dataclasses.replace(cache.counters)
    with file_access(d) as seen:
        greedy(tiny, prompt(8, salt=71))
        # as long as a prompt may be without a lookup, and it shares the kept snapshot's first tokens
        greedy(tiny, long[: pc.MIN_GAIN])
        tiny.generate(long[: pc.MIN_GAIN] + prompt(pc.MIN_GAIN - 2, salt=72), max_tokens=N_OUT, temperature=0)
        cache.flush()
    assert seen == []
    assert cache.counters == counters and cache.enabled
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in snapshots(d)} == listing
    with file_access(d) as seen:  # one token longer, the prompt is looked up: the watch sees it
        got = greedy(tiny, long[: pc.MIN_GAIN + 1])
    assert ("os.scandir", str(d)) in seen and got.stats.disk_tokens == pc.MIN_GAIN


@pytest.mark.slow
def test_exact_only_memory_restores_only_whole_snapshots(tiny, tmp_path):
    base = prompt(400, salt=3)
    cache = cache_for(tiny, tmp_path / "pc")
    greedy(tiny, base)
    cache.flush()
    held = tiny.cached_tokens  # the snapshot holds the prompt and its answer
    cache.cut_back = 0  # as for recurrent memory
    assert greedy(tiny, base[:300]).stats.disk_tokens == 0  # it would need the snapshot cut back
    follow = held + prompt(50, salt=5)  # a follow-up turn extends the snapshot exactly
    want = reference(tiny, follow)
    got = greedy(tiny, follow)
    assert got.tokens == want and got.stats.disk_tokens == len(held)


def _rewrite(path: Path, change) -> None:
    """Rewrite a snapshot with ``change(header)`` applied and a valid checksum (a well-formed foreign file)."""
    raw = path.read_bytes()
    magic, hlen, plen, _ = pc._PREFIX.unpack_from(raw)
    header = json.loads(raw[pc._PREFIX.size : pc._PREFIX.size + hlen])
    change(header)
    new = json.dumps(header).encode()
    payload = raw[pc._PREFIX.size + hlen :]
    digest = hashlib.sha256(new + payload).digest()
    path.write_bytes(pc._PREFIX.pack(magic, len(new), plen, digest) + new + payload)


def _flip_payload_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0x40
    path.write_bytes(bytes(raw))


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


DAMAGE = {
    "flipped payload byte": _flip_payload_byte,
    "truncated": lambda p: os.truncate(p, p.stat().st_size // 2),
    "another model": lambda p: _rewrite(p, lambda h: h["key"]["model"].update(size=h["key"]["model"]["size"] + 1)),
    "another KV type": lambda p: _rewrite(p, lambda h: h["key"].update(type_k="q8_0", type_v="q8_0")),
    "empty": lambda p: p.write_bytes(b""),
    "a directory": _directory,
}


@pytest.mark.parametrize("damage", [d if d == "flipped payload byte" else pytest.param(d, marks=pytest.mark.slow)
                                    for d in DAMAGE])
def test_a_bad_snapshot_is_never_used_and_warns_once(tiny, tmp_path, damage):
    base = prompt(400, salt=6)
    cache = cache_for(tiny, tmp_path / "pc")
    greedy(tiny, base)
    cache.flush()
    (path,) = snapshots(tmp_path / "pc")
    DAMAGE[damage](path)
    want = reference(tiny, base)
    cache2 = cache_for(tiny, tmp_path / "pc")  # a new process: an empty index
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = greedy(tiny, base)
        again = greedy(tiny, base)
    cache2.flush()
    assert got.tokens == want and again.tokens == want
    assert got.stats.disk_tokens == 0
    ours = [w for w in caught if issubclass(w.category, PromptCacheWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert path.name in str(ours[0].message)
    if damage == "a directory":
        assert path.is_dir()  # skipped, not removed: it isn't ours to delete
    else:
        # deleted; the second run kept a good snapshot under the same name
        assert path.is_file() and pc.read_header(path)[0]["key"] == cache2.key
    assert cache2.enabled


@pytest.mark.slow
def test_budget_evicts_the_least_recently_used(tiny, tmp_path):
    d = tmp_path / "pc"
    cache = cache_for(tiny, d)
    greedy(tiny, prompt(400, salt=10))
    cache.flush()
    size = snapshots(d)[0].stat().st_size
    cache.budget = int(2.5 * size)  # two snapshots fit

    def kept() -> list[list[int]]:
        assert sum(p.stat().st_size for p in snapshots(d)) <= cache.budget
        return sorted(pc.read_header(p)[0]["tokens"][:400] for p in snapshots(d))

    greedy(tiny, prompt(400, salt=11))
    cache.flush()
    assert kept() == sorted([prompt(400, salt=10), prompt(400, salt=11)])
    assert greedy(tiny, prompt(400, salt=10)).stats.disk_tokens > 0  # used again: now the most recent
    greedy(tiny, prompt(400, salt=12))
    cache.flush()
    assert kept() == sorted([prompt(400, salt=10), prompt(400, salt=12)])  # 11 was the least recently used
    greedy(tiny, prompt(400, salt=13))
    cache.flush()
    assert kept() == sorted([prompt(400, salt=12), prompt(400, salt=13)])
    assert cache.counters.evictions == 2


@pytest.mark.slow
def test_off_writes_nothing_and_auto_lives_under_edgekit_home(tmp_path, monkeypatch):
    import edgekit
    from edgekit.paths import cache_dir

    _, path = tiny_qwen2_gguf()
    home = Path(os.environ["EDGEKIT_HOME"])
    auto = pc.resolve_dir("auto")
    assert auto == cache_dir() / "prompts" and home in auto.parents
    with edgekit.load(path, n_ctx=1024, prompt_cache="off") as m:
        assert m.prompt_cache is None and "prompt cache off" in m.plan.summary()
        m.generate(prompt(400), max_tokens=4, temperature=0)
    monkeypatch.setenv("EDGEKIT_PROMPT_CACHE", "off")
    with edgekit.load(path, n_ctx=1024) as m:
        assert m.prompt_cache is None
        m.generate(prompt(400), max_tokens=4, temperature=0)
    assert not auto.exists() or not any(auto.iterdir())
    monkeypatch.setenv("EDGEKIT_PROMPT_CACHE", str(tmp_path / "env"))
    with edgekit.load(path, n_ctx=1024, prompt_cache_size="300M") as m:
        assert m.prompt_cache is not None and m.prompt_cache.directory == tmp_path / "env"
        assert f"prompt cache {tmp_path / 'env'} (budget 300 MiB)" in m.plan.summary()
        m.generate(prompt(400), max_tokens=4, temperature=0)
    (kept,) = snapshots(tmp_path / "env")  # written by close() at the latest
    assert kept.stat().st_mode & 0o777 == 0o600 and (tmp_path / "env").stat().st_mode & 0o777 == 0o700


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_directory_others_can_write_is_refused(tmp_path):
    import edgekit

    _, path = tiny_qwen2_gguf()
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o777)
    with pytest.warns(PromptCacheWarning, match="can be written by other users") as caught:
        m = edgekit.load(path, n_ctx=1024, prompt_cache=d)
    with m:
        assert len(caught) == 1 and m.prompt_cache is None
        m.generate(prompt(400), max_tokens=4, temperature=0)
    assert not any(d.iterdir())


@pytest.mark.slow
def test_a_failing_write_turns_the_cache_off_once(tiny, tmp_path):
    d = tmp_path / "pc"
    cache = cache_for(tiny, d)
    d.rmdir()
    d.write_bytes(b"")  # writes now fail (as on a read-only or full disk); root can't bypass this one
    want = reference(tiny, prompt(400, salt=20))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for salt in (20, 21):
            got = greedy(tiny, prompt(400, salt=salt))
            cache.flush()
            if salt == 20:
                assert got.tokens == want
    ours = [w for w in caught if issubclass(w.category, PromptCacheWarning)]
    assert len(ours) == 1 and "turned off" in str(ours[0].message)
    assert not cache.enabled


def test_the_index_finds_the_longest_shared_block_prefix(tmp_path):
    cache = pc.PromptCache(tmp_path / "pc", 1 << 20, {"k": 1})
    a, b = prompt(300), prompt(300)[:200] + prompt(100, salt=1)
    with cache._lock:
        cache._add(pc.Entry("a", a, 10))
        cache._add(pc.Entry("b", b, 5))
    found = cache._candidates(prompt(300) + [7], 300, n_ctx=4096)
    assert [(n, e.name) for n, e in found] == [(300, "a")]
    found = cache._candidates(b[:250] + prompt(60, salt=9), 310, n_ctx=4096)
    assert [(n, e.name) for n, e in found] == [(250, "b"), (200, "a")]  # found through the 3 blocks both share
    assert cache._candidates(prompt(300), 299, n_ctx=300) == []  # doesn't fit the context
    assert pc.block_hashes(a)[:3] == pc.block_hashes(b)[:3] and pc.block_hashes(a)[3] != pc.block_hashes(b)[3]


def test_metrics_and_cli_show_the_cache(tiny, tmp_path):
    from typer.testing import CliRunner

    from edgekit.cli import app
    from edgekit.serve.metrics import Metrics

    d = tmp_path / "pc"
    cache = cache_for(tiny, d)
    greedy(tiny, prompt(400, salt=30))
    cache.flush()
    greedy(tiny, prompt(400, salt=30))
    cache.flush()
    metrics = Metrics(1, 0)
    metrics.prompt_cache = lambda: cache
    text = metrics.render()
    assert "edgekit_prompt_cache_hits_total 1" in text and "edgekit_prompt_cache_misses_total 1" in text
    assert f"edgekit_prompt_cache_written_bytes_total {cache.counters.bytes_written}" in text
    runner = CliRunner()
    out = runner.invoke(app, ["cache", "list", "--dir", str(d)])
    assert out.exit_code == 0 and tiny.path.name in out.output and "1 snapshot," in out.output
    (d / f"0-bad{pc.SUFFIX}").write_bytes(b"junk")
    out = runner.invoke(app, ["cache", "prune", "--dir", str(d), "--size", "1G"])
    assert out.exit_code == 0 and "Deleted 1 unreadable and 0" in out.output
    out = runner.invoke(app, ["cache", "clear", "--dir", str(d)])
    assert out.exit_code == 0 and snapshots(d) == []


CHILD = """
import json, sys, warnings
import edgekit
warnings.simplefilter("always")
path, directory, prompts, size = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
out = []
with edgekit.load(path, n_ctx=1024, seed=1, speculative="off", prompt_cache=directory,
                  prompt_cache_size=None if size == "default" else size) as m:
    for p in prompts:
        m.reset()
        c = m.generate(p, max_tokens=N_OUT, temperature=0)
        out.append({"tokens": c.tokens, "disk": c.stats.disk_tokens})
print(json.dumps(out))
""".replace("N_OUT", str(N_OUT))


def _child(path: Path, directory: Path, prompts: list[list[int]], size: str = "default") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(directory), json.dumps(prompts), size],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> tuple[list[dict], str]:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1]), err


@pytest.mark.slow
def test_a_new_process_restores_and_answers_the_same(tiny, tmp_path):
    d = tmp_path / "pc"
    base = prompt(400, salt=40)
    cases = [base, base + prompt(80, salt=41), base[:320]]
    want = [reference(tiny, p) for p in cases]
    first, _ = _result(_child(tiny.path, d, [base]))
    assert first[0]["disk"] == 0 and first[0]["tokens"] == want[0]
    second, err = _result(_child(tiny.path, d, cases))
    assert [r["tokens"] for r in second] == want
    assert [r["disk"] for r in second] == [399, 400, 319]
    assert "PromptCacheWarning" not in err


def test_a_server_and_a_one_slot_chat_keep_their_snapshots_apart(tmp_path):
    """llama.cpp refuses a sequence state written by a context with another slot count. A 2-slot model (a
    server) and a 1-slot one (chat) sharing a directory each keep and restore their own snapshots: neither
    is shown, refuses or deletes the other's."""
    import edgekit

    _, path = tiny_qwen2_gguf()
    d, base = tmp_path / "pc", prompt(400, salt=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptCacheWarning)  # a refused snapshot warns: fail on it
        for slots, restored in ((2, 0), (1, 0), (2, 399), (1, 399)):
            with edgekit.load(path, n_ctx=1024, slots=slots, seed=1, speculative="off", prompt_cache=d) as m:
                out = m.generate(base, max_tokens=N_OUT, temperature=0)
                m.prompt_cache.flush()
            assert out.stats.disk_tokens == restored, (slots, restored)
    assert len(snapshots(d)) == 2  # one per slot count, both kept


@pytest.mark.slow
def test_two_processes_share_one_directory(tiny, tmp_path):
    d = tmp_path / "pc"
    prompts = [prompt(400, salt=s) for s in (50, 51, 52, 50, 53, 51, 52, 50)]
    want = [reference(tiny, p) for p in prompts]
    # a budget of about three snapshots: the processes also evict files the other may be reading
    one = _child(tiny.path, d, prompts, "650K")
    two = _child(tiny.path, d, prompts[::-1], "650K")
    (r1, e1), (r2, e2) = _result(one), _result(two)
    assert [r["tokens"] for r in r1] == want and [r["tokens"] for r in r2] == want[::-1]
    assert "PromptCacheWarning" not in e1 + e2  # no torn or foreign file was ever seen
    assert sum(r["disk"] > 0 for r in r1 + r2) >= 2  # prompts seen before came from the disk
    for p in snapshots(d):
        pc.read_header(p)  # every file left is whole


@pytest.mark.slow
def test_chat_turns_restore_across_processes():
    """A SmolLM2 chat: turn 2 in a "new process" comes from the snapshot turn 1 left, with the same answer."""
    import edgekit
    from edgekit.samples.assets import smollm2_gguf

    system = " ".join(f"Rule {i}: be kind to the number {i}." for i in range(40))
    d = Path(os.environ["EDGEKIT_HOME"]) / "turns"
    with edgekit.load(smollm2_gguf(), n_ctx=2048, seed=1, speculative="off", prompt_cache=d) as m, \
            edgekit.load(smollm2_gguf(), n_ctx=2048, seed=1, speculative="off", prompt_cache="off") as ref:
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": "What is rule 3?"}]
        a1 = m.chat(msgs, max_tokens=16, temperature=0)
        assert a1.tokens == ref.chat(msgs, max_tokens=16, temperature=0).tokens
        m.prompt_cache.flush()
        m.reset()
        ref.reset()
        msgs += [{"role": "assistant", "content": a1.text}, {"role": "user", "content": "And rule 7?"}]
        a2 = m.chat(msgs, max_tokens=16, temperature=0)
        assert a2.tokens == ref.chat(msgs, max_tokens=16, temperature=0).tokens
        assert a2.stats.disk_tokens >= len(m.chat_tokens(msgs[:2]))  # the first turn came from the disk


def test_a_stream_stopped_after_its_prompt_still_keeps_it(tiny, tmp_path):
    cache = cache_for(tiny, tmp_path / "pc")
    tiny.reset()
    stream = tiny.stream(prompt(400, salt=60), max_tokens=50, temperature=0)
    next(stream)  # the prompt is prefilled and a token came out; then the client goes away
    stream.close()
    cache.flush()
    (kept,) = snapshots(tmp_path / "pc")
    assert pc.read_header(kept)[0]["tokens"][:400] == prompt(400, salt=60)
    assert greedy(tiny, prompt(400, salt=60)).stats.disk_tokens == 399


def _metric(text: str, name: str) -> float:
    """The value of ``name`` in a Prometheus text page (0 if absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


# Six tokens: each answer's best token leads the next by at least 0.46 in log-probability (measured), far
# more than batching several streams and restoring instead of prefilling move it; later tokens come closer.
SERVE_OUT = 6


@pytest.mark.slow
def test_a_restarted_server_with_two_slots_restores_and_answers_the_same(smollm2_gguf, tmp_path):
    """Three concurrent requests on two slots share a long system prompt and differ after it. Each answer
    equals a single-stream run with the cache off, in a first server and in a second one that restores
    the prefix from the disk (its /metrics say so)."""
    import threading

    import httpx
    from serve_process import ServerProcess

    import edgekit

    system = " ".join(f"Rule {i}: be kind to the number {i}." for i in range(40))
    questions = ["What is rule 3?", "What is rule 17?", "Which rule mentions the number 29?"]
    requests = [[{"role": "system", "content": system}, {"role": "user", "content": q}] for q in questions]
    with edgekit.load(smollm2_gguf, n_ctx=1024, slots=2, threads=2, seed=1, speculative="off",
                      prompt_cache="off") as ref:
        shared = len(ref.chat_tokens(requests[0][:1]))
        assert shared > pc.MIN_TOKENS + pc.BLOCK  # above the save threshold, with room to spare
        want = []
        for msgs in requests:
            ref.reset()
            c = ref.chat(msgs, max_tokens=SERVE_OUT, temperature=0)
            want.append((c.text, len(c.tokens)))
    assert all(n > 0 for _, n in want) and len({text for text, _ in want}) == len(want)

    d = tmp_path / "pc"

    def serve_and_ask() -> tuple[list[tuple[str, int]], str]:
        srv = ServerProcess(smollm2_gguf, "--slots", "2", "--ctx", "1024", "--threads", "2", "--prompt-cache", str(d),
                            home=tmp_path / "home").wait_ready()
        try:
            got: list[tuple[str, int] | None] = [None] * len(requests)
            barrier = threading.Barrier(len(requests))
            with httpx.Client(base_url=srv.url, timeout=120) as http:
                model_id = http.get("/v1/models").json()["data"][0]["id"]

                def ask(i: int) -> None:
                    barrier.wait(60)
                    r = http.post("/v1/chat/completions", json={"model": model_id, "messages": requests[i],
                                                                "max_tokens": SERVE_OUT, "temperature": 0})
                    assert r.status_code == 200, r.text
                    body = r.json()
                    got[i] = (body["choices"][0]["message"]["content"], body["usage"]["completion_tokens"])

                threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(300)
                metrics = http.get("/metrics").text
            assert srv.stop() == 0, srv.output()  # SIGTERM: the queued snapshots are written before it exits
        finally:
            srv.kill()
        assert "PromptCacheWarning" not in srv.output()
        return got, metrics

    first, metrics = serve_and_ask()
    assert first == want
    assert _metric(metrics, "edgekit_prompt_cache_hits_total") == 0 and snapshots(d)
    second, metrics = serve_and_ask()
    assert second == want
    # both slots started empty in the new process: each restored the shared prefix from the disk
    assert _metric(metrics, "edgekit_prompt_cache_hits_total") >= 2
    assert _metric(metrics, "edgekit_prompt_cache_restored_tokens_total") >= 2 * (shared - pc.BLOCK)
    assert _metric(metrics, "edgekit_prompt_cache_read_bytes_total") > 0


@pytest.mark.slow
@pytest.mark.parametrize("slots", [1, 2])
def test_a_sliding_window_model_restores_what_its_saved_cells_allow(tmp_path, slots):
    """Gemma 3 270M (real weights, a 512-token sliding window on five layers in six) past its window.

    With several slots a snapshot is the slot's sequence, which llama.cpp saves with only the last window
    of the sliding-window layers' cells: it can be restored for a prompt that extends it, or equals it (its
    last token evaluated again), but not cut back further. A one-slot context saves the whole context
    (every cell), which any prefix can use. A new Model (a fresh context: the snapshot comes from the disk)
    answers each prompt as the model with the cache off does. The last case is the one that goes wrong if
    the rule is broken: a prompt that parts from the restored snapshot inside it, in the same slot, must
    not reuse cells that aren't there (with several slots it is prefilled from the start).
    """
    import edgekit
    from edgekit.samples.assets import gemma3_270m_gguf

    path = gemma3_270m_gguf()
    text = " ".join(f"Item {i} is a {('red', 'blue', 'green', 'small', 'large')[i % 5]} "
                    f"{('cat', 'dog', 'box', 'cup', 'pen')[i * 3 % 5]} on shelf {i % 7}." for i in range(90))
    d = tmp_path / "pc"
    n_out = 8

    def greedy_(m, tokens, reset=True):
        if reset:
            m.reset()
        return m.generate(tokens, max_tokens=n_out, temperature=0, speculative="off")

    with edgekit.load(path, n_ctx=2048, seed=1, speculative="off", prompt_cache="off") as ref:
        base = ref.tokenize(text)
        # the list goes on: the restored run and the prefilled one compute in other batch shapes, and this
        # continuation's best tokens lead by more than their logits differ then (a question's may not)
        more = ref.tokenize(" Item 90 is a red cat on shelf 6. Item 91 is a", add_special=False)
        question = ref.tokenize(" Question: which shelf holds item 42? Answer: item 42 is on shelf", add_special=False)
        assert len(base) > 2 * 512
        load = {"n_ctx": 2048, "slots": slots, "seed": 1, "speculative": "off", "prompt_cache": d}
        with edgekit.load(path, **load) as writer:
            assert writer.prompt_cache.n_swa == 512
            assert writer.prompt_cache.cut_back == (None if slots == 1 else 1)
            greedy_(writer, base)
        (kept,) = snapshots(d)
        held = pc.read_header(kept)[0]["tokens"]  # the prompt and its answer
        cases = {"equal": held, "longer": held + more, "shorter": base[:300] + question}
        want = {name: greedy_(ref, tokens).tokens for name, tokens in cases.items()}

        with edgekit.load(path, **load) as reader:
            got = {name: greedy_(reader, tokens) for name, tokens in cases.items()}
            assert {name: c.tokens for name, c in got.items()} == want
            assert got["equal"].stats.disk_tokens == len(held) - 1  # the last token is evaluated again
            assert got["longer"].stats.disk_tokens == len(held)
            # cut back by 800 tokens: only a whole state holds the window layers' cells that far back
            assert got["shorter"].stats.disk_tokens == (300 if slots == 1 else 0)
            greedy_(reader, cases["longer"])  # the slot holds the restored snapshot (and its answer)
            again = greedy_(reader, cases["shorter"], reset=False)
            assert again.tokens == want["shorter"]
            assert again.stats.cached_tokens == (300 if slots == 1 else 0) and again.stats.disk_tokens == 0
