"""A submitted request as its caller sees it: `RequestHandle` (iterate, await, result, cancel), and
`stream_together` to interleave several. The scheduler's loop thread fills them (scheduler.py)."""
from __future__ import annotations

import asyncio
import collections
import threading
from typing import TYPE_CHECKING, AsyncIterator, Callable, Iterator, Optional, Sequence, Union

if TYPE_CHECKING:
    from .scheduler import Scheduler

Piece = Union[str, int]


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
