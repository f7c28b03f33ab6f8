"""The reproducible studies and the bench package do no work when imported."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import edgekit.bench.studies

STUDIES = sorted(m.name for m in pkgutil.iter_modules(edgekit.bench.studies.__path__))


def test_the_studies_are_found():
    assert STUDIES == ["arch_speed", "convert_bench", "engine_speed", "many_models", "prompt_cache", "quality", "quality_speed_05b",
                       "runtime_perf", "serve_bench",
                       "speculation"]


@pytest.mark.parametrize("name", STUDIES)
def test_a_study_imports_without_work_and_answers_help(name, capsys):
    module = importlib.import_module(f"edgekit.bench.studies.{name}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert f"edgekit.bench.studies.{name}" in capsys.readouterr().out


def test_importing_edgekit_bench_and_the_studies_loads_no_llama_cpp():
    code = ("import sys, edgekit.bench\n"
            + "".join(f"import edgekit.bench.studies.{name}\n" for name in STUDIES)
            + "print(sorted(m for m in ('llama_cpp', 'numpy', 'gguf', 'huggingface_hub') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
