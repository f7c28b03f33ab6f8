"""Device fingerprint: what a benchmark result was measured on.

Every benchmark record carries this fingerprint, so results collected on a
laptop, a Raspberry Pi and a Mac can be stored and compared side by side. The
parsers take plain text so they can be tested with any machine's
``/proc/cpuinfo``; :func:`fingerprint` reads the real files.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["fingerprint", "device_id", "parse_cpuinfo", "isa_features", "describe"]

# /proc/cpuinfo flag (x86 "flags", ARM "Features") -> the name we report.
# Ordered as users read them: SIMD width first, then the dot-product extensions.
_X86_FLAGS = {
    "sse4_2": "SSE4.2", "avx": "AVX", "f16c": "F16C", "fma": "FMA", "avx2": "AVX2",
    "avx512f": "AVX512", "avx512_vnni": "AVX512_VNNI", "avx512_bf16": "AVX512_BF16",
    "avx_vnni": "AVX_VNNI", "amx_tile": "AMX", "amx_int8": "AMX_INT8",
}
_ARM_FLAGS = {
    "asimd": "NEON", "neon": "NEON", "asimdhp": "FP16", "fphp": "FP16", "asimddp": "DOTPROD",
    "i8mm": "I8MM", "sve": "SVE", "sve2": "SVE2", "bf16": "BF16",
}
# macOS sysctl keys (value 1 = present) -> the same names.
_MAC_SYSCTL = {
    "hw.optional.neon": "NEON", "hw.optional.arm.FEAT_FP16": "FP16", "hw.optional.arm.FEAT_DotProd": "DOTPROD",
    "hw.optional.arm.FEAT_I8MM": "I8MM", "hw.optional.arm.FEAT_SME": "SME", "hw.optional.arm.FEAT_BF16": "BF16",
    "hw.optional.avx1_0": "AVX", "hw.optional.avx2_0": "AVX2", "hw.optional.avx512f": "AVX512",
}


def parse_cpuinfo(text: str) -> tuple[str | None, set[str]]:
    """Return (CPU model name, set of raw feature flags) from ``/proc/cpuinfo`` text."""
    model: str | None = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        value = value.strip()
        if key in ("model name", "cpu model", "hardware") and value and model is None:
            model = value
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, flags


def isa_features(flags: set[str]) -> list[str]:
    """Map raw CPU flags (x86 or ARM) to the ISA features llama.cpp cares about."""
    found: list[str] = []
    for table in (_X86_FLAGS, _ARM_FLAGS):
        for flag, name in table.items():
            if flag in flags and name not in found:
                found.append(name)
    return found


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _sysctl(name: str) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu() -> tuple[str | None, list[str], str | None]:
    """(CPU model, ISA features, Apple chip or None) for this machine."""
    if sys.platform == "darwin":
        brand = _sysctl("machdep.cpu.brand_string")
        feats = [name for key, name in _MAC_SYSCTL.items() if _sysctl(key) == "1"]
        chip = brand if brand and brand.startswith("Apple") else None
        return brand, list(dict.fromkeys(feats)), chip
    text = _read("/proc/cpuinfo") or ""
    model, flags = parse_cpuinfo(text)
    if model is None:
        model = platform.processor() or None
    return model, isa_features(flags), None


def _board() -> str | None:
    """The board model (e.g. "Raspberry Pi 5 Model B Rev 1.0") from the device tree, if any."""
    text = _read("/proc/device-tree/model")
    return text.strip("\x00 \n") or None if text else None


def _llama_info() -> dict[str, Any]:
    from edgekit import _llama

    version = _llama.bindings_version()
    if version is None:  # the fingerprint still works without the runtime
        return {"llama_cpp_python": None, "system_info": None, "gpu_offload": None}
    return {"llama_cpp_python": version, "system_info": _llama.system_info(),
            "gpu_offload": _llama.supports_gpu_offload()}


def fingerprint() -> dict[str, Any]:
    """Describe this device: CPU, ISA features, cores, RAM, OS, board and llama.cpp build.

    Keys: cpu_model, arch, cores_physical, cores_logical, isa (list), ram_bytes, os, kernel,
    board, apple_chip, llama_cpp_python, system_info, gpu_offload, edgekit, python, device_id.
    """
    import psutil

    from edgekit import __version__
    from edgekit.llama_facts import physical_cores

    cpu_model, isa, apple_chip = _cpu()
    info: dict[str, Any] = {
        "cpu_model": cpu_model,
        "arch": platform.machine(),
        "cores_physical": physical_cores(),
        "cores_logical": psutil.cpu_count(logical=True) or os.cpu_count() or 0,
        "isa": isa,
        "ram_bytes": int(psutil.virtual_memory().total),
        "os": platform.system(),
        "os_release": platform.platform(terse=True),
        "kernel": platform.release(),
        "board": _board(),
        "apple_chip": apple_chip,
        **_llama_info(),
        "edgekit": __version__,
        "python": platform.python_version(),
    }
    info["device_id"] = device_id(info)
    return info


def device_id(info: dict[str, Any]) -> str:
    """A short stable id of the hardware (not the software), to group results per device."""
    keys = ("cpu_model", "arch", "cores_physical", "cores_logical", "ram_bytes", "board", "apple_chip")
    # RAM is rounded to GiB: the usable total moves a little between kernels.
    stable = {k: info.get(k) for k in keys}
    stable["ram_bytes"] = round((info.get("ram_bytes") or 0) / 2**30)
    digest = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()
    return digest[:12]


def describe(info: dict[str, Any]) -> str:
    """One short human label, e.g. "AMD EPYC (2c, AVX512)" or "Raspberry Pi 5 (4c, NEON DOTPROD)"."""
    name = info.get("board") or info.get("apple_chip") or info.get("cpu_model") or info.get("arch") or "unknown"
    isa = info.get("isa") or []
    top = [f for f in isa if f in ("AVX2", "AVX512", "AMX", "NEON", "DOTPROD", "I8MM", "SVE")]
    if "AVX512" in top and "AVX2" in top:
        top.remove("AVX2")
    return f"{name} ({info.get('cores_physical')}c{', ' + ' '.join(top) if top else ''})"
