"""Speculative decoding: who drafts (the text itself, or a small draft model), and how much.

Grounded answers (rewrites, extractions, quotes, code edits) repeat long runs of their
prompt. :class:`NgramDrafter` proposes the tokens that followed the latest earlier
occurrence of the text's last few tokens; :class:`edgekit.runtime.draft.DraftModel` proposes a
small model's greedy continuation. :class:`Speculation` decides, before every step,
whether to draft and how many tokens, by weighing the acceptance it has measured
against what verifying a batch costs on this device (:class:`CostCurve`, timed as the model
runs; :func:`verify_cost` is the prior it starts from).

The engine verifies a draft in the sequence's batch and samples the target at every position
with its usual sampler chain; a drafted token is kept only while the target's own sample
equals it, so the output is what plain decoding would give (see ``Engine._sample`` in
:mod:`edgekit.runtime.engine`).
Because a draft is a fixed guess (a one-hot proposal), "sample from the target, keep it if
it equals the guess" is the speculative-sampling acceptance rule: sampling stays exact.

The rule, in short (docs/speculative.md has the numbers): a draft of k tokens costs
``cost(k + 1)`` target steps plus k drafting steps of the drafter, and is expected to
yield ``1 + p_first * (1 + p_next + ... + p_next**(k-1))`` tokens, where ``p_first`` is the
measured acceptance of a draft's first token and ``p_next`` that of a token after an accepted
one, both measured per situation (the drafter's evidence, such as how long the copied context
matches, and whether the last token was guessed right). The length with the best tokens per
unit of time wins; k = 0 (plain decoding) wins whenever drafting doesn't pay. A prompt-lookup
guess costs nothing, so guesses that were not verified are still scored against the tokens
that come: the rates stay current while speculation rests, and drafting resumes when the text
starts repeating its prompt. A draft model's guesses, and its catching up on the text, cost time:
it prices them itself (:mod:`edgekit.runtime.draft_cost`), drafts only when that pays, is dropped
for the call when it never can, and otherwise probes within a small budget to keep its rates measured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from edgekit.errors import EdgekitError
from edgekit.stats import running_average

MODES = ("auto", "ngram", "off")

# Longest and shortest suffix n-gram looked up; a longer match predicts better, so it is tried first.
MAX_NGRAM = 3
MIN_NGRAM = 1
# How far back a match is followed to measure its length (the evidence that the text is copying).
MATCH_SPAN = 16
# The longest draft: verifying 16 tokens costs about 7 single steps on 2 cores (SmolLM2 below).
MAX_DRAFT = 16

# Time to evaluate a batch of n tokens, relative to one token: llama-bench on SmolLM2-135M Q4_1,
# depth 256, 2 threads, on our 2-core machine (11.7 ms for 1 token, 29 for 4, 46 for 8, 82 for 16),
# the steepest curve we measured (the full-size Qwen2.5-0.5B architecture at Q4_0 gives 1.23 for 4,
# 1.88 for 8, 3.25 for 16). Points in between are interpolated linearly.
SMOLLM2_COST: dict[int, float] = {1: 1.0, 4: 29 / 11.7, 8: 46 / 11.7, 16: 82 / 11.7}
QWEN05B_COST: dict[int, float] = {1: 1.00, 2: 0.93, 3: 1.10, 4: 1.23, 5: 1.54, 6: 1.68, 7: 1.85, 8: 1.88,
                                  10: 2.33, 12: 2.58, 14: 3.09, 16: 3.25}
DEFAULT_COST = SMOLLM2_COST

# The weight of a drafter's prior acceptance rates, in observations: measured rates replace them
# within a few drafts.
PRIOR_WEIGHT = 2.0
# Older observations fade with this factor per observation (a half-life of about 22), so the
# rates follow the text: an answer that starts copying its prompt is noticed within a sentence.
DECAY = 0.97
# Draft only when the expected tokens per unit of time beat plain decoding by this margin:
# the per-token Python work and the timing noise the cost curve leaves out.
MARGIN = 1.05
# A drafter whose guesses cost time (a draft model) probes with one token at the start of a call
# and after this many tokens without drafting, so its rates get measured, and a rate measured on
# a bad stretch doesn't stop drafting for good.
QUIET = 24


def check_mode(value: str) -> str:
    """``value`` if it is a speculative mode ("auto", "ngram", "off"), else a clear EdgekitError."""
    if value not in MODES:
        raise EdgekitError(f"speculative must be one of {', '.join(MODES)}; got {value!r}",
                           "'auto' drafts with the draft model if one was loaded, else from the prompt "
                           "(prompt lookup); 'ngram' always from the prompt; 'off' decodes one token at a time.")
    return value


def interpolate(points: dict[int, float]) -> Callable[[int], float]:
    """A cost function n -> relative time from measured ``points`` (linear in between, flat past the ends)."""
    xs = sorted(points)

    def cost(n: int) -> float:
        if n <= xs[0]:
            return points[xs[0]]
        for lo, hi in zip(xs, xs[1:], strict=False):
            if n <= hi:
                return points[lo] + (points[hi] - points[lo]) * (n - lo) / (hi - lo)
        return points[xs[-1]] * n / xs[-1]

    return cost


verify_cost = interpolate(DEFAULT_COST)

# Weight of the newest timing in a batch size's running average (CostCurve). Each size's average
# starts at the curve's price for it (the prior's, until neighbours are timed), so one slow step (a
# page fault, another process) moves it only part of the way and can't switch drafting off on its own.
_COST_EMA = 0.2
# A single-token time older than this many steps is too stale to price batches against: the
# context has grown since (a long copy drafts on every step).
_STALE_STEPS = 64


class CostCurve:
    """What evaluating one sequence's batch of n tokens costs on this device, relative to one token,
    measured as the model runs.

    The prior (:data:`DEFAULT_COST`) is one machine's curve; how steep the curve really is depends
    on the CPU, the model, its quantization and flash attention (on our 2-core machine verifying 8
    tokens cost from 3.0 to 4.8 single steps across SmolLM2's files and settings, docs/speculative.md).
    So the engine times the steps in which one sequence decodes alone (:meth:`observe`). A batch of
    n > 1 tokens is priced against the running average of single-token steps at that moment (steps
    slow down as the context grows, so ratios taken at the time stay comparable where raw times
    would not), and each size keeps a running average of its ratio. :meth:`ratio` answers from
    those: measured sizes as measured, sizes between two measured ones interpolated, sizes past
    them by the prior's shape scaled to the nearest measurement. So a size the rule has not tried
    yet is priced from the ones it has: a flatter curve than the prior's leads it to try longer
    drafts, whose times then count; its first timing moves that price, not the prior's. A drafter that
    costs time (a draft model) verifies few batches, its first probes (:mod:`edgekit.runtime.draft_cost`),
    so their first timing of a size replaces the price (``first_replaces``): under a prior steeper than
    this device's curve it would otherwise stop drafting before it learnt the curve it runs on.

    Prompt tokens are never evaluated in other batches than plain decoding's to time the curve: llama.cpp's
    kernels round differently for different batch sizes, and the KV cache of a prompt split otherwise
    changed a greedy answer (SmolLM2 Q8_0 on this study's prompts).
    """

    def __init__(self, prior: dict[int, float] | None = None, *, timed: bool = True) -> None:
        self._prior = interpolate(prior or DEFAULT_COST)
        self.timed = timed  # False: the prior is the curve, on every machine (studies and tests)
        self._one: float | None = None  # running average of a single-token step, in seconds
        self._since_one = 0  # steps since the last single-token step
        self._ratio: dict[int, float] = {1: 1.0}  # per batch size: running average of time / one token's
        # interpolate(self._ratio) and its largest size, built once per change instead of on every call
        # of the draft-length loop
        self._measured: tuple[Callable[[int], float], int] | None = None

    @property
    def one_token_s(self) -> float | None:
        """The running average of a single-token step, in seconds (None before one was timed)."""
        return self._one

    @property
    def measured_sizes(self) -> list[int]:
        """The batch sizes with a timing of their own (1 always: the unit)."""
        return sorted(self._ratio)

    @property
    def measured(self) -> dict[int, float]:
        """Each batch size with a timing of its own, and its running average time relative to one token."""
        return dict(sorted(self._ratio.items()))

    def observe(self, n: int, seconds: float, *, first_replaces: bool = False) -> None:
        """One sequence's batch of ``n`` tokens took ``seconds`` to evaluate (``first_replaces``: a size's
        first timing is its price, instead of moving the curve's price part of the way)."""
        if not self.timed:
            return
        if n == 1:
            self._one, self._since_one = running_average(self._one, seconds, _COST_EMA), 0
            return
        self._since_one += 1
        if self._one is not None and self._since_one <= _STALE_STEPS:
            ratio = seconds / self._one
            if n not in self._ratio and first_replaces:
                self._ratio[n] = ratio
            else:  # a new size starts from what the curve says of it
                old = self._ratio[n] if n in self._ratio else self.ratio(n)
                self._ratio[n] = running_average(old, ratio, _COST_EMA)
            self._measured = None

    def __call__(self, n: int) -> float:
        """The same as :meth:`ratio`: a curve is a cost function for the drafting rule."""
        return self.ratio(n)

    def ratio(self, n: int) -> float:
        """The estimated time of a batch of ``n`` tokens relative to one token."""
        if self._measured is None:
            # ratios always holds 1, so only sizes past the largest lack a measured neighbour
            self._measured = interpolate(dict(self._ratio)), max(self._ratio)
        measured, top = self._measured
        if n <= top:
            return measured(n)
        return self._prior(n) * self._ratio[top] / self._prior(top)


class Drafter(Protocol):
    """What :class:`Speculation` needs from a drafter: the text so far, and guesses at what follows."""

    free: bool  # guesses cost no time (so unverified ones can be scored)
    streaks: bool  # a right guess makes the next one likelier (a copy in progress): rates per situation
    cost: float  # time to draft one token, relative to one target step
    level: int  # the evidence behind the next guess (an index into priors)
    priors: Sequence[tuple[float, float]]  # per level: expected acceptance of a draft's first and next tokens

    def extend(self, tokens: Iterable[int]) -> None: ...

    def append(self, tok: int) -> None: ...

    def draft(self, k: int) -> list[int]: ...


def start(mode: str, prompt: Iterable[int], *, draft: Any = None, seq_id: int = 0,
          cost: Callable[[int], float] | None = None) -> Speculation | None:
    """The drafting for one generation call in ``mode`` after ``prompt``, or None to decode one token at a time.

    "auto" drafts with ``draft`` (a :class:`edgekit.runtime.draft.DraftModel`, on its sequence ``seq_id``) when
    given, else by prompt lookup; "ngram" always by prompt lookup; "off" returns None.
    ``cost`` (n -> time to verify n tokens relative to one) defaults to :func:`verify_cost`.
    """
    mode = check_mode(mode)
    if mode == "off":
        return None
    drafter: Drafter = draft.drafter(prompt, seq_id=seq_id) if mode == "auto" and draft is not None \
        else NgramDrafter(prompt)
    return Speculation(drafter, cost=cost)


class NgramDrafter:
    """Proposes continuations of a token sequence from its own earlier text.

    An index maps every n-gram (``MIN_NGRAM`` <= n <= ``MAX_NGRAM``) to the position right
    after its latest occurrence, so appending a token and drafting cost O(``MAX_NGRAM``),
    not a scan of the context. The n-grams ending at the last token are indexed only
    when the next token arrives: a lookup of the suffix then finds an earlier occurrence.
    After a draft, :attr:`match` is how many tokens before it agree with the copied text
    (up to ``MATCH_SPAN``; 0 when nothing matched).
    """

    free = True
    streaks = True
    cost = 0.0
    # By how long the copied context matches (1, 2-3, 4-7, 8+ tokens): a long match means the text is
    # copying (on grounded answers from SmolLM2-135M, 93% of guesses after an 8-token match were right).
    priors = ((0.3, 0.5), (0.5, 0.7), (0.7, 0.8), (0.85, 0.9))

    def __init__(self, tokens: Iterable[int] = ()) -> None:
        self._seq: list[int] = []
        self._after: dict[tuple[int, ...], int] = {}
        self.match = 0
        self.extend(tokens)

    def __len__(self) -> int:
        return len(self._seq)

    def extend(self, tokens: Iterable[int]) -> None:
        for tok in tokens:
            self.append(tok)

    def append(self, tok: int) -> None:
        seq, end = self._seq, len(self._seq)
        for n in range(MIN_NGRAM, min(MAX_NGRAM, end) + 1):
            self._after[tuple(seq[end - n : end])] = end
        seq.append(tok)

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the longest suffix n-gram's latest earlier occurrence."""
        seq = self._seq
        self.match = 0
        if k < 1:
            return []
        for n in range(min(MAX_NGRAM, len(seq)), MIN_NGRAM - 1, -1):
            start = self._after.get(tuple(seq[-n:]))
            if start is not None:
                m, end = n, len(seq)
                while m < min(MATCH_SPAN, start) and seq[start - 1 - m] == seq[end - 1 - m]:
                    m += 1
                self.match = m
                return seq[start : start + k]
        return []

    @property
    def level(self) -> int:
        """The evidence behind the latest draft: 0 for a 1-token match, 1 for 2-3, 2 for 4-7, 3 for 8 or more."""
        m = self.match
        return 0 if m <= 1 else 1 if m < 4 else 2 if m < 8 else 3


class Rate:
    """An acceptance rate that starts at a prior and follows recent observations (exponential decay)."""

    def __init__(self, prior: float) -> None:
        self.hits = prior * PRIOR_WEIGHT
        self.total = PRIOR_WEIGHT

    def add(self, hit: bool) -> None:
        self.hits = DECAY * self.hits + hit
        self.total = DECAY * self.total + 1.0

    @property
    def value(self) -> float:
        return self.hits / self.total


def expected_tokens(k: int, p_first: float, p_next: float) -> float:
    """Tokens a step yields with a draft of ``k``: the target's own one, plus the accepted run."""
    if k <= 0:
        return 1.0
    run = float(k) if p_next >= 1.0 else (1.0 - p_next**k) / (1.0 - p_next)
    return 1.0 + p_first * run


def best_length(limit: int, p_first: float, p_next: float, cost: Callable[[int], float],
                draft_cost: float = 0.0) -> int:
    """The draft length up to ``limit`` with the most expected tokens per unit of time (0 = don't draft).

    Drafting must beat plain decoding (1 token per step) by ``MARGIN``.
    """
    best, best_rate = 0, MARGIN
    for k in range(1, limit + 1):
        rate = expected_tokens(k, p_first, p_next) / (cost(k + 1) + draft_cost * k)
        if rate > best_rate:
            best, best_rate = k, rate
    return best


class Speculation:
    """Drafting for one generation call: whether to draft before each step, and how many tokens.

    Acceptance is measured per situation: the drafter's ``level`` of evidence (for prompt lookup,
    how long the copied context matches) and whether the latest emitted token was guessed right
    (a copy in progress). Each situation has two rates, of a draft's first token and of a token
    after an accepted one, starting at the drafter's priors and following the verdicts (see
    the module docstring for the rule). :attr:`drafted` and :attr:`accepted` count the drafted
    tokens the target evaluated and, of them, those its own sample confirmed.
    """

    def __init__(self, drafter: Drafter, *, cost: Callable[[int], float] | None = None) -> None:
        self.drafter = drafter
        self.cost = cost or verify_cost
        self.drafted = 0
        self.accepted = 0
        # A drafter may keep its rates across calls (a draft model: the pair's acceptance outlives a call).
        self._rates: dict[tuple[int, bool], tuple[Rate, Rate]] = getattr(drafter, "rates", None)
        if self._rates is None:
            self._rates = {}
        self._hot = False  # the latest emitted token was guessed right (by a draft or a free guess)
        self._key = (0, False)  # the situation of the guess being checked, and the position in it
        self._pos = 0
        self._shadow: list[int] = []  # a free guess not verified, scored against the tokens that come
        self._quiet = QUIET  # tokens since the last draft; a costly drafter probes at once, starting short

    def rates(self, level: int, hot: bool) -> tuple[Rate, Rate]:
        """(first token, next token) acceptance in a situation; after a correct guess the first is like a next."""
        key = (level, hot)
        if key not in self._rates:
            first, following = self.drafter.priors[min(level, len(self.drafter.priors) - 1)]
            self._rates[key] = (Rate(following if hot else first), Rate(following))
        return self._rates[key]

    def _observe(self, hit: bool) -> None:
        first, following = self.rates(*self._key)
        (first if self._pos == 0 else following).add(hit)
        self._pos += 1
        self._hot = hit

    def append(self, tok: int) -> None:
        """An emitted token: score a pending free guess against it, and pass it to the drafter."""
        if self._shadow:
            hit = self._shadow[0] == tok
            self._observe(hit)
            if hit:
                del self._shadow[0]
            else:
                self._shadow.clear()
        self.drafter.append(tok)

    def propose(self, room: int) -> list[int]:
        """A draft of at most ``room`` tokens to follow the drafter's text ([] = decode one token)."""
        limit = min(room, MAX_DRAFT)
        if limit < 1:
            return []
        guess: list[int] | None = None
        if self.drafter.free:  # guess first: the guess itself is the evidence
            guess = self.drafter.draft(limit)
            if not guess:
                self._hot = False  # nothing to copy: a copy run, if any, has ended
                return []
            limit = len(guess)
        key = (self.drafter.level, self._hot and self.drafter.streaks)
        first, following = self.rates(*key)
        plan = getattr(self.drafter, "plan", None)  # a drafter that prices its own work (a draft model)
        if plan is not None:
            k = plan(limit, first.value, following.value, self.cost)
            if k <= 0:
                return []
        else:
            k = best_length(limit, first.value, following.value, self.cost, self.drafter.cost)
        if k == 0:
            if guess is not None:
                if not self._shadow:
                    self._shadow, self._key, self._pos = guess, key, 0
                return []
            self._quiet += 1
            if self._quiet < QUIET:
                return []
            k = 1  # a probe: the rates were measured a while ago
        self._shadow = []
        draft = guess[:k] if guess is not None else self.drafter.draft(k)
        if not draft:
            self._hot = False
            return []
        self._key, self._pos = key, 0
        self._quiet = 0
        self.drafted += len(draft)
        return draft

    def verdict(self, accepted: bool) -> None:
        """The target's sample at the next drafted position equalled the drafted token, or not."""
        self._observe(accepted)
        if accepted:
            self.accepted += 1


def simulate(spec: Speculation, output: Sequence[int], room: int = MAX_DRAFT) -> tuple[float, int]:
    """Replay greedy decoding of ``output`` with ``spec`` as the engine drives it (:mod:`edgekit.runtime.engine`).

    Returns (time in single-token target steps, steps taken); plain decoding takes
    ``len(output) - 1`` steps (the last token is never evaluated). For offline studies.
    """
    pending: list[int] = []
    time = 0.0
    steps = 0
    for i, tok in enumerate(output):
        if pending:
            spec.verdict(tok == pending[0])
        if i == len(output) - 1:
            break
        spec.append(tok)
        if pending and tok == pending[0]:
            pending.pop(0)
            continue
        pending = spec.propose(min(room, len(output) - i - 2))
        time += spec.cost(1 + len(pending)) + spec.drafter.cost * len(pending)
        steps += 1
    return time, steps
