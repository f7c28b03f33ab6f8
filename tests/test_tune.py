"""edgekit tune: the profile and its key, load() using it, stale profiles, the CLI, Ctrl-C, bench records.

Real llama.cpp on a tiny Qwen2 (2 layers, hidden 64, real vocabulary, F16) with one thread and a
budget of a few seconds: the tests check what is stored and used, never how fast anything ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from interrupting import interrupt_when_ready

from edgekit.bench.tune import Fit, fit_line, job_seconds, job_shape, performance_cores
from edgekit.profile import Profile, Settings, current_key, lookup, profile_path, read, write


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}, timeout=600, **kw)


# -- the arithmetic ---------------------------------------------------------------------------------------------

def test_fit_recovers_a_line_and_keeps_the_slope_non_negative():
    pts = [(d, 0.002 + 3e-7 * d) for d in (256, 1280, 2304)]
    fit = fit_line(pts)
    assert fit.a == pytest.approx(0.002, rel=1e-9) and fit.b == pytest.approx(3e-7, rel=1e-9)
    noisy = fit_line([(256, 0.003), (2304, 0.0029)])  # deeper looked faster: noise, not a real speed-up
    assert noisy.b == 0 and noisy.a == pytest.approx(0.00295)


def test_decode_slope_is_at_least_reading_one_more_cells_kv_at_the_weights_rate():
    from edgekit.bench.tune import decode_fit

    flat = [(16, 0.040), (1040, 0.040)]  # 400 MB of weights in 40 ms: 10 GB/s
    fit = decode_fit(flat, kv_cell_bytes=10_000, weights_bytes=400e6)
    assert fit.b == pytest.approx(10_000 / 10e9, rel=0.01)  # 1 us per cell of context
    assert fit.at(528) == pytest.approx(0.040, rel=1e-6)  # still through the measured points
    steep = [(16, 0.040), (1040, 0.040 + 1024 * 15e-6)]  # a measured slope above the floor stands
    assert decode_fit(steep, 10_000, 400e6) == fit_line(steep)


def test_job_time_is_the_integral_of_the_per_token_cost():
    pp, tg = Fit(1e-3, 2e-7), Fit(2e-2, 5e-7)
    prompt, gen = job_shape(4096)
    assert (prompt, gen) == (3584, 512)
    prefill, decode = job_seconds(pp, tg, 4096)
    assert prefill == pytest.approx(sum(pp.at(d + 0.5) for d in range(prompt)), rel=1e-9)
    assert decode == pytest.approx(sum(tg.at(prompt + d + 0.5) for d in range(gen)), rel=1e-9)


def test_performance_cores_from_cpufreq_clusters():
    assert performance_cores([2400000] * 4 + [1800000] * 4) == 4  # e.g. a 4+4 big.LITTLE phone chip
    assert performance_cores([3504000, 3504000, 2424000, 2424000, 2424000, 2424000]) == 2
    assert performance_cores([2400000] * 4) is None  # one cluster (a Pi 5): nothing to add


# -- fixtures ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_gguf(tiny_qwen2_dir, tmp_path_factory) -> Path:
    from edgekit.convert import convert

    out = tmp_path_factory.mktemp("tiny-gguf")
    return convert(tiny_qwen2_dir, out=out, quant="f16")[0].path


@pytest.fixture(scope="module")
def tuned(tiny_gguf, tmp_path_factory) -> tuple[Profile, str]:
    """One real tuning run (1 thread, a few seconds): the profile and the JSON text it stored."""
    from edgekit.bench.tune import tune

    home = tmp_path_factory.mktemp("tune-home")
    old = os.environ.get("EDGEKIT_HOME")
    os.environ["EDGEKIT_HOME"] = str(home)
    try:
        profile = tune(tiny_gguf, n_ctx=1024, budget_s=4, threads=[1])
        text = profile_path(tiny_gguf).read_text()
    finally:
        if old is None:
            os.environ.pop("EDGEKIT_HOME", None)
        else:
            os.environ["EDGEKIT_HOME"] = old
    return profile, text


def _store(model: Path, settings: Settings, key: dict | None = None, n_ctx: int = 1024) -> Path:
    """A profile for ``model`` in this test's data dir, with the given settings."""
    profile = Profile(key=key or current_key(model), model=str(model), n_ctx=n_ctx, settings=settings)
    return write(profile)


