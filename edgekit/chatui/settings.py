"""Sampling settings the chat CLI can change at run time (``/set PARAM VALUE``).

One table (:data:`PARAMS`) says, for each parameter, its aliases, how to parse
a value typed by the user and which values are allowed, so ``--temp``,
``/set temp`` and a saved conversation all go through the same checks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.runtime.sampling import Sampling
from edgekit.runtime.speculative import MODES

# A chat answer rarely needs more; the bound keeps a rambling model (or a script) from
# running on for minutes on a Pi. `--max-tokens 0` / `/set max_tokens none` lift it.
CLI_MAX_TOKENS = 1024


_RUNTIME = Sampling()


@dataclass
class ChatSettings:
    """The sampling parameters used for every turn: the runtime's defaults, with a CLI bound on length."""

    temperature: float = _RUNTIME.temperature
    top_p: float = _RUNTIME.top_p
    top_k: int = _RUNTIME.top_k
    min_p: float = _RUNTIME.min_p
    repeat_penalty: float = _RUNTIME.repeat_penalty
    seed: int | None = _RUNTIME.seed
    max_tokens: int | None = CLI_MAX_TOKENS
    speculative: str | None = _RUNTIME.speculative  # None: the model's own (edgekit chat --speculative)

    @classmethod
    def defaults(cls) -> ChatSettings:
        """Settings starting from the runtime's own defaults."""
        return cls()

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Chat.send`` / ``Chat.stream``."""
        return dataclasses.asdict(self)

    def update(self, **values: Any) -> None:
        """Set validated values (``None`` values are skipped, except for seed given by name)."""
        for name, value in values.items():
            setattr(self, name, check(name, value))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatSettings:
        """Settings from a saved conversation; unknown keys are ignored, bad values refused."""
        settings = cls.defaults()
        for name in PARAMS:
            if name in data:
                setattr(settings, name, check(name, data[name]))
        return settings


def _max_tokens(text: str) -> int | None:
    if text.lower() in ("none", "off", "unlimited", "0"):
        return None
    return int(text)


def _seed(text: str) -> int | None:
    if text.lower() in ("none", "random", "off", "-1"):
        return None
    return int(text)


def _speculative(text: str) -> str:
    return text.lower()


@dataclass(frozen=True)
class Param:
    """How one parameter is typed, parsed and bounded."""

    parse: Callable[[str], Any]
    valid: Callable[[Any], bool]
    rule: str
    aliases: tuple[str, ...] = ()


PARAMS: dict[str, Param] = {
    "temperature": Param(float, lambda v: v >= 0, "a number >= 0 (0 = greedy)", ("temp", "t")),
    "top_p": Param(float, lambda v: 0 < v <= 1, "a number in (0, 1]", ("top-p", "topp")),
    "top_k": Param(int, lambda v: v >= 0, "an integer >= 0 (0 = off)", ("top-k", "topk")),
    "min_p": Param(float, lambda v: 0 <= v <= 1, "a number in [0, 1]", ("min-p", "minp")),
    "repeat_penalty": Param(float, lambda v: v > 0, "a number > 0 (1 = off)", ("repeat-penalty", "rp")),
    "seed": Param(_seed, lambda v: v is None or v >= 0, "an integer >= 0, or 'random'", ()),
    "max_tokens": Param(_max_tokens, lambda v: v is None or v > 0, "an integer > 0, or 'none' (until the model stops)",
                        ("max-tokens", "max", "n")),
    "speculative": Param(_speculative, lambda v: v in MODES, "one of " + ", ".join(MODES) + " (same output, "
                         "different speed)", ("spec",)),
}
# What a None value means, for display.
NONE_SHOWN = {"seed": "random", "max_tokens": "none", "speculative": "the model's default"}

_ALIASES = {alias: name for name, p in PARAMS.items() for alias in (name, *p.aliases)}


def canonical(name: str) -> str | None:
    """The parameter a user-typed name refers to, or None."""
    return _ALIASES.get(name.lower())


def names() -> list[str]:
    """Every accepted spelling, for hints."""
    return sorted(_ALIASES)


def check(name: str, value: Any) -> Any:
    """Validate ``value`` (already typed) for parameter ``name``."""
    param = PARAMS[name]
    if value is None and name in NONE_SHOWN:
        return None
    try:
        if isinstance(value, bool) or value is None:
            raise ValueError
        # Numbers from JSON go through the same parser as typed text ("40" and 40 alike).
        value = param.parse(value if isinstance(value, str) else repr(value))
    except (TypeError, ValueError):
        raise EdgekitError(f"Bad value {value!r} for {name}.", f"It must be {param.rule}.") from None
    if not param.valid(value):
        raise EdgekitError(f"Bad value {value!r} for {name}.", f"It must be {param.rule}.")
    return value


def parse_assignment(name: str, text: str) -> tuple[str, Any]:
    """Parse ``/set NAME TEXT`` into (canonical name, value), or raise EdgekitError."""
    canon = canonical(name)
    if canon is None:
        import difflib

        close = difflib.get_close_matches(name.lower(), names(), n=1, cutoff=0.5)
        hint = f"Did you mean {close[0]}? " if close else ""
        raise EdgekitError(f"Unknown parameter {name!r}.", f"{hint}Parameters: {', '.join(PARAMS)}.")
    return canon, check(canon, text)
