"""Chat: a conversation with a system prompt, history, and an honest overflow policy.

Each turn renders the whole conversation with the model's chat template; the
model's prompt cache then reuses the KV of everything said before, so a
follow-up costs only its new tokens. When the conversation no longer fits, the
oldest turns are dropped (never the system prompt, never the new message) and
:attr:`Chat.last_dropped` says which. A message that can't fit even alone
raises :class:`~edgekit.ContextOverflow`. Nothing is truncated silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.errors import ContextOverflow, EdgekitError
from edgekit.runtime.sampling import Sampling

if TYPE_CHECKING:
    from edgekit.runtime.model import Model
    from edgekit.stats import Completion, Stats

FORMAT = 1
# Room kept for the answer when max_tokens is None: a quarter of the context, at most this.
DEFAULT_ANSWER_ROOM = 512


class Chat:
    """A chat session over a :class:`~edgekit.Model`.

    ``sampling_defaults`` (temperature=..., max_tokens=..., ...) apply to every
    turn; keyword arguments of :meth:`send` override them for one turn.
    """

    def __init__(self, model: Model, system: str | None = None, **sampling_defaults: Any) -> None:
        self.model = model
        self.system = system
        self.sampling = Sampling().replace(**sampling_defaults)
        self.history: list[dict] = []  # user/assistant messages, oldest first
        self.last_dropped: list[dict] = []
        self.state_restored = False  # set by Chat.load: the saved KV cache was restored
        self.extra: dict = {}  # unknown top-level keys of a loaded chat, written back by to_dict()

    # -- views -------------------------------------------------------------------------------------------

    @property
    def messages(self) -> list[dict]:
        """The conversation as the model sees it, system prompt first."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.history]

    @property
    def context_size(self) -> int:
        return self.model.n_ctx

    def context_used(self) -> int:
        """Tokens the conversation takes now (without a new message)."""
        if not self.messages:
            return 0
        return len(self.model.chat_tokens(self.messages, add_generation_prompt=False))

    def reset(self) -> None:
        """Forget the history (the system prompt stays)."""
        self.history = []
        self.last_dropped = []

    # -- turns -------------------------------------------------------------------------------------------

    def send(self, text: str, sampling: Sampling | None = None, **kwargs: Any) -> Completion:
        """Add a user message and return the model's answer (also added to the history)."""
        return self._complete(self.stream(text, sampling, **kwargs))

    def stream(self, text: str, sampling: Sampling | None = None, **kwargs: Any) -> Iterator[str | Stats]:
        """Like :meth:`send`, yielding text chunks and finally a :class:`~edgekit.Stats`."""
        s = (sampling or self.sampling).replace(**kwargs)
        tokens, kept = self._fit(self.history + [{"role": "user", "content": text}], s)
        return self._turn(tokens, kept, s)

    def retry(self, sampling: Sampling | None = None, **kwargs: Any) -> Completion:
        """Regenerate the last answer (e.g. with another seed or temperature)."""
        return self._complete(self.stream_retry(sampling, **kwargs))

    def stream_retry(self, sampling: Sampling | None = None, **kwargs: Any) -> Iterator[str | Stats]:
        """Like :meth:`retry`, streaming."""
        if not self.history or self.history[-1]["role"] != "assistant":
            raise EdgekitError("there is no answer to retry", "Send a message first.")
        s = (sampling or self.sampling).replace(**kwargs)
        tokens, kept = self._fit(self.history[:-1], s)
        return self._turn(tokens, kept, s)

    def _complete(self, items: Iterator[str | Stats]) -> Completion:
        from edgekit.stats import Completion

        chunks = []
        stats = None
        for item in items:
            if isinstance(item, str):
                chunks.append(item)
            else:
                stats = item
        assert stats is not None
        return Completion("".join(chunks), list(self._last_tokens), stats.finish_reason, stats)  # type: ignore[arg-type]

    def _turn(self, tokens: list[int], kept: list[dict], s: Sampling) -> Iterator[str | Stats]:
        chunks: list[str] = []
        self._last_tokens: list[int] = []
        done = False
        gen = self.model.generation(tokens, s)
        try:
            while True:
                try:
                    chunk = next(gen)
                except StopIteration as stop:
                    completion = stop.value
                    break
                chunks.append(chunk)
                yield chunk
            self._last_tokens = completion.tokens
            self.history = kept + [{"role": "assistant", "content": completion.text}]
            done = True
            yield completion.stats
        finally:
            if not done:  # the caller stopped reading: keep what it was shown, so history matches the screen
                gen.close()
                self.history = kept + [{"role": "assistant", "content": "".join(chunks)}]

    # -- overflow policy ---------------------------------------------------------------------------------

    def _answer_room(self, s: Sampling) -> int:
        n_ctx = self.model.n_ctx
        if s.max_tokens is not None:
            return min(s.max_tokens, n_ctx // 2)
        return min(DEFAULT_ANSWER_ROOM, n_ctx // 4)

    def _fit(self, history: list[dict], s: Sampling) -> tuple[list[int], list[dict]]:
        """Prompt tokens for ``history``, dropping the oldest turns until prompt + answer room fit."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        n_ctx, room = self.model.n_ctx, self._answer_room(s)
        dropped: list[dict] = []
        kept = list(history)
        while True:
            tokens = self.model.chat_tokens(head + kept)
            if len(tokens) + room <= n_ctx:
                break
            # Drop the oldest turn: from the start up to the next user message, never past the new one.
            last_user = max(i for i, m in enumerate(kept) if m["role"] == "user")
            if last_user == 0:
                if len(tokens) < n_ctx:
                    break  # only the new message is left: it fits, with less room for the answer
                raise ContextOverflow(
                    f"the message needs {len(tokens)} tokens with the system prompt, but the context holds "
                    f"{n_ctx}", "Shorten the message or load the model with a larger n_ctx.",
                    needed=len(tokens) + 1, available=n_ctx)
            cut = next(i for i in range(1, last_user + 1) if kept[i]["role"] == "user")
            dropped.extend(kept[:cut])
            kept = kept[cut:]
        self.last_dropped = dropped
        return tokens, kept

    # -- persistence -------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Settings and history as plain JSON-able data."""
        return {**self.extra, "format": FORMAT, "model": self.model.path.name, "n_ctx": self.model.n_ctx, "system": self.system,
                "sampling": self.sampling.as_dict(), "messages": [dict(m) for m in self.history]}

    @classmethod
    def from_dict(cls, model: Model, d: dict) -> Chat:
        if not isinstance(d, dict) or not isinstance(d.get("messages", []), list):
            raise EdgekitError("not a saved chat", "Pass a file written by Chat.save().")
        sampling = dict(d.get("sampling") or {})
        if isinstance(sampling.get("stop"), list):
            sampling["stop"] = tuple(sampling["stop"])
        chat = cls(model, d.get("system"), **sampling)
        for m in d.get("messages", []):
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant") or "content" not in m:
                raise EdgekitError(f"a saved chat message is malformed: {m!r}")
            chat.history.append({"role": m["role"], "content": str(m["content"])})
        known = {"format", "model", "n_ctx", "system", "sampling", "messages", "state_file"}
        chat.extra = {k: v for k, v in d.items() if k not in known}
        return chat

    def save(self, path: str | Path, with_state: bool = True) -> Path:
        """Write the chat as JSON; with ``with_state`` also the KV cache beside it (``<path>.kv``)."""
        path = Path(path)
        d = self.to_dict()
        if with_state and self.model.cached_tokens:
            state_path = path.with_name(path.name + ".kv")
            self.model.save_state(state_path)
            d["state_file"] = state_path.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(d, ensure_ascii=False, indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, model: Model, path: str | Path) -> Chat:
        """Read a chat written by :meth:`save`; restores its KV cache when it matches ``model``."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EdgekitError(f"{path} does not exist") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise EdgekitError(f"{path.name} is not a saved chat: {exc}") from None
        chat = cls.from_dict(model, d)
        state_file = d.get("state_file")
        if state_file and (path.parent / state_file).is_file():
            try:
                model.load_state(path.parent / state_file)
                chat.state_restored = True
            except EdgekitError:
                pass  # only a cache: another model or KV type just means a fresh prefill
        return chat
