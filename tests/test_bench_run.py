"""edgekit bench on a real tiny model (SmolLM2-135M Q4_1): records, CLI, Ctrl-C, errors, llama-bench plumbing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from edgekit.bench import records
from edgekit.bench.runner import plan, run, suite_grid
from edgekit.bench.store import Store
from edgekit.errors import BenchError


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekit", "bench", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"}, **kw)


@pytest.fixture(scope="module")
def tiny_run(smollm2_gguf, tmp_path_factory):
    """One real quick run: pp32/tg8 at depths 0 and 64, one repetition, and an 8-token chat turn."""
    grid = suite_grid([str(smollm2_gguf)], "quick", n_prompt=(32,), n_gen=(8,), depths=(0, 64), reps=1, chat_gen=8)
    seen = []
    with pytest.MonkeyPatch.context() as mp:  # the per-test EDGEKIT_HOME isolation isn't active at module scope
        mp.setenv("EDGEKIT_HOME", str(tmp_path_factory.mktemp("home")))
        recs = list(run(grid, progress=lambda stage, done, total: seen.append((done, total)), bandwidth=30e9))
    return recs, seen


@pytest.mark.slow
def test_tiny_run_records(tiny_run, smollm2_gguf):
    recs, seen = tiny_run
    assert [r["name"] for r in recs] == ["pp32", "tg8", "pp32 @ d64", "tg8 @ d64", "chat8"]
    for r in recs:
        records.validate(json.loads(json.dumps(r)))
        assert r["engine"] == "edgekit" and r["model_filename"] == str(smollm2_gguf)
        assert r["model_type"].startswith("llama") and r["model_size"] > 50e6 and r["model_n_params"] > 100e6
        assert r["n_threads"] >= 1 and r["type_k"] == r["type_v"] == "f16" and r["flash_attn"] == 1
        assert r["n_ctx"] >= 64 + 32 and r["n_batch"] == 512 and r["load_s"] > 0
        assert r["rss_bytes"] > 50e6 and r["peak_rss_bytes"] >= r["rss_bytes"] * 0.9
        assert len(r["samples_ns"]) == len(r["samples_ts"]) == 1 and r["avg_ts"] > 0
        assert r["device"]["device_id"] == r["device_id"] and r["device"]["cores_logical"] > 0
    pp, tg = recs[0], recs[1]
    assert pp["avg_ts"] == pytest.approx(32e9 / pp["samples_ns"][0])
    # (No speed comparisons here: on a shared machine they are noise; speed belongs in benchmarks.)
    assert tg["n_gen"] == 8 and pp["n_prompt"] == 32
    assert tg["mem_bw_gbs"] == 30.0 and 0 < tg["efficiency"] < 1.5
    assert recs[3]["ceiling_ts"] < tg["ceiling_ts"]  # the KV cache at depth 64 adds bytes per token
    chat = recs[4]
    assert 0 < chat["ttft_p50_ms"] <= chat["e2e_p50_ms"] and chat["ttft_p95_ms"] >= chat["ttft_p50_ms"]
    assert chat["prompt_tokens"] > 20 and 1 <= chat["gen_tokens"][0] <= 8
    assert seen[-1][0] == seen[-1][1] == 5 * 2  # warm-up + 1 rep per test: the progress bar reaches its total


def test_quantized_v_without_flash_attention_is_skipped(smollm2_gguf):
    grid = suite_grid([str(smollm2_gguf)], "quick", kv_cache=("f16", "q8_0"), flash_attn=(True, False))
    groups, skipped = plan(grid)
    assert [(g.type_k, g.type_v, g.flash_attn) for g in groups] == [("f16", "f16", True), ("f16", "f16", False),
                                                                     ("q8_0", "q8_0", True)]
    assert len(skipped) == 1 and "needs flash attention" in skipped[0]
    # SmolLM2 was trained for 8192 tokens: the standard suite's 16k depth is skipped, not failed.
    groups, skipped = plan(suite_grid([str(smollm2_gguf)], "standard"))
    assert sorted({c.n_depth for c in groups[0].cases}) == [0, 4096] and groups[0].n_ctx <= 8192
    assert [s.split(": ")[0] for s in skipped] == ["SmolLM2-135M-Instruct.Q4_1.gguf pp512 @ d16384",
                                                   "SmolLM2-135M-Instruct.Q4_1.gguf tg128 @ d16384"]
    with pytest.raises(BenchError, match="unknown KV cache type"):
        plan(suite_grid([str(smollm2_gguf)], "quick", kv_cache=("q3",)))


@pytest.mark.slow
def test_cli_run_writes_jsonl_store_and_table(smollm2_gguf, tmp_path):
    out = tmp_path / "r.jsonl"
    res = _cli(str(smollm2_gguf), "-p", "16", "-n", "4", "-d", "0", "-r", "1", "--no-chat", "-q", "-o", str(out))
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["name"] for r in lines] == ["pp16", "tg4"]
    assert "pp16" in res.stdout and "tg4" in res.stdout and "t/s" in res.stdout
    with Store() as db:  # EDGEKIT_HOME is isolated per test by conftest
        assert db.count() == 2
    res = _cli("compare", "--by", "engine", "--format", "csv")
    assert res.returncode == 0 and "edgekit t/s" in res.stdout.splitlines()[0] and "tg4" in res.stdout


def _read_line(fd: int, buf: bytearray, timeout: float) -> bytes:
    """The next line from a pipe, waiting at most ``timeout`` seconds for it."""
    import select

    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, "no result line within the timeout"
        buf += os.read(fd, 1 << 16)
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(__import__("fcntl"), "F_SETPIPE_SZ"), reason="needs Linux pipes")
def test_ctrl_c_keeps_completed_results(smollm2_gguf, tmp_path):
    import fcntl

    # The results file is a FIFO holding one page: once the test stops reading, the run can't write more
    # than a page ahead, so it is surely still running (16 results) when Ctrl-C comes after the first one.
    out = tmp_path / "partial.jsonl"
    os.mkfifo(out)
    fd = os.open(out, os.O_RDWR | os.O_NONBLOCK)  # read+write: opening doesn't wait for the writer
    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 4096)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit", "bench", str(smollm2_gguf), "-p", "64", "-n", "32",
         "-d", "0,128,256,384,512,640,768,896", "-r", "3", "--no-chat", "-q", "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        buf = bytearray()
        lines = [_read_line(fd, buf, timeout=120)]  # ready: the first result is complete
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:  # drain: a run blocked on the FIFO can stop
            with contextlib.suppress(AssertionError):
                lines.append(_read_line(fd, buf, timeout=1))
        stdout, stderr = proc.communicate(timeout=60)
        with contextlib.suppress(BlockingIOError):
            buf += os.read(fd, 1 << 20)
        lines += [x for x in bytes(buf).split(b"\n") if x]
    finally:
        os.close(fd)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    kept = [records.validate(json.loads(x)) for x in lines]
    assert 1 <= len(kept) < 16 and kept[0]["name"] == "pp64"
    assert f"Interrupted: kept {len(kept)} completed result(s) in {out} and the results store." in stderr
    assert "Traceback" not in stderr and "Nothing partial" not in stderr and "pp64" in stdout


def test_bad_model_path_is_one_clear_line(tmp_path):
    res = _cli(str(tmp_path / "nope.gguf"), "--suite", "quick")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"Error: model not found: {tmp_path / 'nope.gguf'} Pass the path of a GGUF file (or a model name edgekit knows)."]
    res = _cli(str(tmp_path), "-d", "0,x")
    assert res.returncode == 1 and res.stderr.startswith("Error: -d must be comma-separated integers")


@pytest.mark.slow
def test_vs_llama_bench_interleaves_and_reports_ratio(smollm2_gguf, tmp_path):
    """The plumbing, with a stand-in llama-bench that reports 50 t/s (the real comparison is in the README)."""
    fake = tmp_path / "llama-bench"
    argv_log = tmp_path / "argv.txt"
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys\nopen({str(argv_log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "a = sys.argv\np, n = int(a[a.index('-p') + 1]), int(a[a.index('-n') + 1])\nns = int((p + n) / 50 * 1e9)\n"
        "print(json.dumps({'build_commit': 'abc', 'model_type': 'x', 'model_size': 1, 'model_n_params': 1,"
        " 'n_batch': 512, 'n_ubatch': 512, 'n_threads': 2, 'type_k': 'f16', 'type_v': 'f16', 'flash_attn': 1,"
        " 'n_prompt': p, 'n_gen': n, 'n_depth': 0, 'test_time': 't', 'avg_ns': ns, 'stddev_ns': 0,"
        " 'avg_ts': 50.0, 'stddev_ts': 0.0, 'samples_ns': [ns], 'samples_ts': [50.0]}))\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "vs.jsonl"
    res = _cli(str(smollm2_gguf), "-p", "16", "-n", "4", "-d", "0", "-r", "1", "--no-chat", "-q", "-o", str(out),
               "--vs-llama-bench", str(fake))
    assert res.returncode == 0, res.stderr
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["engine"], r["name"]) for r in recs] == [("edgekit", "pp16"), ("llama-bench", "pp16"),
                                                        ("edgekit", "tg4"), ("llama-bench", "tg4")]
    assert recs[0]["ratio_vs_llama_bench"] == pytest.approx(recs[0]["avg_ts"] / 50.0)
    assert recs[1]["build_commit"] == "abc" and recs[1]["device_id"] == recs[0]["device_id"]
    calls = argv_log.read_text().splitlines()
    assert recs[0]["reps"] == 2 and len(recs[0]["samples_ns"]) == 2  # two A-B rounds of one repetition
    assert len(calls) == 4 and "-p 16 -n 0 -d 0 -t" in calls[0] and "-ctk f16 -ctv f16 -fa on" in calls[0]
    assert "-o jsonl" in calls[2] and "-n 4" in calls[3]


@pytest.mark.slow
def test_long_prompt_fills_the_context_and_runs_llama_bench_alike(smollm2_gguf, tmp_path):
    """`edgekit bench long-prompt` (the 32k measurement) at n_ctx 512, with a stand-in llama-bench that takes 7 s."""
    fake, argv_log = tmp_path / "llama-bench", tmp_path / "argv.txt"
    fake.write_text(f"#!{sys.executable}\nimport sys\nopen({str(argv_log)!r}, 'w').write(' '.join(sys.argv[1:]))\n"
                    "print('{\"avg_ns\": 7000000000}')\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    res = _cli("long-prompt", str(smollm2_gguf), "--ctx", "512", "--kv-cache", "q8_0", "--gen", "16",
               "--threads", "2", "--llama-bench", str(fake), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    ours, theirs = out["edgekit"], out["llama_bench"]
    assert ours["n_prompt"] == 512 - 16 - 16 and 1 <= ours["n_gen"] <= 16
    assert ours["type_k"] == ours["type_v"] == "q8_0" and ours["flash_attn"]
    assert ours["ttft_s"] > 0 and 0.85 < ours["peak_over_plan"] < 1.15
    assert theirs["edgekit_speed_ratio"] == pytest.approx(7.0 / ours["wall_s"])
    called = argv_log.read_text()
    assert f"-pg 480,{ours['n_gen']} -t 2 -b 512 -ub 512 -ctk q8_0 -ctv q8_0 -fa on -ngl {ours['gpu_layers']}" in called


def test_long_prompt_refuses_a_context_without_room_before_loading(tmp_path):
    missing = tmp_path / "not-there.gguf"  # never opened: the settings are checked first
    res = _cli("long-prompt", str(missing), "--ctx", "64", "--gen", "64")
    assert res.returncode == 1 and res.stderr.startswith("Error: a 64-token context leaves no room")
    res = _cli("long-prompt", str(missing), "--llama-bench", str(tmp_path / "no-llama-bench"))
    assert res.returncode == 1 and "llama-bench not found" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_raw_llama_cpp_python_engine(smollm2_gguf):
    """The comparison path: llama-cpp-python's Llama with the same settings, no edgekit Model."""
    grid = suite_grid([str(smollm2_gguf)], "quick", n_prompt=(16,), n_gen=(4,), depths=(0,), reps=1, chat_gen=4,
                      engine="llama-cpp-python")
    recs = list(run(grid, bandwidth=30e9))
    assert [(r["engine"], r["name"]) for r in recs] == [("llama-cpp-python", "pp16"), ("llama-cpp-python", "tg4"),
                                                        ("llama-cpp-python", "chat4")]
    assert all(r["avg_ts"] > 0 for r in recs) and recs[2]["ttft_p50_ms"] <= recs[2]["e2e_p50_ms"]


