"""The ASGI app: routes, auth, body limit, admission, and the generation endpoints.

The model is loaded elsewhere (:mod:`edgekit.serve.server` binds first and loads in the
background); until :attr:`State.model` is set, /health answers 503 and so does every
endpoint that needs the model.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from edgekit.errors import ContextOverflow, EdgekitError
from edgekit.runtime import tools
from edgekit.runtime.engine import Step
from edgekit.serve import responses
from edgekit.serve.errors import APIError, invalid
from edgekit.serve.metrics import Metrics
from edgekit.serve.params import Request, error_for, parse_chat, parse_completion, parse_json
from edgekit.serve.runner import Job

log = logging.getLogger("edgekit.serve")

MAX_BODY = 4 << 20  # a 128k-token prompt is about 0.5 MB of text; JSON escaping at most doubles it
RETRY_AFTER_S = 1


@dataclass
class State:
    """What the app serves: the model once loaded, the limits, the counters and the running jobs."""

    model_id: str
    slots: int = 1
    queue: int = 4
    api_key: str | None = None
    aliases: frozenset[str] = frozenset()
    max_body: int = MAX_BODY
    model: Any = None  # an edgekit.Model once loaded
    metrics: Metrics = field(init=False)
    jobs: set[Job] = field(default_factory=set)
    created: int = field(default_factory=responses.now)

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.slots, self.queue)
        self.metrics.running = self._running
        self.metrics.prompt_cache = lambda: getattr(self.model, "prompt_cache", None)
        self.executor = ThreadPoolExecutor(max_workers=self.slots + self.queue, thread_name_prefix="edgekit-seq")

    def ready_model(self) -> Any:
        if self.model is None:
            raise APIError(503, "The model is still loading.", code="model_loading",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        return self.model

    def _running(self) -> int:
        """Sequences that hold a slot now: started by the engine and not finished."""
        return sum(1 for job in list(self.jobs) for seq in job.sequences
                   if getattr(seq, "slot", None) is not None and not seq.done)

    def cancel_all(self) -> None:
        """Cancel every running sequence (Ctrl-C, or the end of a graceful shutdown)."""
        for job in list(self.jobs):
            job.cancel()


# -- middleware: metrics, auth, body size (pure ASGI, so streams and disconnects pass untouched) --------------

class Guard:
    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        status = [0]

        async def send_counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            error = self._check(scope)
            if error is not None:
                await error.response()(scope, receive, send_counted)
            else:
                await self.app(scope, receive, send_counted)
        except Exception as exc:
            if not status[0]:  # the app's own handler answers first; this covers the guard itself
                await _internal_error(exc).response()(scope, receive, send_counted)
            raise  # the server logs it
        finally:
            known = path if path in KNOWN_PATHS else "other"
            self.state.metrics.count_request(known, status[0] or 499)

    def _check(self, scope: Scope) -> APIError | None:
        headers = dict(scope["headers"])
        key = self.state.api_key
        if key is not None and scope["path"] != "/health":
            given = headers.get(b"authorization", b"").decode("latin-1")
            token = given[7:].strip() if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), key.encode()):
                return APIError(401, "Missing or incorrect API key. Send it as 'Authorization: Bearer KEY'.",
                                code="invalid_api_key")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.state.max_body):
            return APIError(413, f"The body is larger than {self.state.max_body} bytes.", code="request_too_large")
        return None


async def read_json(request: HTTPRequest, limit: int) -> dict[str, Any]:
    """The body as a JSON object, reading at most ``limit`` bytes (chunked bodies too)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"The body is larger than {limit} bytes.", code="request_too_large")
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


# -- endpoints ------------------------------------------------------------------------------------------------

def _state(request: HTTPRequest) -> State:
    return request.app.state.edgekit


async def health(request: HTTPRequest) -> Response:
    _state(request).ready_model()  # 503 with Retry-After while it loads
    return JSONResponse({"status": "ok"})


async def metrics(request: HTTPRequest) -> Response:
    return PlainTextResponse(_state(request).metrics.render(), media_type="text/plain; version=0.0.4")


def _model_card(state: State) -> dict[str, Any]:
    card: dict[str, Any] = {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "edgekit"}
    if state.model is not None:
        card["meta"] = {"n_ctx": state.model.n_ctx, "n_vocab": state.model.n_vocab, "slots": state.slots}
    return card


