"""The HTTP layer: an OpenAI-compatible API over a Server (FastAPI).

    GET  /v1/models                base model + adapters
    POST /v1/completions           prompt -> text       (``stream: true``: server-sent events)
    POST /v1/chat/completions      messages -> message  (the base tokenizer's chat template)
    POST /v1/adapters              {"name", "path"}: load an adapter (path inside --adapters DIR)
    DELETE /v1/adapters/{name}     unload it
    GET  /health                   liveness (never needs the API key)
    GET  /metrics                  Prometheus text

The ``model`` field of a request names an adapter or the base model. Every error is a JSON
``{"error": {...}}`` with a reason; no traceback ever reaches the client, and a client error
leaves none in the log. A client that goes away (before its first token or during a stream)
cancels its generation, which frees its batch place and adapter slot at the next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lorakit.serve.connection import ClientGone, read_json, unless_gone
from lorakit.serve.engine import Delta, Done, EngineClosed, Failed, QueueFull, Request
from lorakit.serve.registry import RegistryError
from lorakit.serve.request_bodies import AdapterLoad, APIError, ChatRequest, CompletionRequest, parse
from lorakit.serve.server import AdapterUnavailable, Server
from lorakit.serve.threads import serial_openmp

log = logging.getLogger("lorakit.serve")


def create_app(server: Server) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        server.engine.start()
        yield
        await run_in_threadpool(server.engine.stop, 0.0)  # uvicorn already let requests drain

    app = FastAPI(title="lorakit serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    _install_guards(app, server)

    @app.get("/health")
    async def health():
        running, waiting = server.engine.counts()
        return {"status": "ok", "model": server.model_id, "running": running, "waiting": waiting,
                "in_flight": server.engine.in_flight}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        created = int(server_started)
        data = [{"id": server.model_id, "object": "model", "created": created, "owned_by": "lorakit"}]
        data += [{"id": n, "object": "model", "created": created, "owned_by": "lorakit",
                  "parent": server.model_id, "root": n} for n in server.registry.names()]
        return {"object": "list", "data": data}

    @app.post("/v1/adapters")
    async def load_adapter(request: HTTPRequest):
        body = parse(AdapterLoad, await read_json(request, max_body))
        try:
            adapter = await _off_engine(server.load_adapter, body.name, body.path)
        except AdapterUnavailable as err:
            raise APIError(400, str(err)) from None
        return {"id": body.name, "object": "model", "owned_by": "lorakit", "parent": server.model_id,
                "rank": adapter.max_rank, "modules": len(adapter.modules)}

    @app.delete("/v1/adapters/{name}")
    async def unload_adapter(name: str):
        server.unload_adapter(name)
        return {"id": name, "object": "model", "deleted": True}

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        body = parse(CompletionRequest, await read_json(request, max_body))
        if len(body.prompts()) > server.config.max_queue:
            raise APIError(400, f"prompt: {len(body.prompts())} prompts in one request; this server takes "
                                f"at most {server.config.max_queue} (--max-queue)", "prompt")
        prompts = [_token_ids(server, p) for p in body.prompts()]
        if not prompts:
            raise APIError(400, "prompt is empty", "prompt")
        params = body.sampling(body.max_tokens, server.config.default_max_tokens, server.config.max_tokens)
        return await _generate(server, "completions", body, prompts, params, request)

    @app.post("/v1/chat/completions")
    async def chat(request: HTTPRequest):
        body = parse(ChatRequest, await read_json(request, max_body))
        params = body.sampling(body.limit(), server.config.default_max_tokens, server.config.max_tokens)
        return await _generate(server, "chat", body, [_chat_ids(server, body)], params, request)

    server_started = time.time()
    max_body = _max_body(server)
    return app


def _max_body(server: Server) -> int:
    return max(1 << 20, server.config.max_prompt_tokens * 64)


def _install_guards(app: FastAPI, server: Server) -> None:
    """Auth, body size, request counting, and errors in OpenAI's shape."""
    max_body = _max_body(server)

    @app.middleware("http")
    async def guard(request: HTTPRequest, call_next):
        endpoint = request.url.path if request.url.path.startswith("/v1/") else request.url.path.strip("/")
        if request.url.path.startswith("/v1/adapters/"):
            endpoint = "/v1/adapters/{name}"
        try:
            _check_auth(server, request)
            size = request.headers.get("content-length")
            if size is not None and size.isdigit() and int(size) > max_body:
                raise APIError(413, f"request body of {size} bytes exceeds the limit of {max_body}")
            response = await call_next(request)
        except APIError as err:
            response = _error(err)
        except Exception as err:  # a bug must cost one request a 500, never leak a traceback
            log.exception("unhandled error on %s", request.url.path)
            response = _error(APIError(500, f"internal server error ({type(err).__name__})"))
        server.metrics.requests.inc(1, endpoint, str(response.status_code))
        return response

    @app.exception_handler(APIError)
    async def api_error(request, err: APIError):
        return _error(err)

    @app.exception_handler(RegistryError)
    async def registry_error(request, err: RegistryError):
        return _error(APIError(err.status, str(err)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, err: StarletteHTTPException):
        return _error(APIError(err.status_code, str(err.detail)))


def _check_auth(server: Server, request: HTTPRequest) -> None:
    if not server.api_key or request.url.path == "/health":
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), server.api_key.encode()):
        raise APIError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')")


