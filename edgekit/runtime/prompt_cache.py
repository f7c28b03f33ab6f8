"""The persistent prompt cache: snapshots of a slot's KV state on disk, found again by shared prefix.

A long prompt (a system prompt, a tool list, a document) is prefilled once per device, not once per
process. The engine asks :meth:`PromptCache.restore` before it prefills a prompt its slot's live KV
doesn't cover, and offers the slot to :meth:`PromptCache.offer` when a sequence ends.

**Files.** One snapshot per file, ``<key>-<tokens>.ekpc`` in one directory (0700, files 0600)::

    MAGIC (8) | u32 header length | u64 payload length | sha256(header + payload) (32) | header | payload

The header is JSON: the format, the identity key (the model file's :func:`~edgekit.gguf_check.model_identity`,
the KV types, flash attention, RoPE scaling, the llama.cpp build), the model file's name and the tokens.
The payload is llama.cpp's sequence state (``llama_state_seq_get_data``: the cells' positions and K/V
rows, no logits). ``<key>`` is a hash of the identity key, so a model only opens its own files; the
header is compared again before anything reaches llama.cpp, and the checksum covers header and payload.

**Index.** Each snapshot's tokens are cut into blocks of :data:`BLOCK` tokens, each block hashed with the
hash of the blocks before it (a chain), and the index maps a chain hash to the snapshots holding that
prefix. A lookup hashes the prompt's blocks and probes the index from the deepest block back: the first
hit names the snapshots sharing the longest whole-block prefix, and only those are compared token by
token. The index lives in memory and follows the directory's listing (other processes add and evict
files), reading only the headers of files it hasn't seen.

**Sharing a directory.** Writes go to a temporary file renamed into place (:mod:`edgekit.atomic`), so a
reader sees a whole file or none. A reader opens a file and then reads it from the open descriptor, so an
eviction by another process (an unlink) can't tear it: on POSIX the data lives until the reader closes
it (on Windows the unlink fails and the file is evicted later). A file that vanishes between the listing
and the open is a miss.

**Trust.** A truncated, corrupted, foreign or out-of-date file is deleted (or skipped, if it can't be)
with one :class:`~edgekit.errors.PromptCacheWarning` and the prompt is prefilled as if the cache were
empty. A directory another user owns or can write to is refused (anyone who could plant a snapshot could
change an answer). A full disk, a read-only directory or a permission error turns the cache off for the
process with one warning; a request never fails because of the cache.

This module is hand-written because no library does it: llama.cpp's own slot files have no index,
checksum or eviction, and llama-cpp-python's ``LlamaDiskCache`` pickles whole states under full token
tuples and scans every key.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import stat
import struct
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, PromptCacheWarning

MAGIC = b"EKPCACH1"
FORMAT = 1
SUFFIX = ".ekpc"
_PREFIX = struct.Struct("<8sIQ32s")  # magic, header length, payload length, sha256
BLOCK = 64  # tokens per hashed block of the index; prefixes shorter than one block aren't worth a file read
MIN_TOKENS = 256  # a snapshot is kept only for a prompt of at least this many tokens no kept snapshot covers
MIN_GAIN = BLOCK  # a restore must cover at least this many tokens more than the slot's live KV
DEFAULT_BUDGET = 2 << 30  # bytes; the default budget is this or a tenth of the free space, whichever is smaller
MAX_PENDING = 2  # snapshots copied out and waiting for the writer; more are dropped (the next run saves them)
ENV = "EDGEKIT_PROMPT_CACHE"


def resolve_dir(setting: str | Path | None) -> Path | None:
    """The cache directory for ``load(prompt_cache=setting)``: None when off.

    "auto" (the default) follows ``EDGEKIT_PROMPT_CACHE`` (``off`` or a directory) and otherwise uses
    ``prompts/`` in the user cache dir (under ``EDGEKIT_HOME`` when that is set). An explicit path wins
    over the environment; "off" or None turns the cache off.
    """
    if setting is None:
        return None
    if isinstance(setting, str) and setting.strip().lower() in ("off", "none", ""):
        return None
    if isinstance(setting, str) and setting == "auto":
        env = os.environ.get(ENV, "").strip()
        if env.lower() in ("off", "0", "none"):
            return None
        if env:
            return Path(env).expanduser()
        from edgekit.paths import cache_dir

        return cache_dir() / "prompts"
    return Path(setting).expanduser()


def default_budget(directory: Path) -> int:
    """2 GiB or a tenth of the free space where ``directory`` is, whichever is smaller."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return min(DEFAULT_BUDGET, shutil.disk_usage(probe).free // 10)
    except OSError:
        return DEFAULT_BUDGET


