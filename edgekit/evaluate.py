"""Quality of a GGUF: perplexity, and KL divergence against a reference model.

The scores follow llama.cpp's ``llama-perplexity`` exactly, so numbers are
comparable with it:

- the text is tokenized once (with BOS when the vocabulary adds one) and cut into
  ``len(tokens) // n_ctx`` chunks of ``n_ctx`` tokens; each chunk is evaluated from
  an empty cache with its first token replaced by BOS;
- only the second half of each chunk is scored: logits at positions
  ``n_ctx/2 .. n_ctx-2`` predict the next token, the first half is context;
- the reference's log-probabilities are stored per token as 16-bit codes over the
  top 16 nats (llama.cpp's ``--kl-divergence-base`` file, which this module reads and
  writes byte for byte), and KLD, "same top p" and Δp are computed against them.

Memory stays bounded: one chunk's logits at a time (``n_ctx/2 x n_vocab`` floats),
processed in row blocks; the reference streams from its file chunk by chunk.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit import _llama
from edgekit.errors import EvalError
from edgekit.progress import ProgressFn, report

__all__ = ["EvalResult", "evaluate", "save_reference_logits", "default_text", "read_logits_header"]

_MAGIC = b"_logits_"
_ROWS = 32  # rows of logits processed at once: bounds the numpy temporaries


def default_text() -> str:
    """The evaluation text shipped with edgekit (original prose written for the project)."""
    from importlib.resources import files

    return files("edgekit").joinpath("data/eval.txt").read_text(encoding="utf-8")


@dataclass
class EvalResult:
    """Scores of one evaluation. KLD fields are ``None`` without a reference.

    KLD values are reported as computed, never clamped, like llama-perplexity: the
    reference's log-probs are 16-bit codes (steps of at most 16/65535 nats), so a
    model compared with itself can score a hair below zero (e.g. -5e-7).
    """

    model: str
    n_ctx: int
    n_chunks: int
    n_tokens: int  # scored tokens
    perplexity: float
    perplexity_err: float
    seconds: float
    reference: str | None = None
    perplexity_base: float | None = None
    ln_ppl_ratio: float | None = None
    kld_mean: float | None = None
    kld_err: float | None = None
    kld_median: float | None = None
    kld_p99: float | None = None
    kld_max: float | None = None
    same_top_p: float | None = None
    same_top_p_err: float | None = None
    rms_dp: float | None = None
    rms_dp_err: float | None = None
    mean_dp: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return asdict(self)


def _mean_unc(s: float, s2: float, n: int) -> tuple[float, float]:
    """llama-perplexity's mean and standard error from running sums."""
    if n < 1:
        return 0.0, 0.0
    f = s / n
    df = s2 / n - f * f
    return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)


class _Runner:
    """A model loaded by :func:`edgekit.load` whose context returns the scored logits of one chunk."""

    def __init__(self, path: Path, n_ctx: int, threads: int | None) -> None:
        from edgekit.runtime.load import load

        if not path.is_file():
            raise EvalError(f"Model file {path} does not exist.", "Check the path.")
        # Like llama-perplexity: an f16 KV cache and the whole chunk in one llama_decode.
        self.model = load(path, n_ctx=n_ctx, kv_cache="f16", threads=threads, n_batch=n_ctx,
                          n_ubatch=min(n_ctx, 512))
        self._ll = ll = _llama.lib()
        self.ctx = self.model.llama_context
        vocab = ll.llama_model_get_vocab(self.model.llama_model)
        self.n_vocab = self.model.n_vocab
        self.bos = int(ll.llama_vocab_bos(vocab))
        self.add_bos = bool(ll.llama_vocab_get_add_bos(vocab)) and self.bos >= 0
        self.n_ctx = n_ctx
        # The whole chunk in one batch, with logits at the scored positions (the second half).
        self.batch = _llama.Batch(n_ctx)

    def tokenize(self, text: str) -> list[int]:
        """Tokens of ``text`` as llama-perplexity makes them (special tokens added, not parsed)."""
        return self.model.tokenize(text, add_special=True, parse_special=False)

    def chunk_logits(self, chunk: list[int]):
        """Logits (float32, ``n_ctx-1-n_ctx/2`` x ``n_vocab``) at the scored positions of one chunk."""
        import numpy as np

        ll, n, first = self._ll, self.n_ctx, self.n_ctx // 2
        ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)
        tokens = list(chunk)
        if self.add_bos:
            tokens[0] = self.bos
        rc = _llama.decode(self.ctx, self.batch.fill(tokens, 0, logits_from=first, logits_to=n - 1))
        if rc != 0:
            raise EvalError(f"llama.cpp failed to evaluate a chunk (code {rc}).", "Try a smaller --ctx.")
        n_out = n - 1 - first
        ptr = ll.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out, self.n_vocab)).copy()

    def close(self) -> None:
        self.batch.free()
        self.model.close()