# -- the profile ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_tune_writes_a_keyed_profile(tuned, tiny_gguf):
    profile, text = tuned
    stored = json.loads(text)
    assert stored["schema"] == "edgekit.profile" and stored["partial"] is False
    key = stored["key"]
    assert key == current_key(tiny_gguf)  # same device, file and build: this run's key
    assert set(key) == {"device_id", "model", "build"}
    assert key["model"]["size"] == tiny_gguf.stat().st_size and len(key["model"]["head_sha256"]) == 16
    assert key["build"]["llama_cpp_python"]
    assert stored["n_ctx"] == 1024 and stored["depths"][0] == 0 and len(stored["depths"]) >= 2
    s = stored["settings"]
    assert s["threads"] == s["threads_batch"] == 1
    # head size 16: a quantized cache can't be used, so f16 is the only KV candidate
    assert (s["type_k"], s["type_v"]) == ("f16", "f16") and s["n_ubatch"] in (128, 256, 512)
    for e in stored["measured"]:
        assert len(e["pp"]["points"]) == len(stored["depths"]) and e["pp"]["b_s"] >= 0 and e["job_s"] > 0
    assert stored["measured"], "the first configuration is always measured"
    # whatever the budget left out is listed, and the stored profile reads back as it was written
    listed = len(stored["measured"]) + len(stored["not_measured"])
    assert listed >= 2
    assert Profile.from_dict(stored).settings == profile.settings


# -- load() -----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_load_uses_the_profile_and_explicit_arguments_win(tiny_gguf):
    import edgekit

    _store(tiny_gguf, Settings(threads=1, threads_batch=2, flash_attn=False, type_k="f16", type_v="f16", n_ubatch=128))
    with edgekit.load(tiny_gguf, n_ctx=256) as m:
        assert m.plan.tuned is not None and m.plan.tuned["n_ubatch"] == 128 and m.plan.n_ubatch == 128
        assert (m.threads, m.plan.tuned["threads_batch"], m.flash_attn) == (1, 2, False)
        assert "tuned: threads 1 (prefill 2), ubatch 128" in m.plan.summary()
        assert m.generate("Hello", max_tokens=2, temperature=0).stats.gen_tokens >= 1
    with edgekit.load(tiny_gguf, n_ctx=256, threads=2, flash_attn=True, n_ubatch=64) as m:
        assert (m.threads, m.flash_attn, m.plan.n_ubatch) == (2, True, 64)
        assert m.plan.tuned["threads_batch"] == 2  # explicit threads set both phases


@pytest.mark.slow
def test_without_a_profile_the_static_rule_applies(tiny_gguf):
    import edgekit

    with edgekit.load(tiny_gguf, n_ctx=256) as m:
        assert m.plan.tuned is None and m.plan.note == ""
        assert (m.type_k, m.type_v, m.flash_attn, m.plan.n_ubatch) == ("f16", "f16", True, 512)
        assert "untuned (static rule)" in m.plan.summary()


@pytest.mark.slow
def test_a_tuned_kv_type_that_cannot_be_used_falls_back_to_the_static_rule(tiny_gguf):
    import edgekit

    # The tiny model's heads (16 values) can't hold q8_0 blocks (32): the plan has the last word.
    _store(tiny_gguf, Settings(threads=1, threads_batch=1, flash_attn=True, type_k="q8_0", type_v="q8_0", n_ubatch=256))
    with edgekit.load(tiny_gguf, n_ctx=256) as m:
        assert (m.type_k, m.type_v) == ("f16", "f16") and m.plan.tuned["n_ubatch"] == 256
        assert "tuned KV cache q8_0/q8_0" in m.plan.note and "static rule" in m.plan.note


@pytest.mark.slow
@pytest.mark.parametrize("stale", ["build", "device", "file"])
def test_a_stale_profile_is_ignored_with_a_note(tiny_gguf, tmp_path, stale):
    import edgekit

    model = tmp_path / tiny_gguf.name
    model.write_bytes(tiny_gguf.read_bytes())
    key = current_key(model)
    if stale == "build":
        key["build"] = {**key["build"], "llama_cpp_python": "0.0.1"}
    elif stale == "device":
        key["device_id"] = "0" * 12
    settings = Settings(threads=1, threads_batch=1, flash_attn=False, type_k="f16", type_v="f16", n_ubatch=128)
    _store(model, settings, key)
    if stale == "file":  # rewritten after tuning with other weights (a touched or copied file stays valid)
        data = bytearray(model.read_bytes())
        data[-1] ^= 1  # the last byte of the tensor data
        model.write_bytes(bytes(data))
    profile, note = lookup(model)
    assert profile is None
    assert {"build": "another llama.cpp build", "device": "another device", "file": "file has changed"}[stale] in note
    with edgekit.load(model, n_ctx=256) as m:
        assert m.plan.tuned is None and m.flash_attn is True and m.plan.note == note


