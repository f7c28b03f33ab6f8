"""Sampling settings: one frozen dataclass used by the API, the CLI and the benchmark.

:func:`build_sampler` turns them into a llama.cpp sampler chain, so sampling
runs in C on the context's logits (no per-token copy of the vocabulary into Python).
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import EdgekitError, InvalidParam
from edgekit.runtime.speculative import check_mode

# How many recent tokens the repeat penalty looks at (llama.cpp's default).
PENALTY_LAST_N = 64
# The most alternatives Sampling(logprobs=k) reports per token (OpenAI's top_logprobs limit).
MAX_LOGPROBS = 20


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens. ``temperature <= 0`` means greedy (deterministic).

    ``seed=None`` takes the model's seed (``load(seed=...)``), else a random one;
    the same seed with the same prompt gives the same output. ``max_tokens=None``
    generates until an end-of-generation token or a full context. ``grammar``
    (GBNF text) or ``json_schema`` (a dict) constrain the output. ``presence_penalty`` and
    ``frequency_penalty`` (OpenAI's meaning, -2..2) lower the logits of tokens already in the
    last 64 tokens, once per token or per occurrence; ``logit_bias`` maps token ids to a bias
    added to their logits (-100 bans a token). ``speculative``
    ("auto", "ngram" or "off") overrides the model's ``load(speculative=...)`` for one call;
    it changes the speed only, never the output. ``logprobs=k`` (0..20; None = off) adds to each
    :class:`~edgekit.runtime.engine.Step` the chosen token's log-probability under the model (log-softmax
    of the raw logits, before any penalty, grammar or temperature) and the ``k`` most likely tokens.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    max_tokens: int | None = 256
    stop: tuple[str, ...] = field(default_factory=tuple)
    grammar: str | None = None
    json_schema: dict | None = None
    speculative: str | None = None
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(s for s in (self.stop or ()) if s))
        object.__setattr__(self, "logit_bias", _logit_bias(self.logit_bias))
        if self.seed is not None:
            object.__setattr__(self, "seed", seed32(self.seed))
        if self.max_tokens is not None and self.max_tokens < 0:
            raise EdgekitError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if self.top_k < 0 or not 0.0 <= self.top_p <= 1.0 or not 0.0 <= self.min_p <= 1.0:
            raise EdgekitError("top_k must be >= 0, and top_p and min_p must lie in [0, 1]")
        if not (-2.0 <= self.presence_penalty <= 2.0 and -2.0 <= self.frequency_penalty <= 2.0):
            raise EdgekitError("presence_penalty and frequency_penalty must lie in [-2, 2]")
        if self.repeat_penalty <= 0:
            raise EdgekitError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")
        if self.grammar is not None and self.json_schema is not None:
            raise EdgekitError("give either grammar or json_schema, not both")
        if self.speculative is not None:
            check_mode(self.speculative)
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise EdgekitError(f"logprobs must lie in 0..{MAX_LOGPROBS}, got {self.logprobs}")

    def replace(self, **changes: Any) -> Sampling:
        """A copy with ``changes`` applied (unknown names raise a clear error)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise EdgekitError(f"unknown sampling option(s): {', '.join(sorted(unknown))}",
                               f"Valid options: {', '.join(f.name for f in dataclasses.fields(self))}.")
        return dataclasses.replace(self, **changes) if changes else self

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stop"] = list(self.stop)
        d["logit_bias"] = {str(t): b for t, b in self.logit_bias}
        return d


def seed32(seed: int) -> int:
    """``seed`` as llama.cpp's 32-bit seed (OpenAI's and Python's seeds are any integer): modulo 2**32.

    As in llama.cpp, 2**32 - 1 (so also -1) is LLAMA_DEFAULT_SEED and means a random seed.
    """
    return int(seed) % 2**32


def _logit_bias(bias: Any) -> tuple[tuple[int, float], ...]:
    """``{token id: bias}`` (or pairs) checked: ids >= 0, biases in [-100, 100]. The vocabulary's
    upper bound is checked by :func:`check_vocab` once the model is known."""
    pairs = bias.items() if isinstance(bias, dict) else (bias or ())
    out = []
    try:
        for t, b in pairs:
            if isinstance(b, bool) or isinstance(t, bool):
                raise TypeError
            out.append((int(t), float(b)))
    except (TypeError, ValueError, OverflowError):
        raise InvalidParam("logit_bias", "must map token ids to numbers") from None
    for t, b in out:
        if t < 0:
            raise InvalidParam("logit_bias", f"names token id {t}, which is negative")
        if not -100.0 <= b <= 100.0:
            raise InvalidParam("logit_bias", f"biases must lie in [-100, 100], got {b}")
    return tuple(out)


