"""The thin ctypes layer over llama.cpp that edgekit needs (and nothing more).

llama.cpp logs to stderr by default; the library must not print, so its log is
captured into a ring buffer. The tail is attached to load errors, and
``EDGEKIT_DEBUG=1`` also echoes it to stderr.
"""

from __future__ import annotations

import collections
import ctypes
import os
import sys
import threading
from typing import Any

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


def log_tail(n: int = 5, contains: str = "") -> str:
    """The last ``n`` captured llama.cpp log lines (optionally only those containing ``contains``)."""
    lines = [ln.strip() for ln in list(_LOG) if ln.strip() and contains in ln]
    return " | ".join(lines[-n:])


def clear_log() -> None:
    _LOG.clear()


def log_lines() -> list[str]:
    return list(_LOG)


def tokenize(vocab: Any, text: str, add_special: bool, parse_special: bool) -> list[int]:
    L = lib()
    data = text.encode("utf-8")
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
