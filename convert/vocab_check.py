"""Prove, at conversion time, that llama.cpp tokenizes a vocabulary as the checkpoint's own tokenizer does.

llama.cpp's converter trusts a vocabulary it recognises by hash. For a SentencePiece vocabulary edgekit
has no such table at all, and for a byte-level BPE it maps the pre-tokenizer's definition to one of
llama.cpp's built-in pre-tokenizers (:mod:`edgekit.convert.vocab`), which the merges, the added tokens
and their flags could still contradict. So for both, edgekit writes the
vocabulary into a GGUF without weights, loads it in llama.cpp, and tokenizes probe texts
with both llama.cpp and the checkpoint's tokenizer: HF ``tokenizers`` for a tokenizer.json,
``sentencepiece`` for a tokenizer.model. The probes cover what tends to break: spaces at the
start and in runs, newlines, digits, emoji, characters missing from the vocabulary (byte
fallback), the special tokens, and a sample of the vocabulary itself. The first text that
tokenizes differently refuses the conversion, named in the error.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import gguf

from edgekit.convert.vocab import Vocab
from edgekit.errors import ModelLoadError, UnsupportedModel

PROBES = (
    "Hello world", " Hello world", "   three leading spaces", "several    spaces   between  words",
    "trailing spaces   ", "line one\nline two\n\n\nthree\n", "\ttabs\tand\r\nCRLF\r\n", " \n \n",
    "digits 0123456789 3.14159 1,000,000 and 2026-12-06", "emoji 🦙🙂👍🏽 and 🇫🇷 flags",
    "accents: café naïve Ünïcödé façade", "CJK 你好世界 日本語のテキスト 한국어", "Привет, мир! Γειά σου Κόσμε",
    "code: def f(x):\n    return x ** 2  # comment\n", "punctuation!!! ... ??? --- (brackets) [x] {y} <z>",
    "rare characters: \U0001d518\U0001d51e\U0001d52c \u16a0\u16a2\u16a6 \u2c00\u2c01 \U00010348 \U0001f9ec\U0001fab8",
    "", " ", "\n", "a",
)
SAMPLE_TOKENS = 1500  # vocabulary tokens joined into texts, in chunks of CHUNK
CHUNK = 40
MAX_SPECIALS = 24
# Digests of (tokenizer file, vocabulary GGUF) pairs proven in this process: converting the same tokenizer
# again (several types, a test suite) skips the ~0.6 s of loading both tokenizers. Only successes are kept.
_PROVEN: set[bytes] = set()


def probe_texts(vocab: Vocab, control: bool) -> list[str]:
    """The texts to compare llama.cpp and the reference tokenizer on.

    User-defined tokens are always among them (llama.cpp and SentencePiece both read them from
    text); control tokens only with ``control`` (HF reads them, SentencePiece never does).
    """
    texts = list(PROBES)
    kinds = (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED) if control else (gguf.TokenType.USER_DEFINED,)
    named = [vocab.tokens[i] for i in vocab.special_ids.values() if vocab.types[i] in kinds]
    added = [t for t, k in zip(vocab.tokens, vocab.types, strict=True) if k in kinds and not t.startswith("[PAD")]
    for tok in dict.fromkeys(named + added[:MAX_SPECIALS]):
        texts.append(f"{tok}Hello{tok} world {tok}\n{tok} {tok}")
    normal = [i for i, k in enumerate(vocab.types) if k == gguf.TokenType.NORMAL]
    step = max(1, len(normal) // SAMPLE_TOKENS)
    if vocab.model == "gpt2":  # byte-level tokens spell bytes as printable characters: back to text
        from tokenizers.decoders import ByteLevel

        byte_level = ByteLevel()
        texts += [byte_level.decode([vocab.tokens[i] for i in normal[::step][j:j + CHUNK]])
                  for j in range(0, len(normal[::step]), CHUNK)]
        return texts
    sample = [vocab.tokens[i].replace("\u2581", " ") for i in normal[::step]]
    texts += ["".join(sample[i:i + CHUNK]) for i in range(0, len(sample), CHUNK)]
    return texts


def _reference(path: Path) -> tuple[Callable[[str], list[int]], bool, str]:
    """(tokenize, parse_special, name) of the checkpoint's own tokenizer."""
    if path.name == "tokenizer.model":
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        # SentencePiece never reads control tokens from text; llama.cpp doesn't either without parse_special.
        return (lambda text: list(sp.encode(text))), False, "SentencePiece tokenizer"
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(path))
    return (lambda text: hf.encode(text, add_special_tokens=False).ids), True, "HF tokenizer"


def check_tokenization(vocab: Vocab, write_vocab_gguf: Callable[[Path], None]) -> None:
    """Refuse a vocabulary llama.cpp would tokenize differently from ``vocab.reference``.

    ``write_vocab_gguf(path)`` writes a GGUF with the model's header and vocabulary and no tensors.
    """
    with tokenization_check(vocab, write_vocab_gguf) as proven:
        proven()


