"""``edgekit serve``: the OpenAI-compatible HTTP server.

Only argument parsing and the printed lines live here; the server is :mod:`edgekit.serve`,
imported inside the command (it needs the optional ``serve`` extra).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from edgekit.cli.options import (
    ChatTemplate,
    Draft,
    KvCache,
    PromptCache,
    Speculative,
    Threads,
    read_chat_template,
)
from edgekit.errors import EdgekitError

INSTALL_HINT = "pip install 'edgekit[serve]'"


def serve(
    model: Annotated[str, typer.Argument(help="GGUF file, Hugging Face checkpoint dir or repo id (converted once and "
                                              "cached), or a store name.")],
    host: Annotated[str, typer.Option("--host", help="Address to bind. Use 0.0.0.0 to accept other machines "
                                                     "(then set an API key).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0 picks a free one).")] = 8080,
    slots: Annotated[int, typer.Option("--slots", min=1, max=64, help=(
        "Sequences decoded together in one batch. The weights are shared; each slot has its own --ctx tokens of "
        "KV cache, so KV memory grows with the slots (the plan printed at start shows slots x ctx). A request "
        "may ask for up to this many choices (n)."))] = 1,
    queue: Annotated[int, typer.Option("--queue", min=0, help="Sequences that may wait for a free slot; beyond "
                                                             "slots + queue, requests get 503 with Retry-After.")] = 4,
    ctx: Annotated[int | None, typer.Option("--ctx", "-c", min=64, help="Context per slot in tokens (default: the "
                                            "model's trained context, planned to fit memory).",
                                            show_default=False)] = None,
    kv_cache: KvCache = "auto",
    api_key: Annotated[str | None, typer.Option("--api-key", help="Require 'Authorization: Bearer KEY' on every "
                                                "endpoint but /health.", show_default=False)] = None,
    api_key_file: Annotated[Path | None, typer.Option("--api-key-file", help="Read the API key from this file "
                                                      "(keeps it out of the process list).",
                                                      show_default=False)] = None,
    threads: Threads = None,
    speculative: Speculative = "auto",
    draft: Draft = None,
    chat_template: ChatTemplate = None,
    prompt_cache: PromptCache = None,
) -> None:
    """Serve MODEL over the OpenAI HTTP API (/v1/chat/completions, /v1/completions, /v1/models).

    The socket is bound first and the model loads in the background (/health answers 503
    until it is ready). SIGTERM finishes running requests (up to 10 s) and exits 0; Ctrl-C
    cancels them and exits 130. See docs/serve.md.
    """
    try:
        from edgekit.serve import server
        from edgekit.serve.app import State
    except ImportError as exc:
        raise EdgekitError(f"edgekit serve needs the serve extra ({exc.name} is missing).", INSTALL_HINT) from None
    key = _api_key(api_key, api_key_file)
    template = read_chat_template(chat_template) if chat_template is not None else None
    model_id = _model_id(model)
    state = State(model_id=model_id, slots=slots, queue=queue, api_key=key, aliases=frozenset({model}))
    sock = server.bind(host, port)
    failure: list[BaseException] = []

    def load(progress: Any) -> Any:
        import edgekit

        m = edgekit.load(model, n_ctx=ctx, kv_cache=kv_cache, progress=progress, slots=slots, threads=threads,
                         speculative=speculative, draft=draft, chat_template=template,
                         prompt_cache=prompt_cache if prompt_cache is not None else "auto")
        print(f"plan: {m.plan.summary()}", file=sys.stderr, flush=True)
        if m.template_note:  # no chat template in the model: say which one is used, once
            print(f"warning: {m.template_note}", file=sys.stderr, flush=True)
        return m

    def ready(url: str) -> None:
        m = state.model
        print(f"edgekit serve: ready at {url}/v1 (model '{model_id}', {slots} slot{'s' * (slots > 1)} x "
              f"{m.n_ctx} tokens)", flush=True)

    print(f"edgekit serve: loading {model} on {server.url_of(sock)} ...", file=sys.stderr, flush=True)
    outcome = server.serve(load, state, sock, on_ready=ready, on_error=failure.append)
    if outcome == "load_failed":
        raise failure[0]
    if outcome == "interrupt":
        print("Interrupted: running requests were cancelled.", file=sys.stderr, flush=True)
        raise SystemExit(130)
    print("edgekit serve: stopped.", file=sys.stderr, flush=True)


def _api_key(key: str | None, path: Path | None) -> str | None:
    if key is not None and path is not None:
        raise EdgekitError("give --api-key or --api-key-file, not both")
    if path is not None:
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise EdgekitError(f"can't read the API key file {path}: {exc.strerror or exc}") from None
    if key is not None and not key:
        raise EdgekitError("the API key is empty", "Pass a non-empty key, or no key to serve without one.")
    return key


def _model_id(model: str) -> str:
    """The id clients send as "model": a file's or directory's name, else the name as given."""
    path = Path(model).expanduser()
    if path.is_file():
        return path.stem
    if path.is_dir():
        return path.name
    return model