async def list_models(request: HTTPRequest) -> Response:
    return JSONResponse({"object": "list", "data": [_model_card(_state(request))]})


async def get_model(request: HTTPRequest) -> Response:
    state = _state(request)
    name = request.path_params["name"]
    if name != state.model_id and name not in state.aliases:
        raise APIError(404, f"The model '{name}' does not exist; this server serves '{state.model_id}'.",
                       param="model", code="model_not_found")
    return JSONResponse(_model_card(state))


async def tokenize(request: HTTPRequest) -> Response:
    state = _state(request)
    body = await read_json(request, state.max_body)
    model = state.ready_model()
    content = body.get("content")
    if not isinstance(content, str):
        raise invalid("content", "'content' is required and must be a string.")
    add_special = body.get("add_special", False)
    with_pieces = body.get("with_pieces", False)
    if not isinstance(add_special, bool) or not isinstance(with_pieces, bool):
        raise invalid("add_special" if not isinstance(add_special, bool) else "with_pieces",
                      "'add_special' and 'with_pieces' must be true or false.")

    def run() -> dict[str, Any]:
        try:
            tokens = model.tokenize(content, add_special=add_special)
        except EdgekitError as exc:
            raise error_for(exc, "content") from None
        if with_pieces:
            return {"tokens": [{"id": t, "piece": model.detokenize([t])} for t in tokens]}
        return {"tokens": tokens}

    return JSONResponse(await anyio.to_thread.run_sync(run))


def _check_token_ids(tokens: Any, n_vocab: int, param: str) -> list[int]:
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise invalid(param, f"'{param}' must be a list of token ids.")
    bad = [t for t in tokens if not 0 <= t < n_vocab]
    if bad:
        raise invalid(param, f"token id {bad[0]} is outside the vocabulary (0..{n_vocab - 1}).")
    return tokens


async def detokenize(request: HTTPRequest) -> Response:
    state = _state(request)
    body = await read_json(request, state.max_body)
    model = state.ready_model()
    tokens = _check_token_ids(body.get("tokens"), model.n_vocab, "tokens")
    return JSONResponse({"content": await anyio.to_thread.run_sync(model.detokenize, tokens)})


# -- generation -------------------------------------------------------------------------------------------------

def _check_model(state: State, req: Request) -> None:
    if req.model != state.model_id and req.model not in state.aliases:
        raise invalid("model", f"The model '{req.model}' does not exist; this server serves '{state.model_id}'.",
                      code="model_not_found")


def _constraints(req: Request) -> Any:
    """tools / tool_choice / response_format -> a ToolRequest and grammar options on ``req.sampling``.

    Converts JSON schemas to grammars (CPU work: called in a worker thread)."""
    try:
        treq = tools.tool_request(req.tools, req.tool_choice, req.parallel_tool_calls)
        if treq.active and req.logprobs is not None:
            raise invalid("logprobs", "'logprobs' can't be combined with tools (the content is parsed out of the "
                                      "output, so its tokens would not match).")
        options = tools.constraint_options(treq, req.response_format, own_grammar=bool(req.sampling.grammar))
        if options:
            req.sampling = req.sampling.replace(**options)
    except EdgekitError as exc:
        raise error_for(exc) from None
    return treq if treq.active else None


def _fit(model: Any, tokens: list[int], param: str) -> None:
    """The model's rule (:meth:`Model.check_prompt`: never truncate) in OpenAI's words."""
    try:
        model.check_prompt(tokens)
    except ContextOverflow:
        raise invalid(param, f"This model's maximum context length is {model.n_ctx} tokens; the prompt has "
                             f"{len(tokens)} tokens, leaving no room for an answer. Shorten it (the server never "
                             "truncates).", code="context_length_exceeded") from None
    except EdgekitError as exc:
        raise error_for(exc, param) from None


def _chat_prompt(model: Any, req: Request) -> tuple[Any, list[int]]:
    """The tool request (or None) and the prompt tokens of a chat request."""
    treq = _constraints(req)
    try:
        tokens = model.chat_tokens(req.messages, tools=treq.prompt_tools) if treq else model.chat_tokens(req.messages)
    except EdgekitError as exc:
        raise error_for(exc, "messages") from None
    _fit(model, tokens, "messages")
    return treq, tokens