@contextlib.contextmanager
def _runner(path: Path, n_ctx: int, threads: int | None) -> Iterator[_Runner]:
    r = _Runner(path, n_ctx, threads)
    try:
        yield r
    finally:
        r.close()


def _chunks(tokens: list[int], n_ctx: int, n_chunks: int | None) -> int:
    if n_ctx < 16:
        raise EvalError(f"Context {n_ctx} is too small to score anything.", "Use --ctx 16 or more (512 is usual).")
    if len(tokens) < n_ctx:
        raise EvalError(f"The evaluation text is {len(tokens)} tokens long, shorter than the context ({n_ctx}).",
                        "Give a longer --text or a smaller --ctx.")
    n = len(tokens) // n_ctx
    return min(n, n_chunks) if n_chunks else n


def _blocks(r: _Runner, tokens: list[int], n: int, progress: ProgressFn | None, stage: str) -> Iterator[tuple]:
    """(logits rows, next tokens) of every chunk's scored half, ``_ROWS`` rows at a time."""
    import numpy as np

    n_ctx, first = r.n_ctx, r.n_ctx // 2
    for i in range(n):
        report(progress, stage, i, n)
        chunk = tokens[i * n_ctx:(i + 1) * n_ctx]
        logits = r.chunk_logits(chunk)
        targets = np.asarray(chunk[first + 1:], dtype=np.int64)
        for j in range(0, len(targets), _ROWS):
            yield logits[j:j + _ROWS], targets[j:j + _ROWS]
    report(progress, stage, n, n)


