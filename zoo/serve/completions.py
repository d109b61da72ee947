"""OpenAI-compatible text generation for text-generation artifacts, so the clients of LLM servers work unchanged.

    POST /v1/completions         {"model": NAME, "prompt": "...", "max_tokens": 32, "stream": false}
    POST /v1/chat/completions    {"model": NAME, "messages": [{"role": "user", "content": "..."}], ...}
    GET  /v1/models              every served model ({"object": "list", "data": [...]})

Decoding is the artifact's own ``Generator`` (``zoo.runtime.generate``): each request runs
``Generator.pieces`` in a thread of its model's generation pool, one item per new token,
handed to the event loop; the route sends them as they come (``stream: true``, server-sent
events in OpenAI's chunk format, ``data: [DONE]`` last) or joins them. Between tokens the
thread checks whether the request was given up (the client disconnected), and stops.
A model runs at most ``ServeSettings.generations`` of them at once; ``generation_queue``
more wait; a request past that gets 429 with ``Retry-After``. Errors on these routes have
OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}`` (``openai_error``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from zoo.errors import InputError
from zoo.serve.errors import RequestError

PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/models")
RETRY_AFTER_S = 1
# OpenAI parameters that would change what comes back and that zoo does not implement: refused, never ignored
UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "suffix", "best_of", "logit_bias", "presence_penalty",
               "frequency_penalty", "tools", "functions", "response_format")
_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error"}


class ApiError(RequestError):
    """A refused OpenAI-style request: the status, and the ``param`` / ``code`` of OpenAI's error object."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message, status)
        self.param, self.code = param, code


def openai_error(status: int, message: str, exc: BaseException | None = None) -> Response:
    """OpenAI's error object for ``status``; a 429 says when to come back (``Retry-After``)."""
    body = {"error": {"message": message, "type": _TYPES.get(status, "server_error"),
                      "param": getattr(exc, "param", None), "code": getattr(exc, "code", None)}}
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 429 else None
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


# ---------------------------------------------------------------- request bodies


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send fields such as "user": accepted, unused

    model: str
    max_tokens: int | None = Field(None, description="new tokens at most (default: the model's generation_config)")
    temperature: float | None = Field(None, description="0 is greedy (default: the model's generation_config)")
    top_p: float | None = None
    stop: str | list[str] | None = Field(None, description="strings that end the text (not included)")
    seed: int | None = Field(None, description="seeds sampling, for repeatable answers")
    n: int = Field(1, description="choices per request: only 1")
    stream: bool = False
    stream_options: dict[str, Any] | None = Field(None, description='{"include_usage": true}: a last chunk with '
                                                  "the token counts")


class CompletionRequest(_Sampling):
    prompt: str


class ChatRequest(_Sampling):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = Field(None, description="max_tokens under its newer name")


# ---------------------------------------------------------------- the generation pool of one model


@dataclass(frozen=True)
class Token:
    """One decode step as the route sees it: the text it made certain (often '') and the counts so far."""

    piece: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None


@dataclass
class GenerationPool:
    """The threads one model generates in: ``slots`` at once, ``queue`` more waiting, the rest refused."""

    name: str
    generator: Any  # zoo.runtime.generate.Generator
    slots: int
    queue: int
    on_active: Callable[[float], None] = lambda _n: None
    on_end: Callable[[str, int], None] = lambda _outcome, _tokens: None
    active: int = field(default=0, init=False)
    executor: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix=f"zoo-generate-{self.name}")

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    def start(self, prompt: str, options: dict[str, Any]) -> Run:
        """A generation queued in the pool, or 429 when ``slots + queue`` are already taken (event loop only)."""
        if self.active >= self.slots + self.queue:
            raise ApiError(f"model '{self.name}' is busy: {self.active} generations are running or waiting, the "
                           f"most it takes (zoo serve --generations {self.slots} --generation-queue {self.queue}); "
                           f"retry after {RETRY_AFTER_S} s", status=429, code="rate_limit_exceeded")
        loop = asyncio.get_running_loop()
        run = Run(loop)
        self.active += 1
        self.on_active(self.active)
        future = loop.run_in_executor(self.executor, self._produce, run, prompt, options)
        future.add_done_callback(self._release)
        return run

    def _release(self, _future: Any) -> None:
        self.active -= 1
        self.on_active(self.active)

    def _produce(self, run: Run, prompt: str, options: dict[str, Any]) -> None:
        """Worker thread: one token at a time to the loop, until the end, an error or the request is given up."""
        outcome, tokens = "cancelled", 0
        try:
            for piece, row in self.generator.pieces(prompt, **options):
                if run.given_up.is_set():
                    break  # leaving the loop ends the decode: no step runs for a client that left
                tokens = len(row.new)
                run.put(Token(piece, len(row.prompt), tokens, row.finish))
            else:
                outcome = "finished"
        except BaseException as exc:  # the route raises it (before the first token: a 4xx answer)
            outcome = "failed"
            run.put(exc)
        finally:
            self.on_end(outcome, tokens)
            run.put(None)