def _completion_prompts(model: Any, req: Request) -> list[list[int]]:
    out = []
    for p in req.prompts:
        if isinstance(p, str):
            try:
                tokens = model.tokenize(p, add_special=True)
            except EdgekitError as exc:
                raise error_for(exc, "prompt") from None
        else:
            tokens = _check_token_ids(p, model.n_vocab, "prompt")
        _fit(model, tokens, "prompt")
        out.append(tokens)
    return out


def _start(model: Any, prompts: list[list[int]], req: Request) -> list[Any]:
    """Start n sequences per prompt; on failure cancel those already started."""
    sequences: list[Any] = []
    try:
        for tokens in prompts:
            sequences += model.start(tokens, req.sampling, n=req.n)
    except BaseException:
        for seq in sequences:
            seq.cancel()
        raise
    return sequences


def _sequence_error(exc: BaseException, req: Request) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextOverflow):
        return invalid("messages" if req.messages else "prompt", exc.message, code="context_length_exceeded")
    if isinstance(exc, EdgekitError):  # an InvalidParam (logit_bias, grammar) names its field
        return error_for(exc)
    log.exception("generation failed", exc_info=exc)
    return _internal_error(exc)


async def _begin(request: HTTPRequest, chat: bool) -> tuple[State, Any, Request, Any, list[list[int]], Job]:
    """Parse, validate, build the prompt, admit, and start the sequences."""
    state = _state(request)
    body = await read_json(request, state.max_body)
    model = state.ready_model()
    base = model.defaults.replace(max_tokens=None)
    req = (parse_chat if chat else parse_completion)(body, base=base, slots=state.slots)
    _check_model(state, req)
    if chat:
        treq, prompt = await anyio.to_thread.run_sync(_chat_prompt, model, req)
        prompts = [prompt]
    else:
        treq, prompts = None, await anyio.to_thread.run_sync(_completion_prompts, model, req)
    n_sequences = len(prompts) * req.n
    if not state.metrics.admit(n_sequences):
        raise APIError(503, f"The server is busy ({state.slots} slots and a queue of {state.queue} are full). "
                            "Retry shortly.", code="server_busy", headers={"Retry-After": str(RETRY_AFTER_S)})
    state.metrics.count_prompt(sum(len(p) for p in prompts))
    try:
        sequences = await anyio.to_thread.run_sync(_start, model, prompts, req)
    except BaseException as exc:
        state.metrics.release(n_sequences)
        if isinstance(exc, Exception):
            raise _sequence_error(exc, req) from None
        raise
    job = Job(sequences, state.executor, on_end=state.metrics.sequence_ended)
    state.jobs.add(job)
    return state, model, req, treq, prompts, job


class _Choices:
    """Per-choice text, logprobs and finish reasons while events arrive."""

    def __init__(self, model: Any, req: Request, count: int, treq: Any = None) -> None:
        self.req = req
        self.treq = treq  # active tools: content is split from the calls as it streams
        self.calls: list[list[dict]] = [[] for _ in range(count)]
        self._splitters = [treq.stream() for _ in range(count)] if treq is not None else None
        self.sent = [""] * count
        # one token's piece per top logprob, on the event loop: a vocabulary lookup of microseconds, which a
        # thread handoff per step would cost more than
        self.aligners = [responses.LogprobAligner(lambda t: model.detokenize([t])) for _ in range(count)]
        self.finish: list[str | None] = [None] * count
        self.completion_tokens = 0

    def on_step(self, i: int, step: Any) -> tuple[str, list[dict]]:
        """The new content and the logprob entries it completes."""
        entries: list[dict] = []
        if self.req.logprobs is not None and step.token >= 0:  # not the engine's text-only last step
            self.aligners[i].step(step)
        if self.req.logprobs is not None and step.text:
            entries = self.aligners[i].text(step.text)
        text = self._splitters[i].feed(step.text) if self._splitters else step.text
        self.sent[i] += text
        return text, entries

    def on_completion(self, i: int, completion: Any) -> tuple[str, list[dict]]:
        """The content not sent yet (held back until the end) and the remaining logprob entries.

        The steps' texts joined are ``completion.text`` (the engine sends held-back text as a last
        step), so only the tool-call splitter can still hold content back here.
        """
        entries = self.aligners[i].text("", final=True) if self.req.logprobs is not None else []
        self.finish[i] = responses.FINISH.get(completion.finish_reason, "stop")
        tail = ""
        if self._splitters:
            tail, reply = self._splitters[i].finish()
            self.calls[i] = [c.as_dict() for c in reply.tool_calls]
            if self.calls[i]:
                self.finish[i] = "tool_calls"
        self.sent[i] += tail
        self.completion_tokens += len(completion.tokens)
        return tail, entries

    def content(self, i: int) -> str | None:
        """The message content (None when the answer is only tool calls, as OpenAI sends it)."""
        return None if self.calls[i] and not self.sent[i] else self.sent[i]