@pytest.mark.slow
def test_chat_prints_the_stale_note_once(tiny_gguf, tmp_path):
    model = tmp_path / tiny_gguf.name
    model.write_bytes(tiny_gguf.read_bytes())
    key = current_key(model)
    key["build"] = {**key["build"], "system_info_sha256": "0" * 16}
    _store(model, Settings(1, 1, False, "f16", "f16", 128), key)
    res = _cli("chat", str(model), "--prompt", "Hi", "--max-tokens", "2", "--ctx", "256")
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("ignored the tuned profile") == 1 and "another llama.cpp build" in res.stderr


# -- the CLI ----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_tune_json_then_show(tiny_gguf):
    res = _cli("tune", str(tiny_gguf), "--ctx", "1024", "--budget", "3", "--threads", "1", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["profile"]["key"] == current_key(tiny_gguf) and out["path"] == str(profile_path(tiny_gguf))
    assert {r["setting"] for r in out["comparison"]["settings"]} == {
        "threads", "threads_batch", "flash_attn", "type_k", "type_v", "n_ubatch"}
    shown = _cli("tune", str(tiny_gguf), "--show")
    assert shown.returncode == 0, shown.stderr
    assert "static rule" in shown.stdout and "tuned" in shown.stdout and "predicted tokens/s" in shown.stdout
    assert "n_ctx 1024" in shown.stdout
    as_json = json.loads(_cli("tune", str(tiny_gguf), "--show", "--json").stdout)
    assert as_json["profile"] == out["profile"] and as_json["note"] is None
    for row in as_json["comparison"]["predicted"]:
        assert row["pp_tuned"] is None or row["pp_tuned"] > 0


def test_cli_show_without_a_profile_is_one_line(smollm2_gguf):
    res = _cli("tune", str(smollm2_gguf), "--show")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [f"Error: no tuned profile for {smollm2_gguf.name} on this machine. "
                                               f"Run `edgekit tune {smollm2_gguf}` first."]


# Wraps the tuner's measure() so that, once a configuration has been measured, the child says it is
# ready and waits (bounded) for the parent's SIGINT.
_INTERRUPT = """
import pathlib, sys, time
import edgekit.bench.tune as tuning
from edgekit.cli import main

ready, sent = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
real = tuning._Tuner.measure

def measure(self, *args, **kwargs):
    out = real(self, *args, **kwargs)
    if self.entries and not ready.exists():
        ready.write_text("measured")
        deadline = time.monotonic() + 60
        while not sent.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return out

tuning._Tuner.measure = measure
main(["tune", sys.argv[3], "--ctx", "1024", "--budget", "600", "--threads", "1"])
"""


@pytest.mark.slow
def test_ctrl_c_keeps_a_partial_profile_and_a_rerun_continues_it(tiny_gguf, tmp_path):
    from edgekit.bench.tune import tune

    child = interrupt_when_ready(_INTERRUPT, tiny_gguf, tmp_path, timeout=300,
                                 waiting_for="the tuner never finished a configuration")
    err = child.stderr
    assert child.returncode == 130, err
    assert "Traceback" not in err and "Interrupted: kept a partial profile" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    partial = read(profile_path(tiny_gguf))
    assert partial is not None and partial.partial and partial.measured
    profile, note = lookup(tiny_gguf)  # a checkpoint to continue from: load() doesn't use it
    assert profile is None and "interrupted" in note
    # The re-run continues: what was measured is kept as it was, and the profile is complete.
    done = tune(tiny_gguf, n_ctx=1024, budget_s=3, threads=[1])
    assert not done.partial and done.settings is not None
    assert partial.measured[0] in done.measured and done.depths == partial.depths


# -- bench ------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_bench_uses_the_profile_and_says_so(tiny_gguf):
    from edgekit.bench.runner import plan, run, suite_grid

    _store(tiny_gguf, Settings(threads=1, threads_batch=1, flash_attn=False, type_k="f16", type_v="f16", n_ubatch=256))
    grid = suite_grid([str(tiny_gguf)], "llama-bench", n_prompt=(64,), n_gen=(4,), reps=1)
    recs = list(run(grid, bandwidth=10e9))  # a given bandwidth: the roofline is not what this tests
    assert recs and all(r["tuned"] is True and r["flash_attn"] == 0 and r["n_ubatch"] == 256 for r in recs)
    assert recs[0]["tuned_settings"]["n_ubatch"] == 256
    explicit = suite_grid([str(tiny_gguf)], "llama-bench", n_prompt=(64,), n_gen=(4,), flash_attn=(True,))
    (group,), _ = plan(explicit)
    assert group.flash_attn is True and group.n_ubatch == 256 and group.tuned["flash_attn"] is True
    _store(tiny_gguf, Settings(threads=1, threads_batch=2, flash_attn=False, type_k="f16", type_v="f16", n_ubatch=256))
    (group,), _ = plan(replace(grid, use_profile=True))
    assert (group.threads, group.threads_batch, group.tuned["threads_batch"]) == (1, 2, 2)
    (group,), _ = plan(suite_grid([str(tiny_gguf)], "llama-bench", n_prompt=(64,), n_gen=(4,), threads=(1,)))
    assert group.tuned["threads"] == group.tuned["threads_batch"] == 1  # explicit threads set both phases
    untuned = replace(grid, use_profile=False)
    (group,), _ = plan(untuned)
    assert group.tuned is None and group.flash_attn is True and group.n_ubatch == 512


# -- convert -q auto: recipe speed on this device ------------------------------------------------------------

def test_pick_auto_ranks_the_recipes_within_the_kld_budget_by_this_devices_speed():
    from edgekit.convert.recipes import pick_auto

    assert pick_auto(0.05) == "q4-best"  # no table: the quality table's speeds
    assert pick_auto(0.05, {"q5-best": 90.0, "q4-best": 60.0}) == "q5-best"
    assert pick_auto(0.05, {"q4-fast": 999.0, "q4-best": 60.0}) == "q4-best"  # fast but over the KLD budget


def test_a_stored_speed_table_drives_auto_and_a_stale_one_is_ignored():
    from edgekit import profile
    from edgekit.convert.recipes import get_recipe

    path = profile.write_recipe_speeds({"q5-best": {"tg_ts": 90.0, "pp_ts": 400.0},
                                     "q4-best": {"tg_ts": 60.0, "pp_ts": 300.0}}, "test.gguf")
    assert get_recipe("auto").name == "q5-best"
    table = json.loads(path.read_text())
    table["build"]["llama_cpp_python"] = "0.0.1"
    path.write_text(json.dumps(table))
    assert profile.read_recipe_speeds() is None and get_recipe("auto").name == "q4-best"


@pytest.mark.slow
def test_convert_tune_measures_the_recipes_and_auto_follows_the_table(tiny_qwen2_dir, tmp_path):
    from edgekit import profile
    from edgekit.convert.recipes import RECIPES, pick_auto

    res = _cli("convert", str(tiny_qwen2_dir), "-q", "auto", "--tune", "-t", "1", "--json", "-o", str(tmp_path))
    assert res.returncode == 0, res.stderr
    table = json.loads(profile.recipe_speed_path().read_text())
    measured = {name for name, r in RECIPES.items() if r.measured is not None}
    assert set(table["recipes"]) == measured
    assert all(row["tg_ts"] > 0 and row["pp_ts"] > 0 for row in table["recipes"].values())
    chosen = pick_auto(0.05, profile.read_recipe_speeds())
    out = json.loads(res.stdout)["outputs"]
    assert [o["type"] for o in out] == [chosen.upper()]


@pytest.mark.slow
def test_fill_depth_tops_up_a_shallower_saved_state(tiny_gguf):
    """Depths measured in increasing order fill the cache once: 256 tokens, then 256 more for depth 512."""
    import edgekit
    from edgekit import _llama
    from edgekit.bench import measure

    with edgekit.load(tiny_gguf, n_ctx=1024, threads=1) as m:
        ctx = measure.Context(m.llama_context, m.llama_model, 1)
        L = _llama.lib()
        mem = L.llama_get_memory(ctx.ctx)
        filled: list[int] = []
        prompt = ctx.prompt
        ctx.prompt = lambda n, n_batch: (filled.append(n), prompt(n, n_batch))  # type: ignore[method-assign]
        ctx.fill_depth(256, 128)
        assert L.llama_memory_seq_pos_max(mem, 0) == 255
        ctx.fill_depth(512, 128)
        assert L.llama_memory_seq_pos_max(mem, 0) == 511 and ctx.depth_state[0] == 512
        ctx.fill_depth(512, 128)  # the same depth again: restored, nothing decoded
        assert L.llama_memory_seq_pos_max(mem, 0) == 511
        assert filled == [256, 256]
        m.reset()