class Run:
    """One generation's tokens, crossing from its thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.items: asyncio.Queue[Token | BaseException | None] = asyncio.Queue()
        self.given_up = threading.Event()

    def put(self, item: Token | BaseException | None) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)

    async def tokens(self, request: Request) -> AsyncGenerator[Token, None]:
        """The tokens as they come; stops the thread when the caller stops early or the client disconnects."""
        try:
            while (item := await self.items.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
                if await request.is_disconnected():
                    return
        finally:
            self.given_up.set()


# ---------------------------------------------------------------- routes


def add_openai_routes(app: FastAPI, pools: dict[str, GenerationPool], models: dict[str, Any]) -> None:
    """The three routes; ``pools`` holds the text-generation models, ``models`` every served one."""
    created = int(time.time())

    @app.get("/v1/models", tags=["openai"])
    async def list_models() -> Response:
        """Every served model, in OpenAI's list shape, with zoo's task, labels, source and inputs."""
        data = [{"id": m.name, "object": "model", "created": created, "owned_by": "zoo", "task": m.task,
                 "labels": list(m.model.labels or []), "source": m.info.get("name"), "inputs": m.model.signature()}
                for m in models.values()]
        return _json({"object": "list", "data": data})

    @app.post("/v1/completions", tags=["openai"])
    async def completions(body: CompletionRequest, request: Request) -> Response:
        """Continue ``prompt`` (OpenAI's legacy completions API)."""
        pool = _pool(pools, models, body)
        return await _answer(request, body, pool, body.prompt, _options(pool, body, body.max_tokens), chat=False)

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(body: ChatRequest, request: Request) -> Response:
        """The assistant's reply to ``messages``, through the model's own chat template."""
        pool = _pool(pools, models, body)
        try:
            prompt = pool.generator.chat_prompt(body.messages)
        except InputError as exc:
            raise ApiError(str(exc), param="messages") from None
        wanted = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        options = _options(pool, body, wanted)
        # the template writes the special tokens itself (as Generator.chat does)
        return await _answer(request, body, pool, prompt, {**options, "special_tokens": False}, chat=True)


def _pool(pools: dict[str, GenerationPool], models: dict[str, Any], body: _Sampling) -> GenerationPool:
    if body.model not in models:
        raise ApiError(f"model '{body.model}' is not served here; served: {', '.join(sorted(models)) or 'none'} "
                       "(GET /v1/models lists them)", status=404, param="model", code="model_not_found")
    if body.model not in pools:
        raise ApiError(f"model '{body.model}' is a {models[body.model].task} model; completions need a "
                       "text-generation artifact (use POST /v1/models/NAME/predict for this one)", param="model")
    # a neutral value (false, 0, null) asks for nothing zoo lacks
    given = [name for name in UNSUPPORTED if (body.model_extra or {}).get(name)]
    if given:
        raise ApiError(f"{given[0]} is not supported by zoo serve; leave it out (supported: max_tokens, "
                       "temperature, top_p, stop, seed, n=1, stream, stream_options)", param=given[0])
    if body.n != 1:
        raise ApiError(f"n={body.n}: zoo serve returns one choice per request; leave n out (or send 1) and "
                       "repeat the request for more", param="n")
    return pools[body.model]


def _options(pool: GenerationPool, body: _Sampling, max_tokens: int | None) -> dict[str, Any]:
    """The Generator's options; bad values are refused here, before anything runs (one message)."""
    options = {"max_new_tokens": max_tokens, "temperature": body.temperature, "top_p": body.top_p,
               "stop": body.stop, "seed": body.seed}
    try:
        pool.generator.settings(max_tokens, body.temperature, None, body.top_p, None)
    except InputError as exc:
        raise _refused(exc, None) from None
    return {k: v for k, v in options.items() if v is not None}


def _refused(exc: InputError, default: str | None) -> ApiError:
    """The Generator's message in OpenAI's words (max_tokens), with the parameter it names."""
    message = str(exc).replace("max_new_tokens=", "max_tokens=")
    named = [k for k in ("max_tokens", "temperature", "top_p", "stop") if f"{k}=" in message]
    # a prompt past the context names max_tokens too, but it is the prompt that does not fit
    param = default if "context length" in message or not named else named[0]
    return ApiError(message, param=param)


async def _answer(request: Request, body: _Sampling, pool: GenerationPool, prompt: str, options: dict[str, Any],
                  chat: bool) -> Response:
    run = pool.start(prompt, options)
    tokens = run.tokens(request)
    # the first token is awaited here: a prompt the model refuses (too long, empty) is still a 4xx answer
    try:
        first = await anext(tokens)
    except InputError as exc:  # a stop string, or a prompt the model cannot take (too long, no tokens)
        raise _refused(exc, "messages" if chat else "prompt") from None
    shape = _Shape(body.model, chat)
    if body.stream:
        usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(_events(shape, first, tokens, usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    text, last = first.piece, first
    async for token in tokens:
        text, last = text + token.piece, token
    return _json(shape.whole(text, last))


async def _events(shape: _Shape, first: Token, tokens: AsyncGenerator[Token, None],
                  usage: bool) -> AsyncIterator[str]:
    """Server-sent events: a chunk per piece of text, the finish reason, the usage if asked, then [DONE]."""
    last = first
    try:
        if shape.chat:
            yield _event(shape.chunk({"role": "assistant", "content": ""}, None))
        if first.piece or first.finish_reason:
            yield _event(shape.chunk(first.piece, first.finish_reason))
        async for token in tokens:
            last = token
            if token.piece or token.finish_reason:
                yield _event(shape.chunk(token.piece, token.finish_reason))
        if last.finish_reason is None:  # the client left (Run.tokens saw it): nobody to tell
            return
        if usage:
            yield _event({**shape.chunk("", None), "choices": [], "usage": _usage(last)})
        yield "data: [DONE]\n\n"
    except Exception as exc:  # after the 200 went out an error can only be told in the stream
        status = exc.status if isinstance(exc, RequestError) else 500
        yield _event({"error": {"message": str(exc) if status < 500 else "internal error while generating; the "
                                "server log has the details", "type": _TYPES.get(status, "server_error"),
                                "param": None, "code": None}})
    finally:
        await tokens.aclose()


@dataclass(frozen=True)
class _Shape:
    """The JSON of one answer: completion or chat, whole or in chunks."""

    model: str
    chat: bool
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))

    def _head(self, obj: str) -> dict[str, Any]:
        prefix = "chatcmpl-" if self.chat else "cmpl-"
        return {"id": prefix + self.id, "object": obj, "created": self.created, "model": self.model}

    def whole(self, text: str, last: Token) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "logprobs": None, "finish_reason": last.finish_reason}
            return {**self._head("chat.completion"), "choices": [choice], "usage": _usage(last)}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": last.finish_reason}
        return {**self._head("text_completion"), "choices": [choice], "usage": _usage(last)}

    def chunk(self, delta: str | dict[str, str], finish: str | None) -> dict[str, Any]:
        if self.chat:
            content = delta if isinstance(delta, dict) else ({"content": delta} if delta else {})
            choice: dict[str, Any] = {"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice]}


def _usage(token: Token) -> dict[str, int]:
    return {"prompt_tokens": token.prompt_tokens, "completion_tokens": token.completion_tokens,
            "total_tokens": token.prompt_tokens + token.completion_tokens}


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _json(content: Any) -> Response:
    return Response(json.dumps(content, separators=(",", ":")), media_type="application/json")