async def _events(state: State, job: Job, req: Request, choices: _Choices) -> AsyncIterator[tuple[int, str, list]]:
    """(choice, new text, logprob entries) events, and a final ``(i, None, ...)`` per finished choice."""
    while (event := await job.next()) is not None:
        i, item = event
        if isinstance(item, BaseException):
            raise _sequence_error(item, req)
        if isinstance(item, Step):
            text, entries = choices.on_step(i, item)
            if text or entries:
                yield i, text, entries
        else:
            if item.finish_reason == "cancelled":
                raise APIError(503, "The request was cancelled: the server is shutting down.", code="cancelled")
            text, entries = choices.on_completion(i, item)
            if text or entries:
                yield i, text, entries
            yield i, None, []  # type: ignore[misc]


async def _until_disconnect(request: HTTPRequest, job: Job, work: Any) -> Any:
    """Await ``work``; if the client goes away first, cancel the job (its slots free within a step)."""
    result: list[Any] = []
    failure: list[BaseException] = []

    async def run() -> None:
        try:
            result.append(await work)
        except Exception as exc:  # re-raised below as itself, not wrapped in the task group's ExceptionGroup
            failure.append(exc)
        tg.cancel_scope.cancel()

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancel()
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        tg.start_soon(watch)
    if failure:
        raise failure[0]
    if not result:
        raise APIError(499, "The client closed the request.")
    return result[0]


async def _finish(state: State, job: Job) -> None:
    with anyio.CancelScope(shield=True):
        await job.close()
    state.jobs.discard(job)


async def chat_completions(request: HTTPRequest) -> Response:
    return await _generate(request, chat=True)


async def completions(request: HTTPRequest) -> Response:
    return await _generate(request, chat=False)


async def _generate(request: HTTPRequest, chat: bool) -> Response:
    state, model, req, treq, prompts, job = await _begin(request, chat)
    n_choices = len(job.sequences)
    choices = _Choices(model, req, n_choices, treq)
    prompt_tokens = sum(len(p) for p in prompts)
    meta = {"id": responses.new_id("chatcmpl" if chat else "cmpl"), "created": responses.now(), "model": req.model}
    if req.stream:
        return EventStream(_stream(state, job, req, choices, meta, chat, prompt_tokens, model, prompts),
                           on_close=lambda: _finish(state, job))
    try:
        async def collect() -> dict[int, list[dict]]:
            logprobs: dict[int, list[dict]] = {i: [] for i in range(n_choices)}
            async for i, _text, entries in _events(state, job, req, choices):
                logprobs[i] += entries
            return logprobs

        logprobs = await _until_disconnect(request, job, collect())
    finally:
        await _finish(state, job)
    body: dict[str, Any] = {**meta, "object": "chat.completion" if chat else "text_completion",
                            "usage": responses.usage(prompt_tokens, choices.completion_tokens)}
    if chat:
        body["choices"] = []
        for i in range(n_choices):
            message: dict[str, Any] = {"role": "assistant", "content": choices.content(i)}
            if choices.calls[i]:
                message["tool_calls"] = choices.calls[i]
            body["choices"].append({
                "index": i, "message": message, "finish_reason": choices.finish[i],
                "logprobs": responses.chat_logprobs(logprobs[i]) if req.logprobs is not None else None})
    else:
        body["choices"] = []
        for i in range(n_choices):
            echo = await _echo_text(model, req, prompts, i)
            body["choices"].append({
                "index": i, "text": echo + choices.sent[i], "finish_reason": choices.finish[i],
                "logprobs": responses.legacy_logprobs(logprobs[i]) if req.logprobs is not None else None})
    return JSONResponse(body)


