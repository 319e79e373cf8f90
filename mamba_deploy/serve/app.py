"""The FastAPI application: OpenAI's /v1/completions, /v1/chat/completions and /v1/models, plus /health and
/metrics (docs/architecture.md "Serving"). Bodies are read and checked by hand (protocol.py) so that every
refusal has OpenAI's error body; nothing a client sends can raise past the handlers. Needs the `serve`
extra (fastapi, uvicorn): import it through `serve.server`, which says so when they are missing."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from .metrics import CONTENT_TYPE
from .protocol import APIError, Formatter, GenerationRequest, parse_chat, parse_completion, usage
from .service import END, Run, Service, collect, finish_reason

MAX_BODY_BYTES = 16 * 2**20
ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")


def create_app(service: Service):
    """The ASGI app over `service` (one Scheduler per app)."""
    app = FastAPI(title="mamba-deploy", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(CountRequests, service=service)
    check_key = _key_checker(service.options.api_key)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse(APIError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}").body(), status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(service.render_metrics(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def models():
        card = {"id": service.model_name, "object": "model", "created": 0, "owned_by": "mamba-deploy",
                "max_model_len": service.options.max_prompt_tokens + service.options.max_tokens_limit}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(request: Request):
        started = time.perf_counter()
        body = await read_json(request)
        parsed = await asyncio.to_thread(parse_completion, body, service.limits)  # tokenizing may take a while
        return await respond(service, parsed, Formatter(False, service.model_name), request, started)

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(request: Request):
        started = time.perf_counter()
        body = await read_json(request)
        if service.chat is None:
            raise APIError(400, "this model has no chat template (tokenizer_config.json has no 'chat_template'); "
                                "use /v1/completions", "messages", "no_chat_template")
        parsed = await asyncio.to_thread(parse_chat, body, service.limits, service.chat.render)
        return await respond(service, parsed, Formatter(True, service.model_name), request, started)

    return app


async def respond(service: Service, parsed: GenerationRequest, fmt: Formatter, request: Request, started: float):
    """Submit, then the whole body (polling for a disconnect) or an SSE stream of chunks."""
    run = Run(service, service.submit(parsed), started)
    if parsed.stream:
        return EventStream(run, sse(run, fmt, parsed.include_usage))
    try:
        pieces = await collect(run, request.is_disconnected)
    finally:
        run.stop()
    choices = [fmt.choice(i, *_output(pieces[i]), finish_reason(h)) for i, h in enumerate(run.handles)]
    return JSONResponse(fmt.body(choices, _usage(run)))


class EventStream(StreamingResponse):
    """An SSE response that stops its Run however it ends: finished, client gone (Starlette cancels the
    stream when the client disconnects), or never started."""

    def __init__(self, run: Run, events: AsyncIterator[str]):
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.run = run

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.stop()


async def sse(run: Run, fmt: Formatter, include_usage: bool) -> AsyncIterator[str]:
    """`data: {chunk}` events as pieces come, one with each choice's finish_reason, then `data: [DONE]`."""
    first = [True] * len(run.handles)
    while run.live:
        index, item = await run.next()
        if item is END:
            try:
                chunk = fmt.chunk(index, "", [] if _ids_output(run) else None, finish_reason(run.handles[index]),
                                  first[index])
            except APIError as exc:
                chunk = exc.body()
        else:
            chunk = fmt.chunk(index, *_output([item]), None, first[index])
        first[index] = False
        yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    if include_usage:
        yield f"data: {json.dumps(fmt.usage_chunk(_usage(run)))}\n\n"
    yield "data: [DONE]\n\n"


def _ids_output(run: Run) -> bool:
    return not run.handles[0].as_text


def _output(pieces: list[Any]) -> tuple[str, Any]:
    """(text, token ids or None): text pieces are joined; token-id pieces give "" and the ids."""
    if pieces and isinstance(pieces[0], int):
        return "", list(pieces)
    return "".join(pieces), None


def _usage(run: Run) -> dict:
    return usage(sum(h.prompt_tokens for h in run.handles), sum(h.completion_tokens for h in run.handles))


async def read_json(request) -> dict:
    """The body as a JSON object: APIError 413 above MAX_BODY_BYTES, 400 when it is not a JSON object."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise APIError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY_BYTES:
            raise APIError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise APIError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object")
    return body


def _key_checker(api_key):
    """A FastAPI dependency: 401 unless `Authorization: Bearer <api_key>` (compared in constant time)."""
    wanted = None if api_key is None else hashlib.sha256(api_key.encode()).digest()

    async def check(request: Request) -> None:
        if wanted is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(token.strip().encode()).digest()
        if not (hmac.compare_digest(given, wanted) and scheme.lower() == "bearer"):
            raise APIError(401, "a valid API key is required: send 'Authorization: Bearer <key>'", None,
                           "invalid_api_key")
    return check


class CountRequests:
    """ASGI middleware: counts every HTTP response by endpoint and status (unknown paths as "other")."""

    def __init__(self, app, service: Service):
        self.app, self.metrics = app, service.metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def send_counting(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            path = scope.get("path", "")
            self.metrics.count_request(path if path in ENDPOINTS else "other", status)