@contextlib.contextmanager
def tokenization_check(vocab: Vocab, write_vocab_gguf: Callable[[Path], None]) -> Iterator[Callable[[], None]]:
    """:func:`check_tokenization` in two halves, the second one beside the caller's work.

    The reference tokenizer is loaded (a file it can't read is refused) and tokenizes the probes before
    this yields, so llama.cpp never loads a vocabulary the reference would refuse (llama.cpp aborts the
    process on some). llama.cpp's half (its vocabulary-only load, ~0.5 s for Gemma 3's 262k tokens, and
    the same probes) then runs on a thread, outside the GIL, while the caller streams tensors. The
    yielded ``proven()`` waits for it and raises its refusal; call it before an output becomes visible.
    Leaving the block waits for the thread in any case.
    """
    if vocab.reference is None:
        yield lambda: None
        return
    with tempfile.TemporaryDirectory(prefix="edgekit-vocab-") as tmp:
        path = Path(tmp) / "vocab.gguf"
        write_vocab_gguf(path)
        # While nothing is proven (a one-off conversion) the key is only needed afterwards: hashed on the thread.
        key = _key(vocab.reference, path) if _PROVEN else None
        if key in _PROVEN:
            yield lambda: None
            return
        try:
            expected, parse_special, name = _reference_ids(vocab)
        finally:
            _return_freed_memory()  # the reference tokenizer's heap, before llama.cpp and the tensors need theirs
        half = _LlamaHalf(path, expected, parse_special, name, key or (lambda: _key(vocab.reference, path)))
        half.start()
        try:
            yield half.proven
        finally:
            half.join()
        half.proven()  # the block ended without asking: its refusal is raised here
        _PROVEN.add(half.key)


def _key(reference: Path, vocab_gguf: Path) -> bytes:
    """What a proof is kept by in :data:`_PROVEN`: the digest of the tokenizer file and the vocabulary GGUF."""
    digest = hashlib.sha256(reference.read_bytes())
    digest.update(b"\0")
    digest.update(vocab_gguf.read_bytes())
    return digest.digest()


def _reference_ids(vocab: Vocab) -> tuple[list[tuple[str, list[int]]], bool, str]:
    """The probe texts with the reference tokenizer's ids, the parse_special they need, the tokenizer's name."""
    assert vocab.reference is not None
    try:
        reference, parse_special, name = _reference(vocab.reference)
    except Exception as exc:  # the tokenizer libraries raise their own exception types on a bad file
        raise UnsupportedModel(f"{vocab.reference.name} can't be loaded by its tokenizer library ({exc})",
                               f"Copy {vocab.reference.name} again from the base model.") from exc
    return [(text, reference(text)) for text in probe_texts(vocab, control=parse_special)], parse_special, name


def _return_freed_memory() -> None:
    """Give the heap pages the check's tokenizers freed back to the OS, so the tensors converted next don't
    add their buffers on top of them (Gemma 3's 262k-token HF tokenizer holds about 300 MiB while it is
    loaded, which glibc would otherwise keep as the process's own). No library does this; glibc's
    ``malloc_trim`` is the call (it trims every thread's arena), and elsewhere (macOS, musl) it is skipped."""
    gc.collect()
    _trim_heap()


def _trim_heap() -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


class _LlamaHalf:
    """llama.cpp's half of the check on its own thread: load the vocabulary-only GGUF, tokenize the probes,
    compare."""

    def __init__(self, path: Path, expected: list[tuple[str, list[int]]], parse_special: bool, name: str,
                 key: bytes | Callable[[], bytes]) -> None:
        self._path, self._expected, self._parse_special, self._name = path, expected, parse_special, name
        self.key = key  # the proof's key in _PROVEN, or how to compute it after the comparison
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edgekit-vocab-check")

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        try:
            self._compare()
            if callable(self.key):
                self.key = self.key()
        except BaseException as exc:  # raised in the caller's thread by proven()
            self._error = exc
        finally:
            _trim_heap()  # llama.cpp's freed vocabulary, while the caller's tensors stream

    def proven(self) -> None:
        """Wait for the comparison; raise its refusal."""
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _compare(self) -> None:
        from edgekit import _llama

        with contextlib.ExitStack() as stack:
            try:
                llama_vocab = stack.enter_context(_llama.vocab_only(self._path))
            except ModelLoadError as exc:
                raise UnsupportedModel(f"llama.cpp can't load the converted vocabulary ({exc.message}: "
                                       f"{exc.hint})") from exc
            for text, theirs in self._expected:
                ours = _llama.tokenize(llama_vocab, text, False, self._parse_special)
                if ours != theirs:
                    first = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                                 min(len(ours), len(theirs)))
                    shown = text if len(text) <= 80 else text[:80] + "..."
                    raise UnsupportedModel(
                        f"llama.cpp would tokenize {shown!r} differently from the {self._name} "
                        f"(token {first}: {ours[first:first + 4]} instead of {theirs[first:first + 4]})",
                        "edgekit converts a vocabulary only when llama.cpp reproduces its tokenizer exactly; "
                        "docs/models.md (Tokenizers) lists the known differences.",
                    )
