"""What a draft model's own work costs, measured as it runs, and the drafting rule that prices it.

The verification side of speculative decoding is priced by the target's :class:`CostCurve`
(:mod:`edgekit.runtime.speculative`). A draft model also spends time of its own, on the one compute
thread every model shares: it evaluates each prompt before its first guess, catches up on every
token the target emitted since it last drafted, and evaluates each guess to make the next one. A
pair whose drafts don't pay used to cost 21% of the decode speed in that work alone (probes that
prefilled every prompt and caught up every 24 tokens). So this rule prices all of it, in units of
one target step:

- ``step``: one draft step (a one-token decode and the pick of its top token), timed;
- ``catch_up(m)``: evaluating the ``m`` tokens the draft hasn't seen (a prompt, or what was emitted
  since its last draft), from the timed single step plus the timed cost of each further token in a
  batch;
- a draft of k tokens costs ``cost(k + 1)`` target steps to verify, ``catch_up(m)`` for the first
  guess and ``step`` for each further one. While it drafts every step, m is 1 or 2; a long catch-up
  (a new prompt, or a long pause) is paid once and serves every draft after it, so it is made when the
  target steps that drafting saves per token, over the tokens still expected (as many as the call has
  emitted so far, and at least :data:`HORIZON`), cover it.

The draft model's first drafts are probes, made on consecutive steps, whatever they cost, until it has
guessed :data:`FIRST_GUESSES` tokens (it stops below its ``p_min``, so a probe may guess none) or made
:data:`FIRST_PROBES` of them, once per draft model: they time its catching up, and give the
acceptance rates something to start from; their verification batches time the target's curve, each size's
first timing replacing the prior's price (:meth:`CostCurve.observe`'s ``first_replaces``), so a target whose
curve is flatter than the prior's is priced as it runs. Budgeted probes alone could not: a lazy draft's catching up
grows with the tokens since its last draft as fast as the budget does. From then on a drafter that can't pay even if every guess were right (its step too dear for this
target on this device) is dropped for the call: it evaluates nothing more. Otherwise it drafts when the
measured acceptance pays, and else probes to keep the acceptance measured. A probe may be as long as a
draft would be if the pair agreed as well as a well-matched pair does (:data:`PROBE_ACCEPTANCE`; at
least two guesses the first time, so a guess after a right one is measured too): a probe of one guess
measures only the first guess of a draft, so a pair whose long drafts pay would never learn that they
do. A probe is priced (catching up, verifying, the draft's steps, less the tokens it is expected to
yield at the measured acceptance); the longest one that costs at most :data:`PROBE_BUDGET` of the target
steps decoded since the last draft is made. The acceptance rates and the
quiet count live on the draft model, not the call, so what one call learned about the pair holds for
the next one. The draft stays lazy: it evaluates only when a draft is about to be asked for. Before
its first probe, it times one step on the first token it hasn't seen
(:meth:`~edgekit.runtime.draft.ModelDrafter.plan`), so a draft that can't pay is dropped before it
evaluates a prompt: catching up on a 150-token prompt took 170 ms, 5% of four SmolLM2 answers.

The draft step is the median of the latest :data:`STEP_TIMINGS` timed single steps: on a busy machine
one step can take three times the others, and a running average would let it drop the draft for a call.
"""

from __future__ import annotations

import collections
import statistics
from typing import Any

from edgekit.runtime.speculative import MAX_DRAFT, QUIET, best_length, expected_tokens
from edgekit.stats import running_average

# Probes of a drafter whose drafts don't pay may cost at most this share of the decoding time.
PROBE_BUDGET = 0.02
# A long catch-up (a new prompt) is paid once and serves the drafts after it: it must pay back within
# the tokens still expected, taken as the tokens the call has emitted so far, and at least this many.
HORIZON = 64
# Prior cost of each further token of a batch, relative to one step (the prior curve's slope at 16
# tokens: 82 ms / 16 tokens against 11.7 ms for one, speculative.SMOLLM2_COST).
PRIOR_BATCH_TOKEN = 82 / 11.7 / 16
# A probe drafts as long as a draft would if this share of guesses were right: how well a draft of the
# target's own family agrees (Gemma 3 270M's Q4_K_M with its F32: 99%; SmolLM2's Q4_0 with its F32: 80%).
PROBE_ACCEPTANCE = 0.9
# The draft's step is the median of this many latest single-step timings.
STEP_TIMINGS = 9
# The first probes: until the draft model has guessed FIRST_GUESSES tokens, at most FIRST_PROBES of them.
FIRST_GUESSES = 16
FIRST_PROBES = 32
_EMA = 0.2


