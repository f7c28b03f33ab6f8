"""A draft model for speculative decoding: a small model with the target's vocabulary guesses
the next few tokens; the target verifies them in one batch (:mod:`edgekit.runtime.speculative`).

The draft is loaded like any model (through :func:`edgekit.llama_handles.load_weights`, so the
weight buffers that crash batched decodes on some CPUs are avoided) with its own context: the
target's n_ctx, an f16 KV cache, and one sequence per target slot. It keeps, per sequence, the
tokens whose KV it holds, and before each draft reuses the prefix they share with the text
(as :class:`edgekit.Model` does with its prompt cache), so it evaluates only what is new:
usually the target's last token or two.

Drafting is greedy: the draft's most likely token, found over the logits row llama.cpp wrote
(numpy, no Python loop over the vocabulary), and a draft stops early when that token's
probability falls below ``p_min``: an unsure guess is rarely accepted and costs verification.
A greedy draft is a fixed proposal (one-hot), so the target's rule "sample as usual, keep the
drafted token while the sample equals it" is exactly the speculative-sampling acceptance rule
for that proposal: greedy output stays token for token the same, sampled output keeps its
distribution.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgekit import _llama, llama_handles
from edgekit.errors import EdgekitError
from edgekit.gguf_check import check
from edgekit.planner import plan_info, require_fit
from edgekit.runtime import draft_cost

# Stop a draft when the draft model's top token has less probability than this.
P_MIN = 0.5
# Vocabularies may differ in size by this many tokens (extra special tokens at the end), as llama.cpp allows.
VOCAB_SIZE_SLACK = 128
# Token ids below this are not compared (control tokens that tools number differently), as llama.cpp does.
FIRST_COMPARED_ID = 5
# How many token texts are compared, spread over the shared id range.
VOCAB_SAMPLE = 512


def check_vocab(target_vocab: Any, draft_vocab: Any, target_name: str, draft_name: str) -> None:
    """Raise EdgekitError naming what differs unless the draft model tokenizes like the target."""
    L = _llama.lib()
    problems = []
    if L.llama_vocab_type(target_vocab) != L.llama_vocab_type(draft_vocab):
        problems.append("tokenizer type")
    n_t, n_d = L.llama_vocab_n_tokens(target_vocab), L.llama_vocab_n_tokens(draft_vocab)
    if abs(n_t - n_d) > VOCAB_SIZE_SLACK:
        problems.append(f"vocabulary size ({n_t} vs {n_d})")
    for name in ("bos", "eos", "eot"):
        a, b = getattr(L, f"llama_vocab_{name}")(target_vocab), getattr(L, f"llama_vocab_{name}")(draft_vocab)
        if a != b:
            problems.append(f"{name.upper()} id ({a} vs {b})")
    n = min(n_t, n_d)
    if not problems and n > FIRST_COMPARED_ID:
        step = max(1, (n - FIRST_COMPARED_ID) // VOCAB_SAMPLE)
        for tok in [*range(FIRST_COMPARED_ID, n, step), n - 1]:
            a, b = L.llama_vocab_get_text(target_vocab, tok), L.llama_vocab_get_text(draft_vocab, tok)
            if a != b:
                problems.append(f"text of token {tok} ({a!r} vs {b!r})")
                break
    if problems:
        raise EdgekitError(f"the draft model {draft_name} does not share {target_name}'s vocabulary: "
                           + ", ".join(problems),
                           "A draft model must use the target's tokenizer (e.g. a smaller model of the same family).")


class DraftModel:
    """A small model that drafts for a target (see the module docstring). Close it to free it;
    :class:`edgekit.Model` closes the draft it was loaded with.

    ``cost`` estimates the time to draft one token relative to one target step, from the two
    weight sizes (decoding one token reads all weights once).
    """

    def __init__(self, path: str | Path, *, target_vocab: Any, target_size: int, target_name: str, n_ctx: int,
                 threads: int, n_seq_max: int = 1, gpu_layers: int = 0, n_batch: int = 512,
                 p_min: float = P_MIN) -> None:
        L = _llama.lib()
        self._L = L
        self._model = self._ctx = None
        info = check(Path(path))
        self.path = info.path
        self.p_min = p_min
        self.n_batch = n_batch
        self._model = llama_handles.load_weights(info, gpu_layers=gpu_layers, mmap=True, mlock=False,
                                           buffers=_llama.weight_buffers(info.path, info.tensor_types, info.matrices),
                                           progress=None)
        try:
            vocab = L.llama_model_get_vocab(self._model)
            check_vocab(target_vocab, vocab, target_name, info.path.name)
            if L.llama_model_is_recurrent(self._model) or L.llama_model_is_hybrid(self._model):
                raise EdgekitError(f"the draft model {info.path.name} has a recurrent state, which can't drop "
                                   "rejected guesses", "Use a transformer draft model.")
            plan = plan_info(info, n_ctx, "f16", "auto", n_batch, slots=n_seq_max)
            require_fit(plan)
            self._ctx = llama_handles.new_context(self._model, info, plan, threads=threads, n_batch=n_batch,
                                            n_ubatch=n_batch, rope_scaling=None)
        except BaseException:
            self.close()
            raise
        self._mem = L.llama_get_memory(self._ctx)
        self._n_swa = L.llama_model_n_swa(self._model)
        self.n_ctx: int = plan.n_ctx  # per sequence
        self.n_seq_max = n_seq_max
        self.n_vocab = L.llama_vocab_n_tokens(vocab)
        self._usable = min(self.n_vocab, L.llama_vocab_n_tokens(target_vocab))  # ids both models know
        # its own work, timed, for the drafting rule; the prior step cost is the weights' size ratio
        self.costs = draft_cost.DraftCosts(float(L.llama_model_size(self._model)) / max(1, target_size))
        self._cached: dict[int, list[int]] = {}  # per sequence: exactly the tokens whose KV is in the cache
        self._batch = _llama.Batch(n_batch)
        # A new context's first decode pays a one-off setup (11 ms against a 6 ms step, SmolLM2 Q4_0): made
        # here, untimed, so the first step the drafting rule times is a step.
        _llama.decode(self._ctx, self._batch.fill([0], 0))
        L.llama_memory_clear(self._mem, True)

    @property
    def cost(self) -> float:
        """One draft step relative to a target step before any is timed: a price set by hand (studies and
        tests: then it is always used), else the weights' size ratio. The rule prices by the timed step once
        it has one (:class:`edgekit.runtime.draft_cost.DraftCosts`)."""
        c = self.costs
        return c.fixed if c.fixed is not None else c.prior

    @cost.setter
    def cost(self, value: float) -> None:
        self.costs.fixed = value

    @property
    def decode_calls(self) -> int:
        """How many times the draft model has called ``llama_decode`` (its probes and drafts)."""
        return self.costs.decodes

    def close(self) -> None:
        """Free the context and the weights (the model it drafts for closes it once no step uses it)."""
        if getattr(self, "_batch", None) is not None:
            self._batch.free()
            self._batch = None
        llama_handles.free(self)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # also a DraftModel whose __init__ failed early
            pass

    def __repr__(self) -> str:
        return f"DraftModel({self.path.name}, n_ctx={self.n_ctx}, p_min={self.p_min})"

    def drafter(self, prompt: Iterable[int], seq_id: int = 0) -> ModelDrafter:
        """A drafter (the :class:`edgekit.runtime.speculative.Drafter` interface) for one call on sequence ``seq_id``."""
        if not 0 <= seq_id < self.n_seq_max:
            raise EdgekitError(f"draft sequence {seq_id} is out of range (the draft holds {self.n_seq_max})")
        return ModelDrafter(self, prompt, seq_id)

    def reset(self, seq_id: int | None = None) -> None:
        """Forget the cached tokens of ``seq_id`` (None: of every sequence)."""
        if not self._ctx:
            return
        for seq in list(self._cached) if seq_id is None else [seq_id]:
            self._L.llama_memory_seq_rm(self._mem, seq, 0, -1)
            self._cached.pop(seq, None)

    def _decode(self, tokens: list[int], first_pos: int, seq_id: int) -> bool:
        """Evaluate ``tokens`` at ``first_pos``... on ``seq_id`` in n_batch chunks (logits for the last one)."""
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            b = self._batch.fill(chunk, first_pos + start, seq_id, logits_from=len(chunk) - 1)
            if _llama.decode(self._ctx, b) != 0:
                return False
            self.costs.observe(len(chunk), _llama.decode_seconds())
        return True

    def pending(self, text: list[int], seq_id: int = 0) -> int:
        """How many tokens of ``text`` the draft would evaluate before its first guess (at least 1)."""
        return max(1, len(text) - _llama.shared_prefix(self._cached.get(seq_id, []), text))

    def _top(self) -> tuple[int, float]:
        """The most likely next token after the last evaluated one, and its probability."""
        import numpy as np

        t0 = time.perf_counter()
        row = np.ctypeslib.as_array(self._L.llama_get_logits_ith(self._ctx, -1), shape=(self.n_vocab,))
        top = int(row.argmax())
        p = float(1.0 / np.exp(row - row[top]).sum())
        self.costs.pick(time.perf_counter() - t0)
        return top, p

    def _catch_up(self, text: list[int], seq_id: int, most: int | None = None) -> int | None:
        """Evaluate the tokens of ``text`` the draft hasn't seen (at most ``most``) on ``seq_id``, after the
        prefix its cache shares with ``text``: how many, or None if llama.cpp failed (the sequence is reset)."""
        cached = self._cached.setdefault(seq_id, [])
        n = _llama.keep_prefix(self._mem, seq_id, cached, _llama.shared_prefix(cached, text), self._n_swa)
        new = text[n:] if most is None else text[n : n + most]
        if not self._decode(new, n, seq_id):
            self.reset(seq_id)
            return None
        cached.extend(new)
        return len(new)

    def time_step(self, text: list[int], seq_id: int = 0) -> bool:
        """Evaluate the first token of ``text`` the draft hasn't seen, alone: a timed single step, and part of
        catching up on ``text`` (False if there is none, or it failed)."""
        if not self._ctx:
            raise EdgekitError("the draft model is closed")
        return bool(self._catch_up(text[: self.n_ctx], seq_id, most=1))

    def draft(self, text: list[int], k: int, seq_id: int = 0) -> list[int]:
        """Up to ``k`` greedy guesses to follow ``text`` on sequence ``seq_id`` ([] if the draft can't help)."""
        if not self._ctx:
            raise EdgekitError("the draft model is closed")
        k = min(k, self.n_ctx - len(text))
        if k < 1 or not text or self._catch_up(text, seq_id) is None:
            return []
        cached = self._cached[seq_id]
        out: list[int] = []
        while True:
            tok, p = self._top()
            if p < self.p_min or tok >= self._usable:
                break
            out.append(tok)
            self.costs.guesses += 1
            if len(out) == k:
                break
            if not self._decode([tok], len(cached), seq_id):
                self.reset(seq_id)
                break
            cached.append(tok)
        return out


class ModelDrafter:
    """One call's drafting by a :class:`DraftModel`: the text so far, and the draft model's guesses."""

    free = False  # every guess costs a draft-model step
    # A small model's guesses don't come in copy runs: one pair of rates, learned in half the drafts
    streaks = False
    level = 0
    priors = ((0.6, 0.7),)  # a draft model is chosen because it mostly agrees with the target

    def __init__(self, model: DraftModel, prompt: Iterable[int], seq_id: int) -> None:
        self.model = model
        self.seq_id = seq_id
        self.text: list[int] = list(prompt)  # the target's text so far
        self._prompt_len = len(self.text)
        self.cost = model.cost
        self.rates = model.costs.rates  # the pair's acceptance, kept across calls
        self._dropped = False

    def plan(self, limit: int, p_first: float, p_next: float, cost: Any) -> int:
        """Tokens to draft now, pricing the draft model's own work (:func:`draft_cost.plan`); 0 = none.
        A draft that can't pay even with every guess right is dropped for the call (after one timed step, it
        evaluates nothing more)."""
        if self._dropped:
            return 0
        if self.model.costs.fixed is None and self.model.costs.step_s is None:
            # Time one draft step before anything else, on the first token it hasn't seen (part of catching
            # up anyway), once the target's step is timed too: a draft too slow to ever pay is then dropped
            # before it evaluates the prompt. (A fixed curve, in studies and tests, times no target step.)
            if getattr(cost, "timed", False) and getattr(cost, "one_token_s", None) is None:
                return 0
            if not self.model.time_step(self.text, self.seq_id):
                return 0
        k = draft_cost.plan(self.model.costs, self.model.pending(self.text, self.seq_id), limit, p_first,
                            p_next, cost, emitted=len(self.text) - self._prompt_len)
        self._dropped = k < 0
        return max(k, 0)

    def __len__(self) -> int:
        return len(self.text)

    def extend(self, tokens: Iterable[int]) -> None:
        self.text.extend(tokens)

    def append(self, tok: int) -> None:
        self.text.append(tok)

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` tokens the draft model expects next."""
        return self.model.draft(self.text, k, self.seq_id)
