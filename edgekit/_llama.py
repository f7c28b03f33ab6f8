"""The thin ctypes layer over llama.cpp that edgekit needs (and nothing more).

Every edgekit module reaches llama.cpp (llama-cpp-python's bindings) through
here: :func:`lib` for the raw functions, plus the few helpers below. llama.cpp
logs to stderr by default; the library must not print, so this module installs
the one process-wide log callback, which captures the log into a ring buffer.
The tail is attached to load errors, and ``EDGEKIT_DEBUG=1`` also echoes it to
stderr.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import platform
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from edgekit import _compute
from edgekit.errors import InvalidParam, ModelLoadError

_LOG: collections.deque[str] = collections.deque(maxlen=200)
_init_lock = threading.Lock()
_L: Any = None
_log_cb: Any = None  # keep the ctypes callback alive


def lib() -> Any:
    """The ``llama_cpp.llama_cpp`` bindings, with the backend initialised and logging captured."""
    global _L, _log_cb
    if _L is not None:
        return _L
    with _init_lock:
        if _L is None:
            import llama_cpp.llama_cpp as L

            echo = os.environ.get("EDGEKIT_DEBUG") == "1"

            @L.llama_log_callback
            def _cb(level: int, text: bytes, _user: Any) -> None:
                line = text.decode("utf-8", errors="replace")
                _LOG.append(line)
                if echo:
                    sys.stderr.write(line)

            _log_cb = _cb
            L.llama_log_set(_log_cb, ctypes.c_void_p(0))
            L.llama_backend_init()
            _L = L
    return _L


def decode(ctx: Any, batch: Any) -> int:
    """``llama_decode(ctx, batch)`` on the process's one compute thread (:mod:`edgekit._compute`: one
    OpenMP team for every model), waiting for it; llama.cpp's return code. Every decode edgekit makes
    goes through here."""
    return _compute.run(lib().llama_decode, ctx, batch)


def decode_seconds() -> float:
    """How long this thread's last :func:`decode` took to compute (not counting its wait for its turn)."""
    return _compute.last_seconds()


def log_tail(n: int = 5, contains: str = "") -> str:
    """The last ``n`` captured llama.cpp log lines (optionally only those containing ``contains``)."""
    lines = [ln.strip() for ln in list(_LOG) if ln.strip() and contains in ln]
    return " | ".join(lines[-n:])


def clear_log() -> None:
    _LOG.clear()


def supports_gpu_offload() -> bool:
    """Whether this llama.cpp build can put layers on a GPU (Metal, CUDA, ...)."""
    return bool(lib().llama_supports_gpu_offload())


def bindings_version() -> str | None:
    """llama-cpp-python's version, or None where it isn't installed (the device fingerprint still works)."""
    try:
        from importlib.metadata import version

        return version("llama_cpp_python")
    except Exception:
        return None


def high_level_llama() -> Any:
    """llama-cpp-python's high-level ``Llama`` class, for the benchmark's "no wrapper" baseline.

    Build it inside :func:`llama_cpp_python_model_params` (see :func:`extra_buffers_ok`).
    """
    lib()  # our log callback and backend first
    from llama_cpp import Llama

    return Llama


