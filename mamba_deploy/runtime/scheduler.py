"""Continuous batching on any Backend: requests join and leave a running batch between decode steps.

    with Scheduler(backend, tokenizer, max_batch=16) as sched:
        handle = sched.submit(prompt_ids, SamplingParams(temperature=0.7), seed=1, max_new_tokens=64)
        for piece in handle: print(piece, end="")     # text pieces (token ids without a tokenizer)
        handle.result(); handle.finish_reason         # "stop" | "length" | "cancelled" | "error"

`submit` may be called from any thread; one background loop thread (started on demand, ended when
there is nothing to do or by `close()`) owns the backend's StatePool and runs, per iteration:
  1. admit waiting requests into free slots (slot reset, per-request sampler row assigned);
  2. prefill admitted prompts in chunks of `prefill_chunk` tokens (cut at the same places whatever
     else runs), at most `token_budget` prompt tokens per iteration in all, so running requests wait
     at most that much prefill between steps;
  3. one `Backend.decode_slots` for every request that has a token to feed;
  4. one `SamplerState.sample` for those rows and the prompts that finished prefilling, one
     device -> host copy of the tokens, delivery (stop ids, stop strings, max tokens), retirement.
A request's tokens depend only on its own prompt, parameters and seed, as far as the backend's decode
gives a row the same logits in any batch (bit for bit on the CPU backends in our tests)
(docs/architecture.md "Runtime: slots and scheduler").
"""
from __future__ import annotations

import asyncio
import atexit
import collections
import threading
import weakref
from typing import Any, AsyncIterator, Callable, Iterator, Optional, Sequence, Union

import torch

from ..errors import MambaDeployError, ParameterError, is_integer
from .backend import Backend
from .checks import check_count, check_output, check_prompt_ids, check_seed
from .generate import TextStream
from .sampler import SamplerState
from .sampling import SamplingParams

Piece = Union[str, int]
_OPEN: "weakref.WeakSet[Scheduler]" = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    """Close every scheduler before the interpreter finalizes: a daemon loop thread still running then
    is ended by a forced unwind that aborts the process in C++ frames ("terminate called without an
    active exception", seen with ONNX Runtime)."""
    for scheduler in list(_OPEN):
        scheduler.close()


def sampling_vocab_limit(config, tokenizer) -> int:
    """Columns at or beyond this are never sampled (padding, or ids the tokenizer cannot decode)."""
    limit = config.vocab_size
    if tokenizer is not None:
        limit = min(limit, tokenizer.get_vocab_size(with_added_tokens=True))
    return limit


def random_seed() -> int:
    return int(torch.randint(0, 2**62, ()).item())


class RequestHandle:
    """One submitted request: iterate it (blocking or `async for`) for its pieces, or wait for result().

    Pieces are text (str) when `as_text`, token ids (int) otherwise. A handle is iterated once
    (each piece is handed out once, across __iter__ and __aiter__); result() always gives the whole
    output. Counts: `prompt_tokens`, `completion_tokens` (tokens sampled, a stop token included)."""

    def __init__(self, scheduler: "Scheduler", prompt_tokens: int, as_text: bool):
        self._scheduler, self.prompt_tokens, self.as_text = scheduler, prompt_tokens, as_text
        self.completion_tokens = 0
        self.finish_reason: Optional[str] = None
        self._cond = threading.Condition()
        self._pending: collections.deque = collections.deque()
        self._output: list = []
        self._error: Optional[BaseException] = None
        self._wakers: list[Callable[[], None]] = []

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Stop the request; when this returns its slot is free and its stream has ended (no-op if done)."""
        self._scheduler._cancel(self)

    def result(self, timeout: Optional[float] = None) -> Union[str, list[int]]:
        """The whole output (joined text, or the list of token ids) once the request has finished."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.finish_reason is not None, timeout):
                raise TimeoutError("request still running")
        if self._error is not None:
            raise self._error
        return "".join(self._output) if self.as_text else list(self._output)

    def __iter__(self) -> Iterator[Piece]:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self.finish_reason is not None)
                if not self._pending:
                    break
                piece = self._pending.popleft()
            yield piece
        if self._error is not None:
            raise self._error

    def __aiter__(self) -> AsyncIterator[Piece]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[Piece]:
        loop, ready = asyncio.get_running_loop(), asyncio.Event()
        waker = self._add_waker(lambda: loop.call_soon_threadsafe(ready.set))
        try:
            while True:
                piece, ended = self._take()
                if ended:
                    break
                if piece is None:
                    await ready.wait()
                    ready.clear()
                    continue
                yield piece
        finally:
            self._remove_waker(waker)
        if self._error is not None:
            raise self._error

    # -- used by the scheduler loop and by stream_together --

    def _take(self) -> tuple[Optional[Piece], bool]:
        """(next piece or None, whether the stream has ended) without blocking."""
        with self._cond:
            if self._pending:
                return self._pending.popleft(), False
            return None, self.finish_reason is not None

    def _add_waker(self, waker: Callable[[], None]) -> Callable[[], None]:
        with self._cond:
            self._wakers.append(waker)
        return waker

    def _remove_waker(self, waker: Callable[[], None]) -> None:
        with self._cond:
            self._wakers.remove(waker)

    def _push(self, piece: Optional[Piece], finish: Optional[str] = None, error: Optional[BaseException] = None):
        with self._cond:
            if self.finish_reason is not None:
                return
            if piece is not None and piece != "":
                self._pending.append(piece)
                self._output.append(piece)
            if finish is not None:
                self._error, self.finish_reason = error, finish
            self._cond.notify_all()
            wakers = list(self._wakers)
        for wake in wakers:
            try:
                wake()
            except RuntimeError:  # the consumer's event loop is closed: nobody is listening
                pass