@pytest.mark.slow
def test_several_models_are_measured_each_as_if_alone(smollm2_gguf, tmp_path, monkeypatch):
    """Two models in one run: each is loaded only after the one before was closed (its engine thread stopped),
    and measuring the second starts no thread the first didn't have: every decode runs on edgekit's one
    compute thread, so no OpenMP team is left behind to slow the next model (docs/architecture.md)."""
    from edgekit.runtime import engine as engine_mod

    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    grid = suite_grid([str(smollm2_gguf), str(smollm2_gguf)], "quick", n_prompt=(8,), n_gen=(4,), depths=(0,), reps=1,
                      chat=False)
    before = set(engine_mod._ENGINES)
    linux = sys.platform.startswith("linux")
    live: list[int] = []
    threads: list[set[str]] = []

    def tick(stage, done, total):
        live.append(sum(1 for e in engine_mod._ENGINES if e not in before and not e._closing))
        if linux:
            import threading

            threads.append(set(os.listdir("/proc/self/task")) - {str(t.native_id) for t in threading.enumerate()})

    recs = list(run(grid, progress=tick, bandwidth=30e9))
    assert [r["name"] for r in recs] == ["pp8", "tg4"] * 2
    assert max(live) == 1 and live.count(1) == len(live) - 1  # one model at a time (none before the first tick)
    if linux:
        first, second = threads[: len(threads) // 2], threads[len(threads) // 2 :]
        assert set().union(*second) <= set().union(*first)