def _error(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def _check_prompt(server: Server, ids: list[int]) -> list[int]:
    limit = server.config.max_prompt_tokens
    if server.max_length:
        limit = min(limit, server.max_length - 1)
    if len(ids) > limit:
        raise APIError(413, f"prompt has {len(ids)} tokens; this server accepts at most {limit}")
    if not ids:
        raise APIError(400, "prompt is empty", "prompt")
    return ids


def _token_ids(server: Server, prompt) -> list[int]:
    if isinstance(prompt, str):
        # Refuse absurd prompts before tokenizing them (a token is rarely under one character).
        if len(prompt) > server.config.max_prompt_tokens * 32:
            raise APIError(413, f"prompt of {len(prompt)} characters is far beyond the "
                                f"{server.config.max_prompt_tokens}-token limit")
        return _check_prompt(server, server.tokenizer(prompt, add_special_tokens=True)["input_ids"])
    vocab = len(server.tokenizer)
    if any(not 0 <= t < vocab for t in prompt):
        raise APIError(400, f"prompt token ids must be in [0, {vocab})", "prompt")
    return _check_prompt(server, list(prompt))


def _chat_ids(server: Server, body: ChatRequest) -> list[int]:
    tok = server.tokenizer
    if not getattr(tok, "chat_template", None):
        raise APIError(400, f"the base model {server.model_id!r} has no chat template; use /v1/completions")
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    try:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as err:  # a template's raise_exception (jinja2 TemplateError): the messages' fault
        raise APIError(400, f"messages: the chat template of {server.model_id!r} refused them "
                            f"({type(err).__name__}: {err})", "messages") from None
    if len(text) > server.config.max_prompt_tokens * 32:
        raise APIError(413, f"conversation of {len(text)} characters is far beyond the "
                            f"{server.config.max_prompt_tokens}-token limit")
    return _check_prompt(server, tok(text, add_special_tokens=False)["input_ids"])


class _Channel:
    """Events from the engine thread, delivered into this request's event loop."""

    def __init__(self, index: int):
        self.index = index
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

    def emit(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is gone (server stopped): nobody is listening
            pass


def _off_engine(fn, *args):
    """Run ``fn`` (adapter file reads) in a worker thread whose torch ops stay on that thread:
    an OpenMP pool there would slow every engine step (lorakit/serve/threads.py)."""
    def call():
        serial_openmp()
        return fn(*args)

    return run_in_threadpool(call)


async def _generate(server: Server, endpoint: str, body, prompts: list[list[int]], params, http: HTTPRequest):
    try:
        adapter = await _off_engine(server.adapter, body.model)
    except AdapterUnavailable as err:
        raise APIError(422, str(err), "model") from None
    started = time.monotonic()
    channels = [_Channel(i) for i in range(len(prompts))]
    requests = [Request(ids, params, ch.emit, adapter, timeout=server.config.request_timeout)
                for ids, ch in zip(prompts, channels)]
    try:
        for req in requests:
            server.engine.submit(req)
    except QueueFull as err:
        _cancel(requests)
        raise APIError(429, f"server busy: {err}; retry later") from None
    except EngineClosed as err:
        _cancel(requests)
        raise APIError(503, str(err)) from None
    shape = _Shape(endpoint, body.model)
    try:
        if not body.stream:
            try:
                results = await unless_gone(http, _collect_all(channels), lambda: _cancel(requests))
            finally:
                _cancel(requests)
            server.metrics.latency.observe(time.monotonic() - started, endpoint)
            return shape.full(results)
        first = await unless_gone(http, channels[0].queue.get(), lambda: _cancel(requests))
    except ClientGone:
        raise APIError(499, "the client went away before its answer was ready") from None
    if isinstance(first, Failed):
        _cancel(requests)
        raise APIError(first.status, first.message)
    return StreamingResponse(_sse(server, shape, channels, requests, first, started),
                             media_type="text/event-stream")


async def _collect_all(channels: list[_Channel]) -> list[Done]:
    return [await _collect(ch) for ch in channels]


async def _collect(channel: _Channel) -> Done:
    parts = []
    while True:
        event = await channel.queue.get()
        if isinstance(event, Failed):
            raise APIError(event.status, event.message)
        if isinstance(event, Done):
            return event
        parts.append(event.text)


async def _sse(server: Server, shape, channels, requests, first, started):
    """Server-sent events: one chunk per text piece, a final chunk with the finish reason and
    usage, then ``[DONE]``. A failure after the stream began is sent as an error event."""
    try:
        for ch in channels:
            event = first if ch.index == 0 else await ch.queue.get()
            if shape.endpoint == "chat":
                yield _data(shape.chunk(ch.index, None, None, role=True))
            while True:
                if isinstance(event, Failed):
                    yield _data(APIError(event.status, event.message).body())
                    break
                if isinstance(event, Done):
                    yield _data(shape.chunk(ch.index, "", event.finish_reason, usage=event))
                    break
                yield _data(shape.chunk(ch.index, event.text, None))
                event = await ch.queue.get()
        yield "data: [DONE]\n\n"
    finally:
        _cancel(requests)  # a client that went away stops its generation
        server.metrics.latency.observe(time.monotonic() - started, shape.endpoint)


def _data(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _cancel(requests) -> None:
    for req in requests:
        req.cancel()


class _Shape:
    """OpenAI response objects for one request (completion or chat, whole or chunked)."""

    def __init__(self, endpoint: str, model: str):
        self.endpoint, self.model = endpoint, model
        chat = endpoint == "chat"
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.object = "chat.completion" if chat else "text_completion"
        self.created = int(time.time())

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def full(self, results: list[Done]) -> dict:
        out = self._head(self.object)
        if self.endpoint == "chat":
            out["choices"] = [{"index": i, "message": {"role": "assistant", "content": r.text},
                               "finish_reason": r.finish_reason} for i, r in enumerate(results)]
        else:
            out["choices"] = [{"index": i, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
                              for i, r in enumerate(results)]
        out["usage"] = _usage(results)
        return out

    def chunk(self, index: int, text: str | None, finish: str | None, role: bool = False, usage=None) -> dict:
        if self.endpoint == "chat":
            out = self._head("chat.completion.chunk")
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            out["choices"] = [{"index": index, "delta": delta, "finish_reason": finish}]
        else:
            out = self._head("text_completion")
            out["choices"] = [{"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}]
        if usage is not None:
            out["usage"] = _usage([usage])
        return out


def _usage(results: list[Done]) -> dict:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