def stream_together(handles: Sequence[RequestHandle]) -> Iterator[tuple[int, Piece]]:
    """(index, piece) from several handles as the pieces arrive; ends when all have ended."""
    ready = threading.Event()
    wakers = [h._add_waker(ready.set) for h in handles]
    try:
        live = list(range(len(handles)))
        while live:
            ready.clear()
            moved = False
            for index in list(live):
                piece, ended = handles[index]._take()
                while piece is not None:
                    moved = True
                    yield index, piece
                    piece, ended = handles[index]._take()
                if ended:
                    live.remove(index)
            if live and not moved:
                ready.wait()
        for h in handles:
            if h._error is not None:
                raise h._error
    finally:
        for h, waker in zip(handles, wakers):
            h._remove_waker(waker)


class _Request:
    """The loop's bookkeeping for one request (owned by the loop thread once admitted)."""

    def __init__(self, handle: RequestHandle, prompt: list[int], params: SamplingParams, seed: int,
                 max_new_tokens: int, stop_ids: set[int], text: Optional[TextStream]):
        self.handle, self.prompt, self.params, self.seed = handle, prompt, params, seed
        self.max_new_tokens, self.stop_ids, self.text = max_new_tokens, stop_ids, text
        self.slot: Optional[int] = None
        self.prefilled = 0  # prompt tokens already in the slot's state
        self.next_token: Optional[int] = None  # the last sampled token, fed by the next decode


