"""Errors that edgekit shows to users.

Every error carries a one-line message saying what happened and, where there is
one, a ``hint`` saying what to do next. The CLI prints ``Error: <message>`` and
the hint, and exits 1; a traceback appears only with ``EDGEKIT_DEBUG=1``.
"""

from __future__ import annotations

__all__ = [
    "EdgekitError", "SourceError", "HubUnreachable", "UnsupportedModel", "MissingFiles", "CorruptFile",
    "OutputExists", "DiskFull", "QuantizeError", "ModelLoadError", "ContextOverflow", "OutOfMemory",
    "EvalError", "BenchError", "InvalidParam", "PromptCacheWarning",
]


class EdgekitError(Exception):
    """Base class of every error edgekit raises on purpose."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InvalidParam(EdgekitError):
    """An option or request field has a value edgekit can't use. ``param`` names it the way OpenAI's
    errors do (``"logit_bias"``, ``"tools[0].function.parameters"``), so the server answers a 400 naming it."""

    def __init__(self, param: str, message: str, hint: str | None = None) -> None:
        super().__init__(f"{param}: {message}", hint)
        self.param = param


class SourceError(EdgekitError):
    """The model source can't be found, read or downloaded."""


class HubUnreachable(SourceError):
    """The Hugging Face Hub can't be reached and nothing is cached."""


class UnsupportedModel(EdgekitError):
    """The architecture, weight format or tokenizer is not supported."""


class MissingFiles(SourceError):
    """Files the model needs (config, weights, tokenizer) are absent."""


class CorruptFile(EdgekitError):
    """A weights or GGUF file is truncated or malformed."""


class OutputExists(EdgekitError):
    """The output file exists and ``force`` was not given."""


class DiskFull(EdgekitError):
    """Not enough free disk space to write the output."""


class QuantizeError(EdgekitError):
    """llama.cpp's quantizer failed or the type is unknown."""


class ModelLoadError(EdgekitError):
    """llama.cpp could not load the model."""


class ContextOverflow(EdgekitError):
    """A prompt or message does not fit the context window."""

    def __init__(self, message: str, hint: str | None = None, *, needed: int = 0, available: int = 0) -> None:
        super().__init__(message, hint)
        self.needed = needed
        self.available = available


class OutOfMemory(EdgekitError):
    """The memory plan does not fit the device."""


class EvalError(EdgekitError):
    """An evaluation can't be run on the given inputs."""


class BenchError(EdgekitError):
    """A benchmark can't be run or its results can't be read."""


class PromptCacheWarning(UserWarning):
    """The persistent prompt cache skipped a bad snapshot or turned itself off; the answer is unaffected."""