class DraftCosts:
    """A draft model's measured costs, its acceptance rates and its quiet count, shared by the calls.

    ``prior`` is the draft's step relative to a target step before anything was timed (the
    weights' size ratio: decoding a token reads all weights once). ``fixed``, when set, replaces
    the measured step, and ``fixed_token`` each further token of a batch (both in target steps; for
    studies and tests that want the same pricing on every machine).
    """

    def __init__(self, prior: float) -> None:
        self.prior = prior
        self.fixed: float | None = None
        self.fixed_token: float | None = None
        self._steps: collections.deque[float] = collections.deque(maxlen=STEP_TIMINGS)  # one-token decodes
        self.pick_s = 0.0  # running average of picking the top token from a logits row
        self.token_s: float | None = None  # running average of each further token of a batch
        self._early: tuple[int, float] | None = None  # a batch timed before any single step
        self.rates: dict[Any, Any] = {}  # Speculation's acceptance rates, kept across calls
        self.quiet = 0  # target tokens since this draft model last drafted
        self.probes = 0
        self.guesses = 0  # tokens the draft model has guessed (drafted), in all
        self.decodes = 0  # llama_decode calls of the draft model
        self.tokens = 0  # tokens they evaluated

    def observe(self, n: int, seconds: float) -> None:
        """The draft evaluated a batch of ``n`` tokens in ``seconds``."""
        self.decodes += 1
        self.tokens += n
        if n == 1:
            self._steps.append(seconds)
            if self._early is not None:
                n, seconds = self._early
                self._early = None
        if n > 1 and self.step_s is None:
            self._early = (n, seconds)  # priced once a single step is known
        elif n > 1 and self.step_s is not None:
            self.token_s = running_average(self.token_s, max(seconds - self.step_s, 0.0) / (n - 1), _EMA)

    @property
    def step_s(self) -> float | None:
        """A one-token decode of the draft model, in seconds: the median of the latest timings (None before one)."""
        return statistics.median(self._steps) if self._steps else None

    def pick(self, seconds: float) -> None:
        """Picking a guess from the logits took ``seconds``."""
        self.pick_s = running_average(self.pick_s or None, seconds, _EMA)

    def step(self, unit_s: float | None) -> float:
        """One draft step in target steps (``unit_s``: the target's one-token step in seconds, if timed)."""
        if self.fixed is not None:
            return self.fixed
        if self.step_s is None or not unit_s:
            return self.prior
        return (self.step_s + self.pick_s) / unit_s

    def catch_up(self, m: int, unit_s: float | None) -> float:
        """Evaluating ``m`` (>= 1) tokens the draft hasn't seen, in target steps."""
        step = self.step(unit_s)
        if m <= 1:
            return step
        if self.fixed_token is not None:
            per_token = self.fixed_token
        elif self.token_s is not None and self.step_s and unit_s and self.fixed is None:
            per_token = self.token_s / unit_s
        else:
            per_token = step * PRIOR_BATCH_TOKEN
        return step + (m - 1) * per_token


def plan(costs: DraftCosts, pending: int, limit: int, p_first: float, p_next: float, cost: Any,
         emitted: int = 0) -> int:
    """How many tokens a draft model should draft now: 0 to decode one token, -1 to drop it for the call.

    ``pending``: tokens it must evaluate before its first guess; ``emitted``: tokens the call has
    generated so far; ``limit``: the room for a draft;
    ``p_first``/``p_next``: the measured acceptance; ``cost``: the target's verification cost
    (n -> relative time; a :class:`~edgekit.runtime.speculative.CostCurve` also gives its step time).
    """
    unit = getattr(cost, "one_token_s", None)
    step = costs.step(unit)
    probe_k = max(1, best_length(limit, PROBE_ACCEPTANCE, PROBE_ACCEPTANCE, cost, step))
    timed = costs.fixed is not None or costs.step_s is not None
    if timed and best_length(MAX_DRAFT, 1.0, 1.0, cost, step) == 0:
        return -1  # even if every guess were right
    if costs.guesses < FIRST_GUESSES and costs.probes < FIRST_PROBES:  # the first drafts: two guesses or more
        costs.probes, costs.quiet = costs.probes + 1, 0
        return min(max(2, probe_k), limit)
    k = best_length(limit, p_first, p_next, cost, step)  # as when drafting every step (catching up 1 token)
    if k:
        extra = costs.catch_up(pending, unit) - step  # catching up beyond the step that gives the first guess
        saved = 1.0 - (cost(k + 1) + step * k) / expected_tokens(k, p_first, p_next)  # target steps per token
        if extra <= saved * max(HORIZON, emitted):
            costs.quiet = 0
            return k
    costs.quiet += 1
    if costs.quiet < QUIET:
        return 0
    catch_up = costs.catch_up(pending, unit)
    for k in range(probe_k, 0, -1):  # the longest probe the budget allows
        # what it costs beyond plain decoding of the tokens it is expected to yield, in target steps
        price = catch_up + step * (k - 1) + cost(k + 1) - expected_tokens(k, p_first, p_next)
        if price <= PROBE_BUDGET * costs.quiet:
            costs.probes += 1
            costs.quiet = 0
            return k
    return 0