async def _echo_text(model: Any, req: Request, prompts: list[list[int]], i: int) -> str:
    """The prompt of choice ``i`` to echo: as sent, or detokenized off the event loop (a prompt of
    token ids may be thousands of tokens long)."""
    if not req.echo:
        return ""
    prompt = req.prompts[i // req.n]
    if isinstance(prompt, str):
        return prompt
    return await anyio.to_thread.run_sync(model.detokenize, prompts[i // req.n])


def _sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _stream(state: State, job: Job, req: Request, choices: _Choices, meta: dict, chat: bool,
                  prompt_tokens: int, model: Any, prompts: list[list[int]]) -> AsyncIterator[bytes]:
    obj = "chat.completion.chunk" if chat else "text_completion"
    extra = {"usage": None} if req.include_usage else {}

    def chunk(i: int, text: str | None, entries: list[dict], finish: str | None = None, role: bool = False) -> bytes:
        if chat:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            if role:
                delta["role"] = "assistant"
            lp = responses.chat_logprobs(entries) if entries else None
            choice = {"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}
        else:
            lp = responses.legacy_logprobs(entries) if entries else None
            choice = {"index": i, "text": text or "", "logprobs": lp, "finish_reason": finish}
        return _sse({**meta, "object": obj, "choices": [choice], **extra})

    for i in range(len(job.sequences)):
        if chat:
            yield chunk(i, "", [], role=True)
        elif req.echo:
            yield chunk(i, await _echo_text(model, req, prompts, i), [])
    try:
        async for i, text, entries in _events(state, job, req, choices):
            if text is None and choices.calls[i]:
                calls = [{"index": k, **call} for k, call in enumerate(choices.calls[i])]
                yield _sse({**meta, "object": obj, **extra, "choices": [
                    {"index": i, "delta": {"tool_calls": calls}, "logprobs": None, "finish_reason": None}]})
            yield chunk(i, text, entries, finish=choices.finish[i] if text is None else None)
    except APIError as exc:  # headers are sent: report in the stream, as OpenAI does
        yield _sse(exc.body())
        return
    except Exception as exc:  # a bug: reported in the stream in the same shape, and logged
        log.exception("streaming failed", exc_info=exc)
        yield _sse(_internal_error(exc).body())
        return
    if req.include_usage:
        yield _sse({**meta, "object": obj, "choices": [],
                    "usage": responses.usage(prompt_tokens, choices.completion_tokens)})
    yield _sse("[DONE]")


class EventStream(StreamingResponse):
    """Server-sent events that stop (and run ``on_close``) as soon as the client disconnects."""

    def __init__(self, body: AsyncIterator[bytes], on_close: Any) -> None:
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async with anyio.create_task_group() as tg:
                async def watch() -> None:
                    nonlocal gone
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    gone = True
                    tg.cancel_scope.cancel()

                tg.start_soon(watch)
                async for data in self.body_iterator:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                tg.cancel_scope.cancel()
            if not gone:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away while we wrote
            pass
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            await self.on_close()


# -- the app --------------------------------------------------------------------------------------------------------

async def _api_error(request: HTTPRequest, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response()


def _internal_error(exc: BaseException) -> APIError:
    return APIError(500, f"The server failed on this request: {type(exc).__name__}. This is a bug in edgekit; "
                         "its log has the details.", code="internal_error")


async def _unexpected_error(request: HTTPRequest, exc: Exception) -> Response:
    """Defense in depth: an exception no handler expected is a JSON 500 in OpenAI's shape, never a
    plain-text one. (Starlette then re-raises it, so the server logs the traceback.)"""
    return _internal_error(exc).response()


async def _http_error(request: HTTPRequest, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return APIError(404, f"Unknown route: {request.method} {request.url.path}.", code="not_found").response()
    if exc.status_code == 405:
        return APIError(405, f"{request.method} is not allowed on {request.url.path}.",
                        code="method_not_allowed").response()
    return APIError(exc.status_code, str(exc.detail)).response()


ROUTES = [
    Route("/health", health, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{name:path}", get_model, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/tokenize", tokenize, methods=["POST"]),
    Route("/detokenize", detokenize, methods=["POST"]),
]
KNOWN_PATHS = frozenset(r.path for r in ROUTES if "{" not in r.path)


def create_app(state: State, lifespan: Any = None) -> ASGIApp:
    """The server's ASGI app for ``state`` (the model may be set later)."""
    app = Starlette(routes=ROUTES, lifespan=lifespan,
                    exception_handlers={APIError: _api_error, HTTPException: _http_error,
                                        Exception: _unexpected_error})
    app.state.edgekit = state
    return Guard(app, state)