class Scheduler:
    """Continuous batching over one backend; see the module docstring.

    max_batch: state slots (requests running at once; more wait in a queue). prefill_chunk: the most
    prompt tokens of one request per prefill call (at most token_budget). token_budget: the most prompt
    tokens prefilled per loop iteration (bounds how long running requests wait between decode steps).
    The pool and sampler are allocated once, here."""

    def __init__(self, backend: Backend, tokenizer=None, max_batch: int = 16, prefill_chunk: int = 512,
                 token_budget: int = 512):
        for name, value in (("max_batch", max_batch), ("prefill_chunk", prefill_chunk),
                            ("token_budget", token_budget)):
            if not (is_integer(value) and value >= 1):
                raise ParameterError(name, f"must be an integer >= 1, got {value!r}")
        self.backend, self.tokenizer = backend, tokenizer
        self.max_batch, self.prefill_chunk, self.token_budget = int(max_batch), int(prefill_chunk), int(token_budget)
        self.vocab_limit = sampling_vocab_limit(backend.config, tokenizer)
        self.pool = backend.new_pool(self.max_batch)
        self.sampler = SamplerState(self.max_batch, backend.config.vocab_size_padded, backend.device)
        # Slot ids go to the device from pinned memory without a sync (a plain torch.tensor(..., device=cuda)
        # would wait for the decode step queued before it); one copy is in flight at a time, since each
        # iteration ends by reading the tokens back.
        self._slot_ids_host = torch.empty(self.max_batch, dtype=torch.int64,
                                          pin_memory=self.sampler.device.type == "cuda")
        self.iterations = 0  # loop iterations run so far (tests count per-iteration work with it)
        self._waiting: collections.deque[_Request] = collections.deque()
        self._running: list[_Request] = []
        self._cancelling: set[RequestHandle] = set()  # running requests to retire at the next iteration
        self._queue_lock = threading.Lock()  # _waiting, _cancelling, _closed, _thread, _looping
        self._closed, self._looping = False, False  # _running, the pool and the sampler: the loop thread's
        self._thread: Optional[threading.Thread] = None
        _OPEN.add(self)

    def __enter__(self) -> "Scheduler":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def active_count(self) -> int:
        """Requests submitted and not finished (waiting or running)."""
        return len(self._waiting) + len(self._running)

    @property
    def waiting_count(self) -> int:
        """Requests submitted and not yet admitted into a slot (the queue)."""
        return len(self._waiting)

    @property
    def running_count(self) -> int:
        """Requests holding a slot (the running batch)."""
        return len(self._running)

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams = SamplingParams(), seed: Optional[int] = None,
               max_new_tokens: int = 64, stop_ids: Sequence[int] = (), stop_strings: Sequence[str] = (),
               output: Optional[str] = None) -> RequestHandle:
        """Queue one request (thread-safe); returns at once. output: "text" (default with a tokenizer)
        or "ids". seed None: a random one. stop_ids end the request without being emitted (pass the
        EOS id here); stop_strings (text output only) end it before the stop string."""
        prompt = check_prompt_ids(list(prompt_ids), self.backend.config.vocab_size_padded)
        params.validate()
        check_count("max_new_tokens", max_new_tokens)
        check_seed(seed)
        if not all(is_integer(t) for t in stop_ids) or not all(isinstance(s, str) for s in stop_strings):
            raise ParameterError("stop", "must be strings or token ids")
        text = check_output(output, self.tokenizer, default=self.tokenizer is not None)
        if stop_strings and not text:
            raise ParameterError("stop", "strings need text output (a tokenizer); use token ids")
        handle = RequestHandle(self, len(prompt), text)
        request = _Request(handle, prompt, params, random_seed() if seed is None else int(seed), int(max_new_tokens),
                           {int(t) for t in stop_ids}, TextStream(self.tokenizer, stop_strings) if text else None)
        if max_new_tokens == 0:
            handle._push(None, "length")
            return handle
        with self._queue_lock:
            if self._closed:
                raise MambaDeployError("the scheduler is closed")
            self._waiting.append(request)
            if not self._looping:
                self._start_loop()
        return handle

    def close(self) -> None:
        """Cancel every request in flight, refuse new ones, and end the loop thread (waits for it)."""
        with self._queue_lock:
            self._closed = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            thread = self._thread
        for request in waiting:
            request.handle._push(None, "cancelled")
        if thread is not None and thread is not threading.current_thread():
            thread.join()  # the loop cancels its running requests at the start of its next iteration

    def _cancel(self, handle: RequestHandle) -> None:
        """A waiting request ends here; a running one is retired by the loop at the start of its next
        iteration, which this waits for. (The request is found by its handle: a handle -> request link
        would make a reference cycle.)"""
        if handle.done:
            return
        with self._queue_lock:
            waiting = next((r for r in self._waiting if r.handle is handle), None)
            if waiting is not None:
                self._waiting.remove(waiting)
                handle._push(None, "cancelled")
                return
            self._cancelling.add(handle)
        with handle._cond:
            handle._cond.wait_for(lambda: handle.finish_reason is not None)

    # -- the loop thread --

    def _start_loop(self) -> None:
        """Under _queue_lock: start a loop thread (the previous one, if any, has already decided to end)."""
        if self._thread is not None:
            self._thread.join()
        self._looping = True
        self._thread = threading.Thread(target=self._loop, name="mamba-deploy-scheduler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._queue_lock:
                if not self._waiting and not self._running:
                    self._looping = False  # a later submit starts a new thread
                    return
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001  (a bug here must not leave consumers waiting forever)
                for request in list(self._running):
                    self._retire(request, "error", exc)

    def _step(self) -> None:
        self.iterations += 1
        with self._queue_lock:
            cancelling, self._cancelling, closed = self._cancelling, set(), self._closed
        for request in list(self._running):
            if closed or request.handle in cancelling:
                self._retire(request, "cancelled")
        self._admit()
        rows, logits = self._prefill()
        decoding = [r for r in self._running if r.next_token is not None]
        if decoding:
            try:
                ids = torch.tensor([[r.next_token] for r in decoding], dtype=torch.int64)
                slots = torch.tensor([r.slot for r in decoding], dtype=torch.int64)  # host: no sync to check them
                logits.append(self.backend.decode_slots(ids, self.pool, slots)[:, -1].float())
                rows += decoding
            except Exception as exc:  # noqa: BLE001  (handed to the requests' consumers)
                for request in decoding:
                    self._retire(request, "error", exc)
        if not rows:
            return
        try:
            tokens = self.sampler.sample(torch.cat(logits), self._device_slots([r.slot for r in rows]),
                                         self.vocab_limit).tolist()  # the one copy to host
        except Exception as exc:  # noqa: BLE001
            for request in rows:
                self._retire(request, "error", exc)
            return
        for request, token in zip(rows, tokens):
            self._deliver(request, token)

    def _device_slots(self, slots: list[int]) -> torch.Tensor:
        """(n,) int64 slot ids on the sampler's device, copied asynchronously (see __init__)."""
        if self.sampler.device.type != "cuda":
            return torch.tensor(slots, dtype=torch.int64)
        host = self._slot_ids_host[:len(slots)]
        host.copy_(torch.tensor(slots, dtype=torch.int64))
        return host.to(self.sampler.device, non_blocking=True)

    def _admit(self) -> None:
        while self.pool.free_count:
            with self._queue_lock:
                if not self._waiting:
                    return
                request = self._waiting.popleft()
            request.slot = self.pool.acquire()
            self.pool.reset(request.slot)
            self.sampler.assign(request.slot, request.params, request.seed, request.prompt)
            self._running.append(request)

    def _prefill(self) -> tuple[list[_Request], list[torch.Tensor]]:
        """Prompt chunks within the token budget; -> the requests whose prompt is now all in, and
        their last logits (1, V) float32 (copies: the backend may reuse its logits buffer).

        A prompt is cut at multiples of `chunk` from its start whatever else is running (a chunk that
        does not fit in what is left of the budget waits for the next iteration), so its state, and
        so its tokens, are the same as when it runs alone."""
        chunk = min(self.prefill_chunk, self.token_budget)
        budget, done, logits = self.token_budget, [], []
        for request in list(self._running):
            n = min(len(request.prompt) - request.prefilled, chunk)
            if n == 0 or n > budget:
                continue
            ids = torch.tensor([request.prompt[request.prefilled:request.prefilled + n]], dtype=torch.int64)
            try:
                out = self.backend.prefill_slot(ids, self.pool, request.slot)
            except Exception as exc:  # noqa: BLE001
                self._retire(request, "error", exc)
                continue
            request.prefilled += n
            budget -= n
            if request.prefilled == len(request.prompt):
                done.append(request)
                logits.append(out[:, -1].to(torch.float32, copy=True))
        return done, logits

    def _deliver(self, request: _Request, token: int) -> None:
        handle = request.handle
        handle.completion_tokens += 1
        if token in request.stop_ids:
            return self._retire(request, "stop")
        if request.text is None:
            handle._push(token)
        else:
            handle._push(request.text.push(token))
            if request.text.stopped:
                return self._retire(request, "stop")
        if handle.completion_tokens >= request.max_new_tokens:
            return self._retire(request, "length")
        request.next_token = token

    def _retire(self, request: _Request, reason: str, error: Optional[BaseException] = None) -> None:
        """Free the request's slot and sampler row and end its stream (the text's held-back tail first)."""
        self._running.remove(request)
        self.sampler.release(request.slot)
        self.pool.release(request.slot)
        tail = request.text.flush() if request.text is not None and reason in ("stop", "length") else None
        request.handle._push(tail, reason, error)