def _encode_rows(x, toks):
    """llama.cpp's base log-prob rows (uint16 codes over the top 16 nats) and each row's NLL."""
    import numpy as np

    mx, lse = _llama.log_normalizer(x)
    mn = np.maximum(x.min(axis=1), mx - 16)
    min_lp = (mn - mx - lse).astype(np.float32)
    scale = ((mx - mn) / np.float32(65535)).astype(np.float32)
    inv = np.where(scale > 0, 1 / np.where(scale > 0, scale, 1), 0).astype(np.float32)
    codes = np.where(x > mn[:, None], np.rint(inv[:, None] * (x - mn[:, None])), 0).astype(np.uint16)
    n_vocab = x.shape[1]
    nv = 2 * ((n_vocab + 1) // 2) + 4
    rows = np.zeros((x.shape[0], nv), dtype=np.uint16)
    rows[:, :4] = np.stack([scale, min_lp], axis=1).astype(np.float32).view(np.uint16)
    rows[:, 4:4 + n_vocab] = codes
    nll = mx.astype(np.float64) + lse - x[np.arange(len(toks)), toks]
    return rows, nll


def save_reference_logits(model: str | Path, out: str | Path, *, text: str | None = None, n_ctx: int = 512,
                          n_chunks: int | None = None, threads: int | None = None,
                          progress: ProgressFn | None = None) -> EvalResult:
    """Evaluate ``model`` and stream its log-probs to ``out`` (llama.cpp's kl-divergence-base format).

    Returns the reference's own perplexity. The file is written to a temp name and
    renamed when complete.
    """
    return _score(Path(model), Path(out), text, n_ctx, n_chunks, threads, progress)


def _score(path: Path, out: Path | None, text: str | None, n_ctx: int, n_chunks: int | None,
           threads: int | None, progress: ProgressFn | None) -> EvalResult:
    """Perplexity of ``path``; with ``out``, also write its log-probs there."""
    import time

    import numpy as np

    from edgekit.atomic import atomic_output

    t0 = time.perf_counter()
    s = s2 = 0.0
    count = 0
    with _runner(path, n_ctx, threads) as r, contextlib.ExitStack() as stack:
        tokens = r.tokenize(text if text is not None else default_text())
        n = _chunks(tokens, n_ctx, n_chunks)
        f = None
        if out is not None:
            # Closed before atomic_output renames it (the stack unwinds in reverse).
            f = stack.enter_context(open(stack.enter_context(atomic_output(out)), "wb"))
            f.write(_MAGIC)
            np.array([n_ctx], dtype=np.uint32).tofile(f)
            np.array([r.n_vocab, n], dtype=np.int32).tofile(f)
            np.asarray(tokens[: n * n_ctx], dtype=np.int32).tofile(f)
        for x, toks in _blocks(r, tokens, n, progress, "reference" if f else "evaluate"):
            rows, nll = _encode_rows(x, toks)
            if f is not None:
                rows.tofile(f)
            s += float(nll.sum())
            s2 += float((nll * nll).sum())
            count += len(nll)
    mean, unc = _mean_unc(s, s2, count)
    ppl = math.exp(mean)
    return EvalResult(model=str(path), n_ctx=n_ctx, n_chunks=n, n_tokens=count, perplexity=ppl,
                      perplexity_err=ppl * unc, seconds=time.perf_counter() - t0)


def read_logits_header(path: str | Path) -> tuple[int, int, int, list[int]]:
    """(n_ctx, n_vocab, n_chunk, tokens) of a kl-divergence-base file; raises EvalError if it isn't one."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise EvalError(f"Reference logits file {p} does not exist.", "Create it with `edgekit eval REF.gguf --save-logits FILE`.")
    with open(p, "rb") as f:
        if f.read(8) != _MAGIC:
            raise EvalError(f"{p} is not a reference logits file.", "Create it with `edgekit eval REF.gguf --save-logits FILE`.")
        n_ctx = int(np.fromfile(f, dtype=np.uint32, count=1)[0])
        n_vocab, n_chunk = (int(v) for v in np.fromfile(f, dtype=np.int32, count=2))
        tokens = np.fromfile(f, dtype=np.int32, count=n_ctx * n_chunk)
    first = n_ctx // 2
    nv = 2 * ((n_vocab + 1) // 2) + 4
    need = 20 + 4 * n_ctx * n_chunk + 2 * nv * (n_ctx - 1 - first) * n_chunk
    if len(tokens) != n_ctx * n_chunk or p.stat().st_size < need:
        raise EvalError(f"Reference logits file {p} is truncated.", "Re-create it with --save-logits.")
    return n_ctx, n_vocab, n_chunk, tokens.tolist()


def evaluate(model: str | Path, *, reference: str | Path | None = None, reference_logits: str | Path | None = None,
             save_logits: str | Path | None = None, text: str | None = None, n_ctx: int = 512,
             n_chunks: int | None = None, threads: int | None = None,
             progress: ProgressFn | None = None) -> EvalResult:
    """Perplexity of ``model``, plus KLD/top-1/Δp against a reference when one is given.

    ``reference`` is a GGUF evaluated first (its log-probs go to ``save_logits`` or
    a temp file); ``reference_logits`` is a file saved earlier (then its own context
    size and tokens are used). Without either, ``save_logits`` saves ``model``'s own
    log-probs for later use as a reference.
    """
    path = Path(model)
    if reference is not None and reference_logits is not None:
        raise EvalError("Give either a reference model or a reference logits file, not both.")
    if reference is None and reference_logits is None:
        if save_logits is not None:
            return save_reference_logits(path, save_logits, text=text, n_ctx=n_ctx, n_chunks=n_chunks,
                                         threads=threads, progress=progress)
        return _score(path, None, text, n_ctx, n_chunks, threads, progress)
    if reference_logits is not None:
        if save_logits is not None:
            raise EvalError("--save-logits saves a reference; with --reference-logits there is nothing new to save.",
                            "Drop --save-logits.")
        return _compare(path, Path(reference_logits), None, n_chunks, threads, progress)
    ref = Path(reference)
    if save_logits is not None:
        base = save_reference_logits(ref, save_logits, text=text, n_ctx=n_ctx, n_chunks=n_chunks,
                                     threads=threads, progress=progress)
        return _compare(path, Path(save_logits), base, None, threads, progress, text=text)
    from edgekit.atomic import scratch_file
    from edgekit.paths import cache_dir

    with scratch_file(cache_dir(), suffix=".logits") as tmp:
        base = save_reference_logits(ref, tmp, text=text, n_ctx=n_ctx, n_chunks=n_chunks,
                                     threads=threads, progress=progress)
        res = _compare(path, tmp, base, None, threads, progress, text=text)
    res.reference = str(ref)
    return res


def _compare(path: Path, logits_file: Path, base: EvalResult | None, n_chunks: int | None, threads: int | None,
             progress: ProgressFn | None, text: str | None = None) -> EvalResult:
    """Score ``path`` against a kl-divergence-base file, exactly as llama-perplexity's kl_divergence()."""
    import time

    import numpy as np

    t0 = time.perf_counter()
    n_ctx, n_vocab, n_chunk, tokens = read_logits_header(logits_file)
    if n_chunks:
        n_chunk = min(n_chunk, n_chunks)
    nv = 2 * ((n_vocab + 1) // 2) + 4
    acc = dict.fromkeys(("nll", "nll2", "nllb", "nllb2", "nll_nllb", "kld", "kld2", "dp", "dp2", "dp4"), 0.0)
    same_top = count = 0
    kld_values: list = []
    dp_values: list = []
    with _runner(path, n_ctx, threads) as r, open(logits_file, "rb") as f:
        if r.n_vocab != n_vocab:
            raise EvalError(f"The reference has a vocabulary of {n_vocab} tokens but {path.name} has {r.n_vocab}.",
                            "Compare models that share a tokenizer (e.g. the F16 GGUF it was quantized from).")
        if text is not None or base is not None:
            mine = r.tokenize(text if text is not None else default_text())[: len(tokens)]
            if mine != tokens[: len(mine)]:
                raise EvalError(f"{path.name} tokenizes the text differently from the reference.",
                                "Compare models that share a tokenizer (e.g. the F16 GGUF it was quantized from).")
        f.seek(20 + 4 * len(tokens))
        for x, tok in _blocks(r, tokens, n_chunk, progress, "evaluate"):
            k = len(x)
            raw = np.fromfile(f, dtype=np.uint16, count=k * nv)
            if raw.size != k * nv:
                raise EvalError(f"Reference logits file {logits_file} is truncated.", "Re-create it with --save-logits.")
            raw = raw.reshape(k, nv)
            hdr = np.ascontiguousarray(raw[:, :4]).view(np.float32)
            scale, min_lp = hdr[:, 0:1], hdr[:, 1:2]
            codes = raw[:, 4:4 + n_vocab]
            idx = np.arange(k)
            mx, lse = _llama.log_normalizer(x)
            nll = (mx + lse - x[idx, tok]).astype(np.float64)
            nll_base = -(scale[:, 0] * codes[idx, tok] + min_lp[:, 0]).astype(np.float64)
            lp_base = scale * codes + min_lp  # reference log-probs, float32
            logp = x - (mx + lse)[:, None]
            kld = np.where(lp_base > -16, np.exp(lp_base) * (lp_base - logp), 0).sum(axis=1, dtype=np.float64)
            same_top += int((x.argmax(axis=1) == codes.argmax(axis=1)).sum())
            dp = (np.exp(-nll) - np.exp(-nll_base)).astype(np.float32).astype(np.float64)
            acc["nll"] += nll.sum()
            acc["nll2"] += (nll * nll).sum()
            acc["nllb"] += nll_base.sum()
            acc["nllb2"] += (nll_base * nll_base).sum()
            acc["nll_nllb"] += (nll * nll_base).sum()
            acc["kld"] += kld.sum()
            acc["kld2"] += (kld * kld).sum()
            acc["dp"] += dp.sum()
            acc["dp2"] += (dp * dp).sum()
            acc["dp4"] += (dp ** 4).sum()
            count += k
            kld_values.append(kld.astype(np.float32))
            dp_values.append(dp.astype(np.float32))
    kv = np.sort(np.concatenate(kld_values))
    dv = np.concatenate(dp_values)
    log_ppl, log_ppl_unc = _mean_unc(acc["nll"], acc["nll2"], count)
    log_base, log_base_unc = _mean_unc(acc["nllb"], acc["nllb2"], count)
    cov = (acc["nll_nllb"] / count - acc["nll"] / count * acc["nllb"] / count) / (count - 1) if count >= 10 else 0.0
    ratio_err = math.sqrt(max(0.0, log_ppl_unc ** 2 + log_base_unc ** 2 - 2 * cov))
    kld_mean, kld_err = _mean_unc(acc["kld"], acc["kld2"], count)
    mse, mse_unc = _mean_unc(acc["dp2"], acc["dp4"], count)
    rms = math.sqrt(mse)
    top = same_top / count
    ppl = math.exp(log_ppl)
    return EvalResult(
        model=str(path), n_ctx=n_ctx, n_chunks=n_chunk, n_tokens=count, perplexity=ppl,
        perplexity_err=ppl * log_ppl_unc, seconds=time.perf_counter() - t0,
        reference=str(base.model) if base is not None else str(logits_file),
        perplexity_base=math.exp(log_base), ln_ppl_ratio=float(log_ppl - log_base),
        kld_mean=float(kld_mean), kld_err=float(kld_err), kld_median=float(np.median(kv)),
        kld_p99=float(np.percentile(kv, 99.0)), kld_max=float(kv[-1]),
        same_top_p=top, same_top_p_err=math.sqrt(top * (1 - top) / (count - 1)) if count > 1 else 0.0,
        rms_dp=rms, rms_dp_err=(0.5 / rms * mse_unc) if rms > 0 else 0.0,
        mean_dp=float(acc["dp"] / count),
        extra={"ln_ppl_ratio_err": float(ratio_err), "dp_p99": float(np.percentile(dv, 99.0)), "max_abs_dp": float(np.abs(dv).max())},
    )