def json_schema_to_gbnf(schema_json: str) -> str:
    """llama-cpp-python's JSON-schema-to-GBNF converter (it raises plain exceptions on bad schemas)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf as convert

    return convert(schema_json)


def system_info() -> str:
    """llama.cpp's own description of the build's CPU features, e.g. ``"AVX2 = 1 | AMX_INT8 = 1 | ..."``."""
    return lib().llama_print_system_info().decode("utf-8", errors="replace").strip()


def build_has_amx(info: str | None = None) -> bool:
    """Whether this llama.cpp build uses AMX (``info``: :func:`system_info`, read if not given)."""
    return "AMX_INT8 = 1" in (system_info() if info is None else info)


# Weight types llama.cpp's AMX buffer takes (ggml-cpu/amx/common.h, qtype_has_amx_kernels).
AMX_TYPES = frozenset({"Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"})
_extra_buffers_verdicts: dict[str, bool] = {}


def extra_buffers_ok(path: Path, tensor_types: frozenset[str]) -> bool:
    """Whether llama.cpp may put this model's weights in its extra CPU buffers (AMX, repacked).

    They are llama.cpp's fast path, but on some CPUs that report AMX (seen on a virtualised Xeon)
    the AMX kernels crash the process on the first batched matmul. A crash can't be caught in
    process, so the first load of a model with AMX-eligible weights on a build with AMX runs
    :mod:`edgekit._llama_probe` once in a subprocess; the verdict is cached per build, CPU and
    weight types. ``EDGEKIT_EXTRA_BUFFERS=0`` or ``1`` decides without probing.
    """
    forced = os.environ.get("EDGEKIT_EXTRA_BUFFERS")
    if forced in ("0", "1"):
        return forced == "1"
    info = system_info()
    amx_types = tensor_types & AMX_TYPES
    if not build_has_amx(info) or not amx_types:
        return True
    return _verdict(f"extra|{sorted(amx_types)}", path, [])


def _verdict(what: str, path: Path, probe_args: list[str]) -> bool:
    """A probe verdict for ``what``, memoised per process and cached per build and CPU."""
    import hashlib

    key = hashlib.sha256(f"{system_info()}|{platform.processor()}|{platform.machine()}|{what}".encode())
    key = key.hexdigest()[:16]
    if key not in _extra_buffers_verdicts:
        _extra_buffers_verdicts[key] = _cached_probe(key, path, probe_args)
    return _extra_buffers_verdicts[key]


# Weight types llama.cpp's CPU_REPACK buffer takes on x86 with AVX2, and the row count each must divide
# by (ggml-cpu/repack.cpp, ggml_repack_get_optimal_repack_type). ARM never needs this (no AMX there).
X86_REPACK_ROWS = {"Q4_0": 8, "Q4_K": 8, "IQ4_NL": 8, "MXFP4": 8}


def repack_targets(matrices: tuple[tuple[str, str, int], ...]) -> list[str]:
    """Names of the weights llama.cpp's repack buffer would take on an x86 CPU (the matmul weights of
    a repackable type; the embedding is read by row, so llama.cpp keeps it in a plain buffer)."""
    return [name for name, type_name, rows in matrices
            if name != "token_embd.weight" and type_name in X86_REPACK_ROWS and rows % X86_REPACK_ROWS[type_name] == 0]


class RepackOverrides:
    """A NULL-terminated ``llama_model_tensor_buft_override`` array that puts ``names`` in llama.cpp's
    CPU_REPACK buffer; keep the object alive until the model has loaded.

    Why: with extra buffers off (the AMX crash), llama.cpp also stops repacking Q4_0/IQ4_NL/Q4_K
    weights for AVX2, which costs about a third of the prompt speed (measured on the 0.5B Q4_0: pp512
    ~200 -> ~300 tok/s with repacking, tg +10%). The repack buffer type isn't reachable through
    llama.h, so it is looked up in ggml's CPU backend registry.
    """

    class _Override(ctypes.Structure):
        _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]

    def __init__(self, names: list[str]) -> None:
        buft = _cpu_extra_buffer_type("CPU_REPACK")
        if buft is None:
            raise RuntimeError("this llama.cpp build has no CPU_REPACK buffer type")
        self._patterns = [f"^{re.escape(n)}$".encode() for n in names]
        self._array = (self._Override * (len(names) + 1))(*[self._Override(p, buft) for p in self._patterns],
                                                            self._Override(None, None))
        self.pointer = ctypes.cast(self._array, ctypes.c_void_p)


def _cpu_extra_buffer_type(name: str) -> int | None:
    """The CPU backend's extra buffer type called ``name`` (e.g. "CPU_REPACK"), via ggml's registry."""
    lib()
    libdir = Path(sys.modules["llama_cpp.llama_cpp"].__file__).parent / "lib"
    ggml = ctypes.CDLL(str(next(libdir.glob("libggml.*"))))  # the copy llama.cpp already loaded
    base = ctypes.CDLL(str(next(libdir.glob("libggml-base.*"))))
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    base.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    base.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    base.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    base.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    base.ggml_backend_buft_name.restype = ctypes.c_char_p
    base.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    dev = ggml.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    if not dev:
        return None
    proc = base.ggml_backend_reg_get_proc_address(base.ggml_backend_dev_backend_reg(dev),
                                                  b"ggml_backend_dev_get_extra_bufts")
    if not proc:
        return None
    bufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(proc)(dev)
    i = 0
    while bufts and bufts[i]:
        if base.ggml_backend_buft_name(bufts[i]).decode() == name:
            return bufts[i]
        i += 1
    return None


def repack_overrides(path: Path, matrices: tuple[tuple[str, str, int], ...]) -> RepackOverrides | None:
    """Overrides that keep llama.cpp's weight repacking where :func:`extra_buffers_ok` turned the extra
    buffers off (AMX builds only), or None. Probed once in a subprocess like the extra buffers;
    ``EDGEKIT_REPACK=0`` or ``1`` decides without probing."""
    names = repack_targets(matrices) if platform.machine().lower() in ("x86_64", "amd64") else []
    forced = os.environ.get("EDGEKIT_REPACK")
    if not names or forced == "0" or (forced is None and not build_has_amx()):
        return None
    if forced != "1":
        types = sorted({t for n, t, _ in matrices if n in set(names)})
        if not _verdict(f"repack|{types}", path, ["--repack"]):
            return None
    return RepackOverrides(names)


@contextlib.contextmanager
def llama_cpp_python_model_params(**fields: Any) -> Iterator[None]:
    """Let llama-cpp-python's high-level ``Llama`` be built with model params it doesn't expose
    (e.g. ``use_extra_bufts=False``): its constructor starts from ``llama_model_default_params()``."""
    L = lib()
    original = L.llama_model_default_params

    def defaults() -> Any:
        params = original()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    L.llama_model_default_params = defaults
    try:
        yield
    finally:
        L.llama_model_default_params = original


class WeightBuffers(NamedTuple):
    """Where a model's weights go on this CPU: llama.cpp's extra buffers, else (AMX builds where they
    crash) the repack buffer through overrides, if any. Keep it alive until the model has loaded."""

    extra: bool
    repack: RepackOverrides | None

    @property
    def repacked(self) -> bool:
        """Whether llama.cpp repacks the matmul weights (through its extra buffers or the overrides)."""
        return self.extra or self.repack is not None


def weight_buffers(path: Path, tensor_types: frozenset[str],
                   matrices: tuple[tuple[str, str, int], ...]) -> WeightBuffers:
    """The weight buffers every loader uses for ``path`` (:func:`extra_buffers_ok`, :func:`repack_overrides`)."""
    extra = extra_buffers_ok(path, tensor_types)
    return WeightBuffers(extra, None if extra else repack_overrides(path, matrices))


@contextlib.contextmanager
def same_weight_buffers(path: Path, tensor_types: frozenset[str],
                        matrices: tuple[tuple[str, str, int], ...]) -> Iterator[None]:
    """Build llama-cpp-python's ``Llama`` inside this block to give it the weight buffers edgekit's own
    loader uses on this CPU (:func:`weight_buffers`)."""
    buffers = weight_buffers(path, tensor_types, matrices)
    fields: dict[str, Any] = {"use_extra_bufts": buffers.extra}
    if buffers.repack is not None:
        fields["tensor_buft_overrides"] = buffers.repack.pointer
    with llama_cpp_python_model_params(**fields):
        yield


def _cached_probe(key: str, path: Path, probe_args: list[str]) -> bool:
    import json
    import subprocess

    from edgekit.atomic import atomic_output
    from edgekit.paths import cache_dir

    store = cache_dir() / "extra-buffers.json"
    try:
        verdicts = json.loads(store.read_text())
    except (OSError, ValueError):
        verdicts = None
    verdicts = verdicts if isinstance(verdicts, dict) else {}
    if not isinstance(verdicts.get(key), bool):
        try:
            rc = subprocess.run([sys.executable, "-m", "edgekit._llama_probe", str(path), *probe_args], capture_output=True,
                                timeout=300).returncode
        except subprocess.TimeoutExpired:
            rc = -1
        verdicts[key] = rc >= 0  # a signal (SIGSEGV, SIGILL) or a hang is what condemns them
        with atomic_output(store) as tmp:
            tmp.write_text(json.dumps(verdicts, indent=1))
    return verdicts[key]


@contextlib.contextmanager
def vocab_only(path: Path) -> Iterator[Any]:
    """The ``llama_vocab*`` of a GGUF loaded without its weights (``vocab_only``); freed on exit."""
    L = lib()
    params = L.llama_model_default_params()
    params.vocab_only = True
    model = L.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ModelLoadError(f"llama.cpp could not read the vocabulary of {Path(path).name}", log_tail())
    try:
        yield L.llama_model_get_vocab(model)
    finally:
        L.llama_model_free(model)


def eog_tokens(path: Path) -> list[int]:
    """The end-of-generation token ids of the GGUF at ``path``, as llama.cpp decides them
    (``llama_vocab_is_eog``), from a vocabulary-only load (no weights; well under a second)."""
    L = lib()
    with vocab_only(path) as vocab:
        return [t for t in range(L.llama_vocab_n_tokens(vocab)) if L.llama_vocab_is_eog(vocab, t)]


def utf8(text: str, what: str = "text") -> bytes:
    """``text`` as the UTF-8 bytes llama.cpp reads. A Python string can hold what UTF-8 can't (a lone
    UTF-16 surrogate, which JSON's ``"\\ud800"`` decodes to): that is refused with an
    :class:`~edgekit.errors.InvalidParam` naming ``what``, never a UnicodeEncodeError."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidParam(what, f"holds a lone UTF-16 surrogate (U+{ord(text[exc.start]):04X}) at character "
                                 f"{exc.start}, which is not text", "Send valid Unicode.") from None


