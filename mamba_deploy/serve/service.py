"""One engine and one Scheduler behind the HTTP API: admission (429), submission, and the pieces of a request
as they come, with disconnects cancelling their requests (docs/architecture.md "Serving").

Everything here runs on the server's event loop thread except the Scheduler's own loop thread and the
blocking `RequestHandle.cancel` calls, which go to worker threads so that the event loop never waits."""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time
from typing import Any, Awaitable, Callable, Optional

from ..errors import MambaDeployError, ParameterError, is_integer, is_real
from ..runtime.requests import RequestHandle
from ..runtime.scheduler import Scheduler
from .chat import ChatTemplate
from .metrics import Metrics
from .protocol import APIError, GenerationRequest, Limits, as_api_error

DISCONNECT_POLL_S = 0.25  # how often a non-streaming request checks that its client is still there
END = object()  # a handle's stream has ended


@dataclasses.dataclass
class ServeOptions:
    """What `mamba-deploy serve` takes (docs/architecture.md "Serving"); validate() names a bad field."""

    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "auto"
    max_batch: int = 16  # state slots: requests decoded together
    max_queue: int = 256  # requests waiting for a slot before 429
    max_prompt_tokens: int = 4096
    max_tokens_limit: int = 4096  # the largest max_tokens a request may ask for
    api_key: Optional[str] = None
    model_name: Optional[str] = None
    random_init: Optional[str] = None  # a preset name: random weights on the native backend (benchmarks)
    drain_timeout: float = 10.0  # seconds in-flight requests may run on after SIGINT/SIGTERM
    access_log: bool = False

    def validate(self) -> "ServeOptions":
        for name in ("max_batch", "max_prompt_tokens", "max_tokens_limit"):
            if not (is_integer(getattr(self, name)) and getattr(self, name) >= 1):
                raise ParameterError(name, f"must be an integer >= 1, got {getattr(self, name)!r}")
        if not (is_integer(self.max_queue) and self.max_queue >= 0):
            raise ParameterError("max_queue", f"must be an integer >= 0, got {self.max_queue!r}")
        if not (is_integer(self.port) and 0 <= self.port <= 65535):
            raise ParameterError("port", f"must be an integer in [0, 65535], got {self.port!r}")
        if not (is_real(self.drain_timeout) and 0 <= self.drain_timeout < float("inf")):
            raise ParameterError("drain_timeout", f"must be a number of seconds >= 0, got {self.drain_timeout!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ParameterError("api_key", "must not be empty")
        return self


class Service:
    """The engine's Scheduler, the limits and the metrics of one server."""

    def __init__(self, engine, options: ServeOptions, model_name: str, chat: Optional[ChatTemplate]):
        self.engine, self.options, self.model_name, self.chat = engine, options, model_name, chat
        slots = min(options.max_batch, engine.backend.max_slots or options.max_batch)
        self.scheduler = Scheduler(engine.backend, engine.tokenizer, max_batch=slots)
        self.limits = Limits(engine.tokenizer, engine.config.vocab_size, options.max_prompt_tokens,
                             options.max_tokens_limit)
        self.eos_ids = [] if engine.eos_id() is None else [engine.eos_id()]
        self.metrics = Metrics()
        self.capacity = slots + options.max_queue  # requests in the scheduler at once, running or waiting
        self.closing = False

    @property
    def slots(self) -> int:
        return self.scheduler.max_batch

    def render_metrics(self) -> str:
        return self.metrics.render(self.scheduler.waiting_count, self.scheduler.running_count, self.slots)

    def check_model(self, model: Optional[str]) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"the model {model!r} does not exist; this server serves {self.model_name!r}",
                           "model", "model_not_found")

    def submit(self, request: GenerationRequest) -> list[RequestHandle]:
        """One scheduler request per prompt, or APIError 429 when the queue has no room for them all."""
        self.check_model(request.model)
        if self.closing:
            raise APIError(503, "the server is shutting down")
        if len(request.prompts) > self.capacity:
            raise APIError(400, f"prompt has {len(request.prompts)} prompts, more than this server holds at once "
                                f"({self.capacity})", "prompt")
        if self.scheduler.active_count + len(request.prompts) > self.capacity:
            raise APIError(429, f"the server is busy: {self.scheduler.waiting_count} requests are waiting "
                                f"(--max-queue {self.options.max_queue}); retry later", None, "queue_full")
        output = "text" if self.engine.tokenizer is not None else "ids"
        handles: list[RequestHandle] = []
        try:
            for ids in request.prompts:
                handles.append(self.scheduler.submit(ids, request.params, request.seed, request.max_tokens,
                                                     [] if request.ignore_eos else self.eos_ids, request.stop,
                                                     output))
        except MambaDeployError as exc:
            cancel_soon(handles)
            raise as_api_error(exc) from None
        self.metrics.prompt_tokens += sum(h.prompt_tokens for h in handles)
        return handles

    def close(self) -> None:
        self.closing = True
        self.scheduler.close()

    def cancel_all(self) -> None:
        """Cancel every request in flight and refuse new ones, without blocking the caller (the drain's end)."""
        self.closing = True
        threading.Thread(target=self.scheduler.close, name="mamba-deploy-serve-drain", daemon=True).start()