def check_vocab(s: Sampling, n_vocab: int) -> None:
    """Raise :class:`~edgekit.errors.InvalidParam` if ``s.logit_bias`` names a token outside the vocabulary."""
    bad = [t for t, _ in s.logit_bias if t >= n_vocab]
    if bad:
        raise InvalidParam("logit_bias", f"names token id {bad[0]}, outside the vocabulary (0..{n_vocab - 1})")


# llama-cpp-python's schema converter spells out repetitions: a string's or an array's length bounds and
# a pattern's {n,m} cost about 8 bytes of grammar per unit, so one number in a small request
# ("maxLength": 1000000000) would take gigabytes. Counts above this are refused; an answer that long
# would not fit a small model's context anyway.
MAX_SCHEMA_REPEAT = 32768
_REPEAT_KEYS = ("minLength", "maxLength", "minItems", "maxItems")
_PATTERN_COUNT = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def _check_repeats(schema: Any, param: str) -> None:
    stack, seen = [schema], set()
    while stack:
        value = stack.pop()
        if isinstance(value, (list, dict)):
            if id(value) in seen:  # a schema built in Python may hold itself; json.dumps refuses it later
                continue
            seen.add(id(value))
        if isinstance(value, list):
            stack += value
        elif isinstance(value, dict):
            for key, item in value.items():
                counts: list[Any] = [item] if key in _REPEAT_KEYS else []
                if key == "pattern" and isinstance(item, str):
                    counts = [int(n) if len(n) < 10 else 10**10  # int() refuses thousands of digits
                              for m in _PATTERN_COUNT.finditer(item) for n in m.groups() if n]
                big = [n for n in counts if isinstance(n, (int, float)) and n > MAX_SCHEMA_REPEAT]
                if big:
                    raise InvalidParam(param, f"asks for {key} {big[0]}; a grammar can count to "
                                              f"{MAX_SCHEMA_REPEAT} at most")
                stack.append(item)


def schema_grammar(schema: Any, param: str = "json_schema") -> str:
    """GBNF for a JSON schema (root rule ``root``), by llama.cpp's converter; a schema it can't take
    raises :class:`~edgekit.errors.InvalidParam` for ``param`` (the request field that holds it)."""
    from edgekit import _llama

    _check_repeats(schema, param)
    try:
        return _llama.json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises plain exceptions (AssertionError, KeyError...) on bad schemas
        raise InvalidParam(param, f"can't be turned into a grammar: {exc}") from exc


def resolve(base: Sampling | None, sampling: Sampling | None, kwargs: dict[str, Any]) -> Sampling:
    """Merge: ``base`` defaults, then an explicit ``sampling`` object, then keyword overrides."""
    result = sampling if sampling is not None else (base or Sampling())
    return result.replace(**kwargs)


def grammar_text(s: Sampling) -> str | None:
    """The GBNF grammar for ``s`` (converting ``json_schema`` if given), or None."""
    if s.json_schema is not None:
        return schema_grammar(s.json_schema)
    return s.grammar


def build_sampler(s: Sampling, vocab: Any, n_vocab: int, *, default_seed: int | None, history: Sequence[int] = ()) -> Any:
    """A llama.cpp sampler chain for ``s``; the caller frees it with ``llama_sampler_free``.

    ``history`` (recent prompt tokens) primes the repeat penalty, so it also
    covers the prompt, as llama.cpp's own tools do.
    """
    from edgekit import _llama

    check_vocab(s, n_vocab)
    gbnf = grammar_text(s)
    grammar = _llama.utf8(gbnf, "grammar" if s.grammar is not None else "json_schema") if gbnf else None
    L = _llama.lib()
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    if s.logit_bias:
        biases = (L.llama_logit_bias * len(s.logit_bias))(*[L.llama_logit_bias(t, b) for t, b in s.logit_bias])
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_logit_bias(n_vocab, len(s.logit_bias), biases))
    if s.repeat_penalty != 1.0 or s.presence_penalty or s.frequency_penalty:
        pen = L.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, s.repeat_penalty, s.frequency_penalty,
                                             s.presence_penalty)
        for tok in list(history)[-PENALTY_LAST_N:]:
            L.llama_sampler_accept(pen, tok)
        L.llama_sampler_chain_add(chain, pen)
    if grammar:
        g = L.llama_sampler_init_grammar(vocab, grammar, b"root")
        if not g:
            L.llama_sampler_free(chain)
            raise InvalidParam("grammar", "is not valid GBNF", "Check its syntax; the root rule must be named 'root'.")
        L.llama_sampler_chain_add(chain, g)
    if s.temperature <= 0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        return chain
    seed = s.seed if s.seed is not None else default_seed
    if seed is None:
        seed = random.randrange(2**31)
    if s.top_k > 0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(s.top_k))
    if s.top_p < 1.0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(s.top_p, 1))
    if s.min_p > 0.0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(s.min_p, 1))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(s.temperature))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed32(seed)))
    return chain