def parse_size(text: str | int | None, directory: Path) -> int:
    """A budget from ``prompt_cache_size=``: bytes, or text like "500M", "2G"; None = :func:`default_budget`."""
    if text is None:
        return default_budget(directory)
    if isinstance(text, int):
        value = text
    else:
        t = text.strip().upper().removesuffix("B").removesuffix("I")
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
        try:
            value = int(float(t[:-1] if scale > 1 else t) * scale)
        except ValueError:
            raise EdgekitError(f"prompt_cache_size {text!r} is not a size", "Use bytes or a size like 500M or 2G.") from None
    if value < 0:
        raise EdgekitError(f"prompt_cache_size must not be negative, got {text!r}")
    return value


def block_hashes(tokens: list[int]) -> list[bytes]:
    """The chained hash of each whole :data:`BLOCK` of ``tokens``: hash i covers tokens[: (i + 1) * BLOCK]."""
    out: list[bytes] = []
    h = b""
    for i in range(len(tokens) // BLOCK):
        block = struct.pack(f"<{BLOCK}i", *tokens[i * BLOCK : (i + 1) * BLOCK])
        h = hashlib.blake2b(h + block, digest_size=16).digest()
        out.append(h)
    return out


def key_hash(key: dict) -> str:
    """The file-name prefix of a model's snapshots: a hash of its identity key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def file_name(key: dict, tokens: list[int]) -> str:
    digest = hashlib.sha256(struct.pack(f"<{len(tokens)}i", *tokens)).hexdigest()[:24]
    return f"{key_hash(key)}-{digest}{SUFFIX}"


def common_prefix(a: list[int], b: list[int], start: int = 0) -> int:
    n, limit = start, min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


class BadSnapshot(Exception):
    """A snapshot file that must not reach llama.cpp (the message says why)."""


def check_directory(path: Path) -> None:
    """Create ``path`` (0700) if needed; raise :class:`EdgekitError` if it isn't a directory only we can write."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(path)
    except OSError as exc:
        raise EdgekitError(f"the prompt cache directory {path} can't be created: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise EdgekitError(f"the prompt cache path {path} is not a directory")
    if os.name == "posix":
        if st.st_uid != os.getuid():
            raise EdgekitError(f"the prompt cache directory {path} belongs to another user",
                               "Use a directory of your own (--prompt-cache DIR).")
        if st.st_mode & 0o022:
            raise EdgekitError(f"the prompt cache directory {path} can be written by other users",
                               f"Make it private (chmod 700 {path}) or use another directory.")


def read_prefix(f: Any, size: int) -> tuple[int, int, bytes]:
    """(header length, payload length, checksum) of an open snapshot file of ``size`` bytes."""
    raw = f.read(_PREFIX.size)
    if len(raw) < _PREFIX.size:
        raise BadSnapshot("is empty or truncated" if raw else "is empty")
    magic, hlen, plen, digest = _PREFIX.unpack(raw)
    if magic != MAGIC:
        raise BadSnapshot("is not an edgekit prompt snapshot")
    if _PREFIX.size + hlen + plen != size:
        raise BadSnapshot("is truncated" if _PREFIX.size + hlen + plen > size else "has trailing bytes")
    return hlen, plen, digest


def read_header(path: Path) -> tuple[dict, int]:
    """(header, file size) of a snapshot file, without its payload; raises BadSnapshot, OSError."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        hlen, _, _ = read_prefix(f, size)
        try:
            header = json.loads(f.read(hlen))
            tokens = header["tokens"]
            if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
                raise ValueError("bad tokens")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise BadSnapshot("has a damaged header") from None
    return header, size


@dataclass
class Entry:
    """One snapshot file as the index knows it."""

    name: str
    tokens: list[int]
    size: int
    hashes: list[bytes] = field(default_factory=list)


@dataclass
class Counters:
    """What the cache did in this process (server ``/metrics``)."""

    hits: int = 0
    misses: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    evictions: int = 0
    restored_tokens: int = 0
    snapshots_written: int = 0
    copy_s: float = 0.0  # engine thread: copying states out of llama.cpp (the only cost a request sees)
    write_s: float = 0.0  # writer thread: checksumming and writing files


class PromptCache:
    """One model's view of a prompt-cache directory (see the module docstring).

    ``key`` is the identity a snapshot must match (:func:`identity_key`); ``budget`` the most bytes the
    directory may hold (every model's snapshots together). :meth:`restore` and :meth:`offer` run on the
    engine thread; files are written by a writer thread of this object.
    """

    def __init__(self, directory: Path, budget: int, key: dict, *, model_file: str = "",
                 cut_back: int | None = None, n_swa: int = 0) -> None:
        self.directory = Path(directory)
        self.model_file = model_file  # for listings only: a copied or renamed model file keeps its snapshots
        self.budget = budget
        self.key = key
        # How many tokens a restored snapshot may be cut back: None any number (a plain KV cache, or
        # sliding-window memory saved whole); 1 for a sliding-window sequence's own state, which holds only
        # the last window of positions (its last token, evaluated again, needs no more; an earlier one
        # would); 0 for recurrent memory. Model.attach_prompt_cache
        # sets it, and n_swa, the window (_llama.window_covers checks each restore against it).
        self.cut_back = cut_back
        self.n_swa = n_swa
        self.enabled = True
        self.counters = Counters()
        self._prefix = key_hash(key) + "-"
        self._lock = threading.Lock()  # the index and the writer queue
        self._entries: dict[str, Entry] = {}
        self._index: dict[bytes, set[str]] = {}
        self._skip: set[str] = set()  # bad files that couldn't be deleted: warned about once
        self._pending: deque[tuple[list[int], Any, int]] = deque()
        self._writer: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        check_directory(self.directory)

    def __repr__(self) -> str:
        return f"PromptCache({str(self.directory)!r}, budget={self.budget})"

    # -- failures -------------------------------------------------------------------------------------

    def _off(self, why: str) -> None:
        """Turn the cache off for this process with one warning."""
        if self.enabled:
            self.enabled = False
            warnings.warn(f"prompt cache turned off: {why} ({self.directory})", PromptCacheWarning, stacklevel=2)

    def _bad(self, name: str, why: str) -> None:
        """Delete (or else skip) a snapshot that mustn't be used, with one warning."""
        with self._lock:
            self._forget(name)
            if name in self._skip:
                return
            self._skip.add(name)
        try:
            path = self.directory / name
            if path.is_dir() and not path.is_symlink():
                raise IsADirectoryError
            path.unlink()
            action = "deleted"
        except FileNotFoundError:
            action = "gone"
        except OSError:
            action = "skipped"
        else:
            with self._lock:
                self._skip.discard(name)
        warnings.warn(f"prompt cache: {name} {why}; {action}, the prompt is prefilled instead", PromptCacheWarning,
                      stacklevel=3)

    # -- the index ------------------------------------------------------------------------------------

    def _forget(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is None:
            return
        for h in entry.hashes:
            names = self._index.get(h)
            if names is not None:
                names.discard(name)
                if not names:
                    del self._index[h]

    def _add(self, entry: Entry) -> None:
        self._forget(entry.name)
        entry.hashes = block_hashes(entry.tokens)
        self._entries[entry.name] = entry
        for h in entry.hashes:
            self._index.setdefault(h, set()).add(entry.name)

    def refresh(self) -> None:
        """Bring the index up to the directory's listing (files other processes wrote or evicted)."""
        try:
            listing = {e.name: e for e in os.scandir(self.directory)
                       if e.name.startswith(self._prefix) and e.name.endswith(SUFFIX)}
        except OSError as exc:
            self._off(f"the directory can't be read ({exc.strerror})")
            return
        with self._lock:
            for name in [n for n in self._entries if n not in listing]:
                self._forget(name)
            new = [e for n, e in listing.items() if n not in self._entries and n not in self._skip]
        for e in new:
            try:
                if not e.is_file():
                    self._bad(e.name, "is not a file")
                    continue
                header, size = read_header(Path(e.path))
            except FileNotFoundError:
                continue  # evicted meanwhile
            except BadSnapshot as exc:
                self._bad(e.name, str(exc))
                continue
            except OSError as exc:
                self._bad(e.name, f"can't be read ({exc.strerror})")
                continue
            if header.get("format") != FORMAT or header.get("key") != self.key:
                self._bad(e.name, "was written for another model, KV type or llama.cpp build")
                continue
            with self._lock:
                self._add(Entry(e.name, [int(t) for t in header["tokens"]], size))

    def _usable(self, n: int, snapshot: int) -> bool:
        """Whether a snapshot of ``snapshot`` tokens may be restored cut back to its first ``n``."""
        return self.cut_back is None or n >= snapshot - self.cut_back

    def _candidates(self, tokens: list[int], limit: int, n_ctx: int) -> list[tuple[int, Entry]]:
        """(usable prefix, entry) of the snapshots sharing the longest prefix of ``tokens[:limit]``, best first.

        A snapshot is usable up to its common prefix with the prompt if it may be cut back that far
        (:attr:`cut_back`); it must fit ``n_ctx``.
        """
        hashes = block_hashes(tokens[:limit])
        with self._lock:
            for depth in range(len(hashes), 0, -1):
                found = []
                for name in self._index.get(hashes[depth - 1], ()):
                    entry = self._entries[name]
                    if len(entry.tokens) >= n_ctx:
                        continue
                    n = min(common_prefix(entry.tokens, tokens, (depth - 1) * BLOCK), limit)
                    if not self._usable(n, len(entry.tokens)):
                        continue
                    found.append((n, entry))
                if found:
                    # the longest usable prefix; then the smallest file to read
                    return sorted(found, key=lambda c: (-c[0], c[1].size))
        return []

    def covered(self, tokens: list[int], n_ctx: int) -> int:
        """How many leading ``tokens`` a kept (or queued) snapshot already covers."""
        best = max((n for n, _ in self._candidates(tokens, len(tokens), n_ctx)), default=0)
        with self._lock:
            for queued, _, _ in self._pending:
                n = common_prefix(queued, tokens)
                if self._usable(n, len(queued)):
                    best = max(best, n)
        return best

    # -- restoring ------------------------------------------------------------------------------------

    def restore(self, ctx: Any, seq_id: int, prompt: list[int], live: int, n_ctx: int) -> int:
        """Restore into sequence ``seq_id`` the snapshot sharing the longest prefix with ``prompt``, if it
        covers at least :data:`MIN_GAIN` tokens more than the ``live`` ones the slot holds.

        Returns how many leading prompt tokens the slot's KV now holds: ``live`` when nothing was restored
        (the slot untouched), the restored prefix on a hit, 0 if llama.cpp refused a snapshot after the
        slot was cleared. At least one prompt token is always left to prefill (for its logits).
        """
        if not self.enabled or len(prompt) - 1 < live + MIN_GAIN:
            return live
        try:
            return self._restore(ctx, seq_id, prompt, live, n_ctx)
        except Exception as exc:  # noqa: BLE001 - a cache failure must never reach a request
            from edgekit import _llama

            L = _llama.lib()
            L.llama_memory_seq_rm(L.llama_get_memory(ctx), seq_id, -1, -1)
            self._off(f"a snapshot couldn't be restored ({exc})")
            return 0

    def _restore(self, ctx: Any, seq_id: int, prompt: list[int], live: int, n_ctx: int) -> int:
        self.refresh()
        for n, entry in self._candidates(prompt, len(prompt) - 1, n_ctx):
            if n < live + MIN_GAIN:
                break
            got = self._read(entry)
            if got is None:
                continue  # a bad file (warned) or one just evicted: try the next
            return self._load_into(ctx, seq_id, entry, got, n)
        self.counters.misses += 1
        return live

    def _read(self, entry: Entry) -> Any | None:
        """The payload of ``entry``, verified (identity, tokens, checksum); None if it can't be used."""
        path = self.directory / entry.name
        try:
            with open(path, "rb") as f:  # from here on the data is ours even if another process evicts it
                size = os.fstat(f.fileno()).st_size
                hlen, plen, digest = read_prefix(f, size)
                raw = f.read(hlen)
                buf = (ctypes.c_uint8 * plen)()
                if f.readinto(buf) != plen:
                    raise BadSnapshot("is truncated")
        except FileNotFoundError:
            with self._lock:
                self._forget(entry.name)
            return None
        except BadSnapshot as exc:
            self._bad(entry.name, str(exc))
            return None
        except OSError as exc:
            self._bad(entry.name, f"can't be read ({exc.strerror})")
            return None
        h = hashlib.sha256(raw)
        h.update(memoryview(buf))
        if h.digest() != digest:
            self._bad(entry.name, "fails its checksum (a damaged file)")
            return None
        try:
            header = json.loads(raw)
        except ValueError:
            self._bad(entry.name, "has a damaged header")
            return None
        if header.get("format") != FORMAT or header.get("key") != self.key:
            self._bad(entry.name, "was written for another model, KV type or llama.cpp build")
            return None
        if header.get("tokens") != entry.tokens:
            self._bad(entry.name, "was replaced by a different snapshot")
            return None
        self.counters.bytes_read += size
        return buf

    def _load_into(self, ctx: Any, seq_id: int, entry: Entry, buf: Any, n: int) -> int:
        from edgekit import _llama

        L = _llama.lib()
        mem = L.llama_get_memory(ctx)
        L.llama_memory_seq_rm(mem, seq_id, -1, -1)
        if L.llama_state_seq_set_data(ctx, buf, len(buf), seq_id) == 0:
            L.llama_memory_seq_rm(mem, seq_id, -1, -1)
            self._bad(entry.name, "was refused by llama.cpp")
            return 0
        if n < len(entry.tokens) and _llama.keep_prefix(mem, seq_id, list(entry.tokens), n, self.n_swa) < n:
            self.cut_back = 0  # keep_prefix emptied the sequence: this memory can't be cut back; exact snapshots only
            return 0
        self.counters.hits += 1
        self.counters.restored_tokens += n
        try:
            mark_used(self.directory / entry.name)
        except OSError:
            pass
        return n

    # -- saving ---------------------------------------------------------------------------------------

    def offer(self, ctx: Any, seq_id: int, tokens: list[int], prompt_len: int, n_ctx: int) -> bool:
        """Keep a snapshot of sequence ``seq_id`` (whose KV holds exactly ``tokens``, a prompt of
        ``prompt_len`` tokens and its answer; -1: the whole context, see ``Engine.whole_states``) if the prompt has at least :data:`MIN_TOKENS` tokens no
        kept snapshot covers. Copies the state out of llama.cpp here (the caller's thread owns the
        context); the file is written by the writer thread. Returns whether a snapshot was queued.

        The engine calls this when a sequence has ended, after its last token went to the consumer and
        before its completion does: the copy (a memcpy) never delays a first token or the stream, and
        the file is written by a thread of its own. The snapshot holds the answer too, so a follow-up
        turn in a new process extends it; a later prompt sharing only the system prompt cuts it back.
        """
        if not self.enabled or prompt_len < MIN_TOKENS or len(tokens) < prompt_len:
            return False
        try:
            return self._offer(ctx, seq_id, tokens, prompt_len, n_ctx)
        except Exception as exc:  # noqa: BLE001 - a cache failure must never reach a request
            self._off(f"a snapshot couldn't be taken ({exc})")
            return False

    def _offer(self, ctx: Any, seq_id: int, tokens: list[int], prompt_len: int, n_ctx: int) -> bool:
        self.refresh()
        if prompt_len - self.covered(tokens[:prompt_len], n_ctx) < MIN_TOKENS:
            return False
        with self._lock:
            if len(self._pending) >= MAX_PENDING or file_name(self.key, tokens) in self._skip:
                return False  # the writer is behind, or a bad file we couldn't delete holds the name
        from edgekit import _llama

        L = _llama.lib()
        size = L.llama_state_seq_get_size(ctx, seq_id)
        if size <= 0 or size > self.budget:
            return False
        t0 = time.perf_counter()
        buf = (ctypes.c_uint8 * size)()
        n = L.llama_state_seq_get_data(ctx, buf, size, seq_id)
        self.counters.copy_s += time.perf_counter() - t0
        if n == 0:
            return False
        with self._lock:
            self._pending.append((list(tokens), buf, n))
            self._idle.clear()
            if self._writer is None:
                # Not a daemon: a process that ends right after its answer (a CLI run) still writes its file.
                self._writer = threading.Thread(target=self._write_all, name="edgekit-prompt-cache", daemon=False)
                self._writer.start()
        return True

    def _write_all(self) -> None:
        while True:
            with self._lock:
                if not self._pending or not self.enabled:
                    self._pending.clear()
                    self._writer = None
                    self._idle.set()
                    return
                tokens, buf, n = self._pending[0]
            t0 = time.perf_counter()
            try:
                self._write(tokens, memoryview(buf)[:n])
                self.counters.write_s += time.perf_counter() - t0
            except Exception as exc:  # noqa: BLE001 - a cache failure must never reach a request
                self._off(f"a snapshot couldn't be written ({getattr(exc, 'strerror', None) or exc})")
            with self._lock:
                self._pending.popleft()

    def _write(self, tokens: list[int], payload: memoryview) -> None:
        from edgekit.atomic import atomic_output

        header = json.dumps({"format": FORMAT, "key": self.key, "model_file": self.model_file,
                             "tokens": tokens}).encode()
        h = hashlib.sha256(header)
        h.update(payload)
        name = file_name(self.key, tokens)
        path = self.directory / name
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(_PREFIX.pack(MAGIC, len(header), len(payload), h.digest()))
                f.write(header)
                f.write(payload)
            os.chmod(tmp, 0o600)
            mark_used(tmp)
        size = _PREFIX.size + len(header) + len(payload)
        self.counters.bytes_written += size
        self.counters.snapshots_written += 1
        superseded = []
        with self._lock:
            self._skip.discard(name)
            self._add(Entry(name, list(tokens), size))
            if self.cut_back is None:  # a snapshot that the new one extends adds nothing any more
                superseded = [e.name for e in self._entries.values()
                              if e.name != name and len(e.tokens) <= len(tokens) and tokens[: len(e.tokens)] == e.tokens]
        for old in superseded:
            self._delete(old)
        self.counters.evictions += evict(self.directory, self.budget, keep=name)

    def _delete(self, name: str) -> None:
        with self._lock:
            self._forget(name)
        try:
            (self.directory / name).unlink()
        except OSError:
            pass

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the queued snapshots are written; False on timeout."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        """Write what is queued (the writer thread ends by itself when its queue is empty)."""
        self.flush()


# -- the directory as a whole (eviction, `edgekit cache`) ------------------------------------------------


@dataclass
class FileInfo:
    """One file of a cache directory, for listing and eviction."""

    path: Path
    size: int
    last_use: float  # the file's mtime: set when it is written and when it is restored


def mark_used(path: Path) -> None:
    """Set ``path``'s mtime, its last use for LRU eviction, to now from the process's clock: the kernel
    stamps writes and a bare ``os.utime`` with its coarse clock (a tick of several ms), so a snapshot used
    within one tick of another's write would tie with it and the eviction order would be the names'."""
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def files(directory: Path) -> list[FileInfo]:
    """The snapshot files of ``directory``, least recently used first."""
    out = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for e in entries:
        if not e.name.endswith(SUFFIX):
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.append(FileInfo(Path(e.path), st.st_size, st.st_mtime))
    return sorted(out, key=lambda f: f.last_use)


# A temporary file older than this is left from a writer that died; younger ones may be being written.
STALE_PARTIAL_S = 3600.0


def evict(directory: Path, budget: int, keep: str | None = None) -> int:
    """Delete the least recently used snapshots until ``directory`` holds at most ``budget`` bytes (never
    ``keep``, the one just written); returns how many were deleted. Safe beside readers in other
    processes: they read from an open descriptor (see the module docstring)."""
    now = time.time()
    try:
        for e in os.scandir(directory):
            if e.name.startswith(".") and e.name.endswith(".partial"):
                try:
                    if now - e.stat(follow_symlinks=False).st_mtime > STALE_PARTIAL_S:
                        os.unlink(e.path)
                except OSError:
                    pass
    except OSError:
        return 0
    listing = files(directory)
    total = sum(f.size for f in listing)
    n = 0
    for f in listing:
        if total <= budget:
            break
        if f.path.name == keep:
            continue
        try:
            f.path.unlink()
        except FileNotFoundError:
            pass  # another process evicted it first
        except OSError:
            continue  # in use (Windows) or not ours to delete: counted, left
        else:
            n += 1
        total -= f.size
    return n


def describe(directory: Path) -> list[dict]:
    """Each snapshot of ``directory`` (most recent first): file, model file name, tokens, size, last use,
    and a problem if its header can't be read. Reads headers only."""
    out = []
    for f in reversed(files(directory)):
        row: dict[str, Any] = {"file": f.path.name, "size": f.size, "last_use": f.last_use}
        try:
            header, _ = read_header(f.path)
            row["model"] = header.get("model_file") or "?"
            row["tokens"] = len(header["tokens"])
        except (BadSnapshot, OSError) as exc:
            row["problem"] = str(exc)
        out.append(row)
    return out


def identity_key(model_path: Path, *, type_k: str, type_v: str, flash_attn: bool, rope: dict | None = None,
                 slots: int = 1) -> dict:
    """What a snapshot must have been made with to be used: the one model-identity rule of
    :func:`edgekit.gguf_check.model_identity`, the KV types, flash attention, RoPE scaling, the llama.cpp
    build (:func:`edgekit.profile.build_identity`) and the context's slots.

    Slots, because llama.cpp writes a sequence's state with its context's stream count (one per slot) and
    refuses it in a context with another: a server's snapshots and a one-slot chat's sharing a directory
    would each be refused, deleted and written again by the other. Keyed apart, each keeps its own.
    """
    from edgekit.gguf_check import model_identity
    from edgekit.profile import device_and_build

    _, build = device_and_build()
    return {"model": model_identity(model_path), "type_k": type_k, "type_v": type_v, "flash_attn": bool(flash_attn),
            "rope": rope or {}, "build": dict(build), "slots": int(slots)}