def tokenize(vocab: Any, text: str, add_special: bool, parse_special: bool) -> list[int]:
    L = lib()
    data = utf8(text)
    cap = len(data) + 8
    buf = (L.llama_token * cap)()
    n = L.llama_tokenize(vocab, data, len(data), buf, cap, add_special, parse_special)
    if n < 0:
        cap = -n
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(vocab, data, len(data), buf, cap, add_special, parse_special)
    return buf[:n]


def detokenize(vocab: Any, tokens: list[int], render_special: bool = True) -> str:
    L = lib()
    if not tokens:
        return ""
    arr = (L.llama_token * len(tokens))(*tokens)
    cap = max(64, len(tokens) * 8)
    buf = ctypes.create_string_buffer(cap)
    n = L.llama_detokenize(vocab, arr, len(tokens), buf, cap, False, render_special)
    if n < 0:
        cap = -n
        buf = ctypes.create_string_buffer(cap)
        n = L.llama_detokenize(vocab, arr, len(tokens), buf, cap, False, render_special)
    return buf.raw[:n].decode("utf-8", errors="replace")


class Pieces:
    """token id -> bytes, with a reused buffer and a cache (the decode loop calls this per token)."""

    def __init__(self, vocab: Any) -> None:
        self._L = lib()
        self._vocab = vocab
        self._buf = ctypes.create_string_buffer(256)
        self._cache: dict[int, bytes] = {}

    def __call__(self, token: int) -> bytes:
        piece = self._cache.get(token)
        if piece is None:
            n = self._L.llama_token_to_piece(self._vocab, token, self._buf, 256, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._L.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
                piece = buf.raw[:n]
            else:
                piece = self._buf.raw[:n]
            self._cache[token] = piece
        return piece


class Batch:
    """A reusable ``llama_batch`` with one sequence id per token, filled by :meth:`add` (the one filler
    of every decode loop: the engine's, the draft model's, evaluation's). Free it with :meth:`free`."""

    def __init__(self, capacity: int) -> None:
        self._L = lib()
        self.capacity = capacity
        self.raw: Any = self._L.llama_batch_init(capacity, 0, 1)
        for i in range(capacity):
            self.raw.n_seq_id[i] = 1
        self.raw.n_tokens = 0

    def __len__(self) -> int:
        return self.raw.n_tokens

    def clear(self) -> None:
        self.raw.n_tokens = 0

    def add(self, tokens: Sequence[int], first_pos: int, seq_id: int = 0, logits_from: int = 0,
            logits_to: int | None = None) -> int:
        """Append ``tokens`` at positions ``first_pos``, ``first_pos + 1``, ... of sequence ``seq_id``,
        asking for logits at ``tokens[logits_from:logits_to]`` (by default at every one); returns the
        batch row of the first."""
        b, n = self.raw, self.raw.n_tokens
        if n + len(tokens) > self.capacity:
            raise ValueError(f"{n + len(tokens)} tokens in a batch of {self.capacity}")
        end = len(tokens) if logits_to is None else logits_to
        token, pos, seq, logits = b.token, b.pos, b.seq_id, b.logits
        for i, tok in enumerate(tokens):
            token[n + i] = tok
            pos[n + i] = first_pos + i
            seq[n + i][0] = seq_id
            logits[n + i] = logits_from <= i < end
        b.n_tokens = n + len(tokens)
        return n

    def fill(self, tokens: Sequence[int], first_pos: int, seq_id: int = 0, logits_from: int = 0,
             logits_to: int | None = None) -> Any:
        """The batch holding just ``tokens`` (as :meth:`add`), ready for ``llama_decode``."""
        self.clear()
        self.add(tokens, first_pos, seq_id, logits_from, logits_to)
        return self.raw

    def free(self) -> None:
        if self.raw is not None:
            self._L.llama_batch_free(self.raw)
            self.raw = None


def shared_prefix(cached: list[int], tokens: list[int]) -> int:
    """How many leading tokens of ``tokens`` a sequence holding ``cached`` can keep: their common
    prefix, short of the last token of ``tokens`` (evaluated again for its logits)."""
    limit = min(len(cached), len(tokens) - 1)
    if limit > 0 and cached[:limit] == tokens[:limit]:  # the usual case (a prompt extending the cache), compared in C
        return limit
    n = 0
    while n < limit and cached[n] == tokens[n]:
        n += 1
    return n


def keep_prefix(mem: Any, seq_id: int, cached: list[int], n: int, n_swa: int = 0) -> int:
    """Drop sequence ``seq_id``'s KV cells from position ``n`` on (and ``cached[n:]``, the list of its
    tokens); returns how many are kept. Where llama.cpp can't cut a sequence in the middle (a recurrent
    state), or the cells left don't reach back as far as the next token attends (:func:`window_covers`:
    a sliding-window state restored from a file), the whole sequence goes and 0 are kept. Always trim:
    a failed or interrupted decode may have left cells past the list."""
    L = lib()
    if (n and not window_covers(mem, seq_id, n, n_swa)) or not L.llama_memory_seq_rm(mem, seq_id, n, -1):
        L.llama_memory_seq_rm(mem, seq_id, -1, -1)
        n = 0
    del cached[n:]
    return n


def window_covers(mem: Any, seq_id: int, n: int, n_swa: int) -> bool:
    """Whether sequence ``seq_id``'s KV cells still hold every position a token at position ``n`` attends
    to (``n_swa``: the model's sliding window; 0 for none, or for recurrent and hybrid memory, whose
    smallest position is their state's last one: always True).

    A sliding-window layer's token at ``n`` attends to positions ``n - n_swa + 1 .. n`` (fewer for llama.cpp's
    chunked windows). edgekit's contexts keep every cell (``swa_full``), so a live sequence holds all its
    positions, but ``llama_state_seq_get_data`` writes only the last window of one sequence's
    sliding-window cells (a one-slot context saves the whole context instead: ``Engine.whole_states``): a
    state restored from it holds positions from ``its length - n_swa`` on, and
    ``llama_memory_seq_pos_min`` (the smallest position the window layers hold) says so. Cut back further
    than one token, such a state would silently attend to less than the model should.
    """
    if n_swa <= 0:
        return True
    return lib().llama_memory_seq_pos_min(mem, seq_id) <= max(0, n - n_swa + 1)  # -1: the sequence is empty


def log_normalizer(x: Any) -> tuple[Any, Any]:
    """Each logits row's log-sum-exp, as ``(max, rest)`` with ``max + rest`` the log-sum-exp of
    ``x[..., :]``: the log-softmax is ``x - (max + rest)``. The sum runs in float64 and ``rest`` comes
    back in ``x``'s dtype (llama-perplexity's arithmetic, which edgekit eval's scores reproduce)."""
    import numpy as np

    mx = x.max(axis=-1)
    rest = np.log(np.exp(x - mx[..., None]).sum(axis=-1, dtype=np.float64)).astype(x.dtype)
    return mx, rest
