"""edgekit bench: schema, statistics, fingerprint, roofline, store/compare/import/plot (no model runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.bench import records, roofline
from edgekit.bench.runner import suite_grid
from edgekit.bench.store import Filters, Store, compare, format_compare
from edgekit.device import device_id, fingerprint, isa_features, parse_cpuinfo
from edgekit.errors import BenchError

# Qwen2.5-0.5B's KV values per token, from its config.json (num_hidden_layers 24, num_key_value_heads 2,
# hidden_size 896 / num_attention_heads 14 = head dim 64): 24 layers x 2 KV heads x 64, for K and for V.
QWEN05_KV_VALUES = (24 * 2 * 64, 24 * 2 * 64)


def _record(device: dict, **over) -> dict:
    fields = dict(test="tg", n_prompt=0, n_gen=128, n_depth=0, model_filename="m.gguf", model_type="qwen2 1B Q4_0",
                  model_size=352_000_000, model_n_params=494_000_000, n_batch=512, n_ubatch=512, n_threads=2,
                  type_k="f16", type_v="f16", flash_attn=1, test_time="2026-11-29T07:00:00Z",
                  device_id=device["device_id"], device=device, **records.stats_from_ns([1_600_000_000], 128))
    fields.update(over)
    return records.make_record(**fields)


def _device(name: str, cores: int = 2) -> dict:
    d = {"cpu_model": name, "arch": "x86_64", "cores_physical": cores, "cores_logical": cores, "ram_bytes": 8 << 30,
         "isa": ["AVX2"], "board": None, "apple_chip": None}
    d["device_id"] = device_id(d)
    return d


# -- schema ------------------------------------------------------------------------------------------------

def test_record_schema_version_and_llama_bench_names():
    rec = _record(_device("cpu"))
    assert rec["schema"] == "edgekit.bench" and rec["schema_version"] == records.SCHEMA_VERSION == 1
    assert rec["name"] == "tg128" and rec["engine"] == "edgekit"
    for name in ("n_prompt", "n_gen", "n_depth", "n_threads", "type_k", "type_v", "avg_ts", "stddev_ts",
                 "samples_ts", "samples_ns", "model_filename", "model_type", "model_size", "model_n_params",
                 "n_batch", "n_ubatch", "flash_attn", "test_time", "build_commit"):
        assert name in records.FIELDS and name in rec
    assert records.validate(json.loads(json.dumps(rec))) == rec
    assert records.test_name("pp", 512, 0, 4096) == "pp512 @ d4096"


@pytest.mark.parametrize("change, message", [
    ({"schema": "other"}, "not an edgekit bench record"),
    ({"schema_version": records.SCHEMA_VERSION + 1}, "newer than this edgekit"),
    ({"test": "xx"}, "unknown test kind"),
])
def test_validate_rejects_foreign_records(change, message):
    rec = {**_record(_device("cpu")), **change}
    with pytest.raises(BenchError, match=message):
        records.validate(rec)
    rec = _record(_device("cpu"))
    del rec["avg_ts"]
    with pytest.raises(BenchError, match="lacks fields: avg_ts"):
        records.validate(rec)


def test_stats_like_llama_bench():
    s = records.stats_from_ns([1_000_000_000, 2_000_000_000], 100)
    assert s["samples_ts"] == [100.0, 50.0]
    assert s["avg_ts"] == 75.0 and s["stddev_ts"] == pytest.approx(35.3553, rel=1e-4)  # sample stddev
    assert s["avg_ns"] == 1_500_000_000
    assert records.stats_from_ns([5], 1)["stddev_ts"] == 0.0
    assert records.percentile([1, 2, 3, 4], 50) == 2.5 and records.percentile([1, 2, 3, 4], 95) == pytest.approx(3.85)


def test_formats_render_every_record():
    recs = [_record(_device("cpu")), _record(_device("cpu"), test="pp", n_prompt=512, n_gen=0, name=None)]
    assert [json.loads(line)["name"] for line in records.format_records(recs, "jsonl").splitlines()] == ["tg128", "pp512"]
    assert len(json.loads(records.format_records(recs, "json"))) == 2
    csv_text = records.format_records(recs, "csv").splitlines()
    assert csv_text[0].startswith("schema,schema_version,engine,test,name") and len(csv_text) == 3
    md = records.format_records(recs, "md").splitlines()
    assert md[0].startswith("| engine | model") and "pp512" in md[3]
    assert "80.00 ± 0.00" in records.format_records(recs, "table")
    with pytest.raises(BenchError, match="unknown output format"):
        records.format_records(recs, "xml")


# -- fingerprint -------------------------------------------------------------------------------------------

def test_fingerprint_on_this_machine():
    fp = fingerprint()
    assert fp["cores_logical"] > 0 and fp["cores_physical"] > 0 and fp["ram_bytes"] > 2**28
    assert fp["os"] and fp["kernel"] and fp["edgekit"] and fp["llama_cpp_python"]
    assert fp["system_info"] and "CPU" in fp["system_info"]
    assert isinstance(fp["gpu_offload"], bool)
    assert len(fp["device_id"]) == 12 and fp["device_id"] == fingerprint()["device_id"]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model, flags = parse_cpuinfo(cpuinfo.read_text())
        assert fp["cpu_model"] == model
        # Whatever this x86 machine's flags say must show up, and nothing it lacks.
        assert ("AVX2" in fp["isa"]) == ("avx2" in flags)
        assert ("AVX512" in fp["isa"]) == ("avx512f" in flags)


def test_parse_arm_cpuinfo_pi5():
    text = ("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
            "asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\n")
    model, flags = parse_cpuinfo(text)
    assert model is None and "asimddp" in flags
    assert isa_features(flags) == ["NEON", "FP16", "DOTPROD"]
    assert isa_features({"asimd", "asimddp", "i8mm", "sve", "sve2"}) == ["NEON", "DOTPROD", "I8MM", "SVE", "SVE2"]
    assert isa_features({"avx2", "avx512f", "amx_tile"}) == ["AVX2", "AVX512", "AMX"]


# -- roofline ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kv, per_token", [("f16", 12288), ("q8_0", 6528), ("q4_0", 3456)])
def test_kv_bytes_per_token_of_qwen05(kv, per_token):
    from edgekit.llama_facts import kv_bytes_per_token

    assert kv_bytes_per_token(QWEN05_KV_VALUES, kv, kv) == per_token


def test_decode_ceiling_and_bandwidth_cache(tmp_path, monkeypatch):
    per_token, ceiling = roofline.decode_ceiling(34e9, 350_000_000, 12288, 0)
    assert per_token == 350_000_000 and ceiling == pytest.approx(97.1, abs=0.1)  # 34 GB/s / 350 MB per token
    _, deep = roofline.decode_ceiling(34e9, 350_000_000, 12288, 8192)
    assert deep < ceiling
    bw = roofline.measure_bandwidth(seconds=0.05, size_bytes=64 * 2**20)
    assert 1e8 < bw < 1e13
    monkeypatch.setattr(roofline, "measure_bandwidth", lambda: 5e9)
    assert roofline.bandwidth("dev1", cache_dir=tmp_path) == 5e9
    monkeypatch.setattr(roofline, "measure_bandwidth", lambda: pytest.fail("cached value not reused"))
    assert roofline.bandwidth("dev1", cache_dir=tmp_path) == 5e9


# -- store, compare, import, plot --------------------------------------------------------------------------

def _two_device_file(tmp_path: Path) -> Path:
    laptop, pi = _device("AMD EPYC"), _device("Cortex-A76", cores=4)
    pi["board"] = "Raspberry Pi 5 Model B Rev 1.0"
    recs = []
    for dev, scale in ((laptop, 1.0), (pi, 0.25)):
        for depth, ns in ((0, 1_600_000_000), (4096, 2_400_000_000)):
            recs.append(_record(dev, n_depth=depth, name=None, **records.stats_from_ns([int(ns / scale)], 128)))
        recs.append(_record(dev, test="pp", n_prompt=512, n_gen=0, name=None,
                            **records.stats_from_ns([int(1_600_000_000 / scale)], 512)))
    path = tmp_path / "results.jsonl"
    path.write_text(records.format_records(recs, "jsonl"))
    return path


def test_store_import_compare_and_filters(tmp_path):
    path = _two_device_file(tmp_path)
    with Store(tmp_path / "bench.sqlite") as db:
        assert db.import_jsonl(path) == (6, 0)
        assert db.import_jsonl(path) == (0, 6)  # importing twice adds nothing
        assert db.count() == 6
        assert len(db.query(Filters(device="Raspberry"))) == 3
        assert len(db.query(Filters(test="tg", depth=4096))) == 2
        recs = db.query(Filters(test="tg"))
    result = compare(recs, by="device")
    assert len(result["columns"]) == 2 and result["baseline"].startswith("AMD EPYC")
    for row in result["rows"]:
        pi_label = [c for c in result["columns"] if "Raspberry" in c][0]
        assert row["ratios"][pi_label] == pytest.approx(0.25)
    table = format_compare(compare(recs, by="device", baseline="Raspberry"), "table")
    assert "4.000" in table and "tg128 @ d4096" in table
    with pytest.raises(BenchError, match="no results match the baseline"):
        compare(recs, baseline="M3 Max")


def test_import_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"schema": "edgekit.bench"\n')
    with Store(tmp_path / "b.sqlite") as db:
        with pytest.raises(BenchError, match="line 1 is not valid JSON"):
            db.import_jsonl(bad)
        with pytest.raises(BenchError, match="file not found"):
            db.import_jsonl(tmp_path / "missing.jsonl")


def test_plot_writes_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from edgekit.bench.plot import plot

    with Store(tmp_path / "bench.sqlite") as db:
        db.import_jsonl(_two_device_file(tmp_path))
        recs = db.query()
    paths = plot(recs, tmp_path / "plots")
    assert {p.name for p in paths} == {"tg_vs_depth.png", "pp_vs_depth.png", "tg_vs_size.png"}
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_plot_without_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    from edgekit.bench import plot as plot_mod

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(BenchError, match=r"edgekit\[plot\]"):
        plot_mod.plot([_record(_device("cpu"))], tmp_path)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekit", "bench", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})


@pytest.mark.slow
def test_cli_import_compare_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path = _two_device_file(tmp_path)
    res = _cli("import", str(path))
    assert res.returncode == 0 and "6 new record(s), 0 already" in res.stdout
    res = _cli("compare", "--test", "tg", "--format", "md")
    assert res.returncode == 0 and "Raspberry Pi 5" in res.stdout and "0.250" in res.stdout
    res = _cli("plot", "--out", str(tmp_path / "png"))
    assert res.returncode == 0, res.stderr
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 3 and all(p.stat().st_size > 5000 for p in pngs)


def test_bench_defaults_measure_what_load_runs_and_what_llama_bench_does():
    """`edgekit bench MODEL -p 512 -n 128` is llama-bench's test (depth 0, 5 reps, no chat turn), with the KV
    cache and flash attention that edgekit.load picks when memory allows (f16/f16, on); no test options: quick."""
    from edgekit.bench.runner import default_suite

    grid = suite_grid(["m.gguf"], default_suite("512", "128", None), n_prompt=(512,), n_gen=(128,))
    assert (grid.depths, grid.reps, grid.chat) == ((0,), 5, False)
    assert (grid.kv_cache, grid.flash_attn) == (("f16/f16",), (True,))
    assert default_suite(None, None, None) == "quick"
    assert suite_grid(["m.gguf"], default_suite(None, None, None)).chat  # the suites time a chat turn