class Run:
    """The pieces of one HTTP request's handles, as (choice index, piece) and (choice index, END) when one ends.

    One task per handle pumps its `async for` into a shared deque; TTFT (from `started`) and the gaps between
    pieces go to the metrics. stop() ends the pumps, cancels the handles still running (in worker threads)
    and counts the generated tokens."""

    def __init__(self, service: Service, handles: list[RequestHandle], started: float):
        self.service, self.handles, self.started = service, handles, started
        self.events: collections.deque = collections.deque()
        self.ready = asyncio.Event()
        self.live = len(handles)
        self.stopped = False
        self.tasks = [asyncio.ensure_future(self._pump(index, handle)) for index, handle in enumerate(handles)]

    async def _pump(self, index: int, handle: RequestHandle) -> None:
        metrics, last = self.service.metrics, None
        try:
            async for piece in handle:
                now = time.perf_counter()
                metrics.ttft.observe(now - self.started) if last is None else metrics.itl.observe(now - last)
                last = now
                self.events.append((index, piece))
                self.ready.set()
        except Exception:  # noqa: BLE001  (the handle's error: finish_reason "error", reported by the caller)
            pass
        self.events.append((index, END))
        self.ready.set()

    async def next(self, timeout: Optional[float] = None) -> Optional[tuple[int, Any]]:
        """The next event, or None after `timeout` seconds without one (None: wait as long as it takes)."""
        while not self.events:
            self.ready.clear()
            try:
                await asyncio.wait_for(self.ready.wait(), timeout)
            except asyncio.TimeoutError:
                return None
        index, item = self.events.popleft()
        if item is END:
            self.live -= 1
        return index, item

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        for task in self.tasks:
            task.cancel()
        cancel_soon(self.handles)
        self.service.metrics.generation_tokens += sum(h.completion_tokens for h in self.handles)


async def collect(run: Run, is_disconnected: Callable[[], Awaitable[bool]]) -> list[list[Any]]:
    """Every piece of every handle of `run` (per choice); APIError 499 once the client has gone."""
    pieces: list[list[Any]] = [[] for _ in run.handles]
    checked = time.monotonic()
    while run.live:
        event = await run.next(DISCONNECT_POLL_S)
        if time.monotonic() - checked >= DISCONNECT_POLL_S:
            if await is_disconnected():
                raise APIError(499, "the client disconnected")
            checked = time.monotonic()
        if event is not None and event[1] is not END:
            pieces[event[0]].append(event[1])
    return pieces


def finish_reason(handle: RequestHandle) -> str:
    """OpenAI's finish_reason; APIError for a request that failed or was cancelled by the server."""
    if handle.finish_reason == "error":
        try:
            handle.result(timeout=0)
        except Exception as exc:  # noqa: BLE001
            raise APIError(500, f"generation failed: {exc}") from None
    if handle.finish_reason == "cancelled":
        raise APIError(503, "the request was cancelled: the server is shutting down")
    return str(handle.finish_reason)


def cancel_soon(handles: list[RequestHandle]) -> None:
    """Cancel the handles still running, in a worker thread (cancel() waits for the scheduler's iteration)."""
    running = [h for h in handles if not h.done]
    if running:
        threading.Thread(target=lambda: [h.cancel() for h in running], name="mamba-deploy-serve-cancel",
                         daemon=True).start()
