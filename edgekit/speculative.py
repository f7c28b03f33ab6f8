"""Prompt-lookup speculative decoding: drafts from the text itself, and how many to draft.

Grounded answers (rewrites, extractions, quotes, code edits) repeat long runs of their
prompt. :class:`NgramDrafter` proposes the tokens that followed the latest earlier
occurrence of the text's last few tokens; :class:`Speculation` sizes each draft by the
acceptance measured so far and switches itself off when drafts keep failing.

The model verifies a draft in one batch and samples the target at every position with
its usual sampler chain; a drafted token is kept only while the target's own sample
equals it, so the output is what plain decoding would give (see :meth:`Model.generation`).
Because a draft is a fixed guess (a one-hot proposal), "sample from the target, keep it if
it equals the guess" is the speculative-sampling acceptance rule: sampling stays exact.
"""

from __future__ import annotations

from collections.abc import Iterable

from edgekit.errors import EdgekitError

MODES = ("auto", "ngram", "off")

# Longest and shortest suffix n-gram looked up; a longer match predicts better, so it is tried first.
MAX_NGRAM = 3
MIN_NGRAM = 1
# Draft length: the first draft, and the cap. On 2 CPU cores, verifying 16 tokens costs about 7x
# one token (llama-bench, SmolLM2 Q4_1 at depth 256), so longer drafts rarely pay.
FIRST_DRAFT = 4
MAX_DRAFT = 16
# Switch speculation off for the rest of a call once this many drafted tokens were verified and
# fewer than this share of them were accepted. By the same measurement a batch of k+1 tokens costs
# about 1 + 0.4 k single-token steps, so drafts accepted less than ~40% of the time lose time.
JUDGE_AFTER = 24
MIN_ACCEPTANCE = 0.35


def check_mode(value: str) -> str:
    """``value`` if it is a speculative mode ("auto", "ngram", "off"), else a clear EdgekitError."""
    if value not in MODES:
        raise EdgekitError(f"speculative must be one of {', '.join(MODES)}; got {value!r}",
                           "'auto' drafts from the prompt (prompt lookup), 'off' decodes one token at a time.")
    return value


def uses_ngram(mode: str) -> bool:
    """Whether ``mode`` drafts by prompt lookup ("auto" does, as long as there is no draft model)."""
    return check_mode(mode) in ("auto", "ngram")


def start(mode: str, prompt: Iterable[int]) -> Speculation | None:
    """The drafting for one generation call in ``mode`` (after ``prompt``), or None to decode one token at a time."""
    return Speculation(prompt) if uses_ngram(mode) else None


class NgramDrafter:
    """Proposes continuations of a token sequence from its own earlier text.

    An index maps every n-gram (``MIN_NGRAM`` <= n <= ``MAX_NGRAM``) to the position right
    after its latest occurrence, so appending a token and drafting cost O(``MAX_NGRAM``),
    not a scan of the context. The n-grams ending at the last token are indexed only
    when the next token arrives: a lookup of the suffix then finds an earlier occurrence.
    """

    def __init__(self, tokens: Iterable[int] = ()) -> None:
        self._seq: list[int] = []
        self._after: dict[tuple[int, ...], int] = {}
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
        if k < 1:
            return []
        for n in range(min(MAX_NGRAM, len(seq)), MIN_NGRAM - 1, -1):
            start = self._after.get(tuple(seq[-n:]))
            if start is not None:
                return seq[start : start + k]
        return []


class Speculation:
    """Drafting for one generation call, with the draft length following the acceptance.

    A fully accepted draft doubles the next one (up to ``MAX_DRAFT``); a rejection sizes
    the next one at the accepted run plus one. After ``JUDGE_AFTER`` verified tokens, an
    acceptance below ``MIN_ACCEPTANCE`` turns drafting off for the rest of the call, so
    open-ended text pays for a few failed drafts at most.
    """

    def __init__(self, prompt: Iterable[int]) -> None:
        self.drafter = NgramDrafter(prompt)
        self.length = FIRST_DRAFT
        self.active = True
        self.drafted = 0  # drafted tokens the target evaluated
        self.accepted = 0  # of them, those the target's own sample confirmed
        self._verified = 0
        self._run = 0  # tokens in the draft being verified
        self._hits = 0  # of them, accepted so far

    def append(self, tok: int) -> None:
        """An emitted token: index it for later drafts (no work once drafting is off for this call)."""
        if self.active:
            self.drafter.append(tok)

    def propose(self, room: int) -> list[int]:
        """A draft of at most ``room`` tokens to follow the drafter's text ([] = decode one token)."""
        if not self.active:
            return []
        draft = self.drafter.draft(min(self.length, room))
        self._run, self._hits = len(draft), 0
        self.drafted += len(draft)
        return draft

    def verdict(self, accepted: bool) -> None:
        """The target's sample at the next drafted position equalled the drafted token, or not."""
        self._verified += 1
        if accepted:
            self.accepted += 1
            self._hits += 1
            if self._hits < self._run:
                return
            self.length = min(MAX_DRAFT, 2 * self.length)
        else:
            self.length = max(1, self._hits + 1)
        if self._verified >= JUDGE_AFTER and self.accepted < MIN_ACCEPTANCE * self._verified:
            self.active = False
