"""Continuous batching on any Backend: requests join and leave a running batch between decode steps.

    with Scheduler(backend, tokenizer, max_batch=16) as sched:
        handle = sched.submit(prompt_ids, SamplingParams(temperature=0.7), seed=1, max_new_tokens=64)
        for piece in handle: print(piece, end="")     # text pieces (token ids without a tokenizer)
        handle.result(); handle.finish_reason         # "stop" | "length" | "cancelled" | "error"

`submit` may be called from any thread; one background loop thread (started on demand, ended when
there is nothing to do or by `close()`) owns the backend's StatePool and runs, per iteration:
  1. admit waiting requests into free slots (slot reset, per-request sampler row assigned: every field of
     the row is written, so a retired request's row needs no reset);
  2. prefill admitted prompts in chunks of `prefill_chunk` tokens (cut at the same places whatever
     else runs), at most `token_budget` prompt tokens per iteration in all, so running requests wait
     at most that much prefill between steps; chunks of equal length go in one batched
     `Backend.prefill_slots` call (on a backend that pads prompts, whole fresh prompts of different
     lengths too, left-padded), and the prompts that are now all in sample their first token;
  3. one `Backend.decode_sample_slots` for every request with a token to feed: decode and sampling on
     the device, each slot's token fed from the sampler's `last_token` (on the native backend one
     CUDA-graph replay);
  4. one asynchronous device -> host copy of this iteration's tokens (pinned buffer + event); then the
     tokens of the PREVIOUS iteration are delivered (stop ids, stop strings, max tokens, retirement)
     while the GPU runs this one. A request that stops has had one more step computed, which is
     dropped. (On the CPU there is nothing to overlap: tokens are delivered in their own iteration.)
A request's tokens depend only on its own prompt, parameters and seed, as far as the backend gives a
row the same logits in any batch (bit for bit on the CPU backends in our tests)
(docs/architecture.md "Runtime: slots and scheduler").
"""
from __future__ import annotations

import atexit
import collections
import threading
import weakref
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..errors import MambaDeployError, ParameterError, is_integer
from ..ops._tensors import to_device_async
from .backend import Backend
from .checks import check_count, check_length, check_output, check_prompt_ids, check_seed
from .generate import TextStream
from .requests import RequestHandle
from .sampler import SamplerState
from .sampling import SamplingParams

PAD_OVERHEAD = 1.25  # a left-padded prefill call holds at most this many times its prompts' tokens
_OPEN: "weakref.WeakSet[Scheduler]" = weakref.WeakSet()
_LOOP_THREADS: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    """Close every scheduler and wait for every loop thread before the interpreter finalizes: a daemon
    thread still running then is ended by a forced unwind that aborts the process in C++ frames ("terminate
    called without an active exception"). The threads are joined too because a loop thread that has just
    ended can hold the last reference to its scheduler: that scheduler then leaves _OPEN as its teardown
    starts on the thread, which frees tensors with the GIL released (seen in a core dump of `run`)."""
    for scheduler in list(_OPEN):
        scheduler.close()
    for thread in list(_LOOP_THREADS):
        if thread is not threading.current_thread():
            thread.join()


def sampling_vocab_limit(config, tokenizer) -> int:
    """Columns at or beyond this are never sampled (padding, or ids the tokenizer cannot decode)."""
    limit = config.vocab_size
    if tokenizer is not None:
        limit = min(limit, tokenizer.get_vocab_size(with_added_tokens=True))
    return limit


def random_seed() -> int:
    return int(torch.randint(0, 2**62, ()).item())


class _Request:
    """The loop's bookkeeping for one request (owned by the loop thread once admitted)."""

    def __init__(self, handle: RequestHandle, prompt: list[int], params: SamplingParams, seed: int,
                 max_new_tokens: int, stop_ids: set[int], text: Optional[TextStream]):
        self.handle, self.prompt, self.params, self.seed = handle, prompt, params, seed
        self.max_new_tokens, self.stop_ids, self.text = max_new_tokens, stop_ids, text
        self.slot: Optional[int] = None
        self.prefilled = 0  # prompt tokens already in the slot's state
        self.launched = 0  # tokens sampled on the device so far (delivered or on their way)
        self.retired = False


class _Launch:
    """One iteration's tokens on their way to the host: rows[i] gets tokens[i] once `event` has passed."""

    def __init__(self, rows: list[_Request], tokens: torch.Tensor, event: Optional[torch.cuda.Event]):
        self.rows, self.tokens, self.event = rows, tokens, event

    def wait(self) -> list[int]:
        if self.event is not None:
            self.event.synchronize()
        return self.tokens[:len(self.rows)].tolist()


class Scheduler:
    """Continuous batching over one backend; see the module docstring.

    max_batch: state slots (requests running at once; more wait in a queue). prefill_chunk: the most
    prompt tokens of one request per prefill call (at most token_budget). token_budget: the most prompt
    tokens prefilled per loop iteration (bounds how long running requests wait between decode steps).
    None: the backend's `prefill_budget` (512 and 512 on the CPU backends; larger on the GPU).
    The pool, the sampler and the pinned transfer buffers are allocated once, here."""

    def __init__(self, backend: Backend, tokenizer=None, max_batch: int = 16, prefill_chunk: Optional[int] = None,
                 token_budget: Optional[int] = None):
        default_chunk, default_budget = backend.prefill_budget
        prefill_chunk = default_chunk if prefill_chunk is None else prefill_chunk
        token_budget = default_budget if token_budget is None else token_budget
        for name, value in (("max_batch", max_batch), ("prefill_chunk", prefill_chunk),
                            ("token_budget", token_budget)):
            if not (is_integer(value) and value >= 1):
                raise ParameterError(name, f"must be an integer >= 1, got {value!r}")
        self.backend, self.tokenizer = backend, tokenizer
        self.max_batch, self.prefill_chunk, self.token_budget = int(max_batch), int(prefill_chunk), int(token_budget)
        self.vocab_limit = sampling_vocab_limit(backend.config, tokenizer)
        self.pool = backend.new_pool(self.max_batch)
        self.sampler = SamplerState(self.max_batch, backend.config.vocab_size_padded, backend.device)
        # Host <-> device transfers of the loop go through pinned buffers, asynchronously: a pageable copy
        # would wait for the steps queued before it. Two of each, used in turn by alternate iterations: the
        # copies from/to one are done by the time the iteration after next reuses it (each iteration waits
        # for the previous one's tokens).
        self._pipelined = self.sampler.device.type == "cuda"
        self._slot_ids_host = [torch.empty(self.max_batch, dtype=torch.int64, pin_memory=self._pipelined)
                               for _ in range(2)]
        self._tokens_host = [torch.empty(2 * self.max_batch, dtype=torch.int64, pin_memory=self._pipelined)
                             for _ in range(2)]
        self._parity = 0
        self._last_slots: tuple[list[int], Optional[torch.Tensor]] = ([], None)  # _device_slots' last (ids, tensor)
        self._in_flight: Optional[_Launch] = None  # the last iteration's tokens, not yet delivered
        self.iterations = 0  # loop iterations run so far (tests count per-iteration work with it)
        self._waiting: collections.deque[_Request] = collections.deque()
        self._running: list[_Request] = []
        self._unassigned: list[_Request] = []  # admitted, sampler rows not yet assigned (_assign_admitted)
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
        return self.submit_many([prompt_ids], params, seed, max_new_tokens, stop_ids, stop_strings, output)[0]

    def submit_many(self, prompts: Sequence[Sequence[int]], params: SamplingParams = SamplingParams(),
                    seed: Optional[int] = None, max_new_tokens: int = 64, stop_ids: Sequence[int] = (),
                    stop_strings: Sequence[str] = (), output: Optional[str] = None) -> list[RequestHandle]:
        """`submit` for several prompts with the same options, queued together (all checked first: a bad
        prompt queues none), so the loop admits them in one iteration and prefills them in as few batched
        calls as the token budget allows. seed None: one random seed for all."""
        checked = [check_prompt_ids(list(p), self.backend.config.vocab_size_padded,
                                    f" (prompt {i})" if len(prompts) > 1 else "") for i, p in enumerate(prompts)]
        return self.submit_checked(checked, params, seed, max_new_tokens, stop_ids, stop_strings, output)

    def submit_checked(self, prompts: list[list[int]], params: SamplingParams, seed: Optional[int],
                        max_new_tokens: int, stop_ids: Sequence[int], stop_strings: Sequence[str],
                        output: Optional[str]) -> list[RequestHandle]:
        """submit_many for prompts that check_prompt_ids has already returned, for a caller that checked them
        itself (Engine.generate checks its rows once: no second pass over the ids at the start of its call).
        The other options are checked here as in submit_many."""
        params.validate()
        check_count("max_new_tokens", max_new_tokens)
        check_seed(seed)
        if not all(is_integer(t) for t in stop_ids) or not all(isinstance(s, str) for s in stop_strings):
            raise ParameterError("stop", "must be strings or token ids")
        text = check_output(output, self.tokenizer, default=self.tokenizer is not None)
        if stop_strings and not text:
            raise ParameterError("stop", "strings need text output (a tokenizer); use token ids")
        seed = random_seed() if seed is None else int(seed)
        for prompt in prompts:
            check_length(len(prompt), max_new_tokens, self.backend.max_seq_len)
        handles, queued = [], []
        for prompt in prompts:
            handle = RequestHandle(self, len(prompt), text)
            handles.append(handle)
            if max_new_tokens == 0:
                handle._push(None, "length")
                continue
            queued.append(_Request(handle, prompt, params, seed, int(max_new_tokens), {int(t) for t in stop_ids},
                                   TextStream(self.tokenizer, stop_strings) if text else None))
        if queued:
            with self._queue_lock:
                if self._closed:
                    raise MambaDeployError("the scheduler is closed")
                self._waiting.extend(queued)
                if not self._looping:
                    self._start_loop()
        return handles

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
        _LOOP_THREADS.add(self._thread)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._queue_lock:
                if not self._waiting and not self._running:
                    self._looping = False  # a later submit starts a new thread
                    break
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001  (a bug here must not leave consumers waiting forever)
                for request in list(self._running):
                    self._retire(request, "error", exc)
        launch, self._in_flight = self._in_flight, None
        if launch is not None:  # rows all retired; its copies must be done before the buffers are reused
            self._wait_quietly(launch)

    def _step(self) -> None:
        self.iterations += 1
        self._parity ^= 1
        with self._queue_lock:
            cancelling, self._cancelling, closed = self._cancelling, set(), self._closed
        for request in list(self._running):
            if closed or request.handle in cancelling:
                self._retire(request, "cancelled")
        self._admit()
        rows, tokens = self._prefill()
        decoding = [r for r in self._running if 0 < r.launched < r.max_new_tokens]
        if decoding:
            try:
                slots = self._device_slots([r.slot for r in decoding])
                all_greedy = all(r.params.greedy for r in decoding)
                tokens.append(self.backend.decode_sample_slots(self.pool, slots, self.sampler, self.vocab_limit,
                                                               all_greedy))
                rows += decoding
                for request in decoding:
                    request.launched += 1
            except Exception as exc:  # noqa: BLE001  (handed to the requests' consumers)
                for request in decoding:
                    self._retire(request, "error", exc)
        launch = self._send_home(rows, tokens) if rows else None
        previous, self._in_flight = self._in_flight, launch
        if previous is not None:
            self._deliver_launch(previous)
        if launch is not None and not self._pipelined:
            self._in_flight = None
            self._deliver_launch(launch)

    def _send_home(self, rows: list[_Request], tokens: list[torch.Tensor]) -> _Launch:
        """Start the one device -> host copy of this iteration's tokens."""
        joined = torch.cat(tokens) if len(tokens) > 1 else tokens[0]
        if not self._pipelined:
            return _Launch(rows, joined, None)
        host = self._tokens_host[self._parity][:joined.shape[0]]
        host.copy_(joined, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return _Launch(rows, host, event)

    def _deliver_launch(self, launch: _Launch) -> None:
        try:
            tokens = launch.wait()
        except Exception as exc:  # noqa: BLE001  (a failed step: its requests end with the error)
            for request in launch.rows:
                if not request.retired:
                    self._retire(request, "error", exc)
            return
        for request, token in zip(launch.rows, tokens):
            if not request.retired:  # retired while this was in flight: the extra token is dropped
                self._deliver(request, token)

    @staticmethod
    def _wait_quietly(launch: _Launch) -> None:
        try:
            launch.wait()
        except Exception:  # noqa: BLE001  (its requests have ended; the error was theirs)
            pass

    def _device_slots(self, slots: list[int]) -> torch.Tensor:
        """(n,) int64 slot ids on the sampler's device, copied asynchronously (see __init__); the last iteration's
        tensor again when the running set has not changed (no copy between two decode steps)."""
        if slots == self._last_slots[0]:
            return self._last_slots[1]
        if not self._pipelined:
            device = torch.tensor(slots, dtype=torch.int64)
        else:
            host = self._slot_ids_host[self._parity][:len(slots)]
            host.copy_(torch.tensor(slots, dtype=torch.int64))
            device = host.to(self.sampler.device, non_blocking=True)
        self._last_slots = (list(slots), device)
        return device

    def _to_device(self, values: list) -> torch.Tensor:
        """A small int64 tensor on the sampler's device without waiting for the queued steps (pinned memory
        from torch's caching host allocator, which keeps it until the copy is done)."""
        return to_device_async(torch.tensor(values, dtype=torch.int64), self.sampler.device)

    def _admit(self) -> None:
        """Waiting requests into free slots, their slots reset all at once; their sampler rows are assigned
        after their first prefill call is launched (_assign_admitted)."""
        admitted = []
        while self.pool.free_count:
            with self._queue_lock:
                if not self._waiting:
                    break
                request = self._waiting.popleft()
            request.slot = self.pool.acquire()
            self._running.append(request)  # from here a failure retires it, which frees the slot
            admitted.append(request)
        if admitted:
            self.pool.reset_many([r.slot for r in admitted])
            self._unassigned += admitted

    def _assign_admitted(self) -> None:
        """The sampler rows of the requests _admit let in (those not retired since), all at once: called once
        their first prefill call is launched, so that this host work (1.6 ms for 64 rows on the H200's host)
        overlaps the call's GPU time, and before anything samples them."""
        admitted = [r for r in self._unassigned if not r.retired]
        self._unassigned = []
        if admitted:
            self.sampler.assign_many([r.slot for r in admitted], [r.params for r in admitted],
                                     [r.seed for r in admitted], [r.prompt for r in admitted])

    def _prefill(self) -> tuple[list[_Request], list[torch.Tensor]]:
        """Prompt chunks within the token budget, chunks of equal length batched into one prefill_slots call;
        -> the requests whose prompt is now all in, and their first sampled tokens (device tensors).

        A prompt is cut at multiples of `chunk` from its start whatever else is running (a chunk that
        does not fit in what is left of the budget waits for the next iteration), so its state, and
        so its tokens, are the same as when it runs alone."""
        chunk = min(self.prefill_chunk, self.token_budget)
        budget, groups = self.token_budget, collections.defaultdict(list)
        for request in self._running:
            n = min(len(request.prompt) - request.prefilled, chunk)
            if 0 < n <= budget:
                groups[n].append(request)
                budget -= n
        calls = self._padded_calls(groups) if self.backend.pads_prompts else \
            [(n, group, None) for n, group in groups.items()]
        done, tokens = [], []
        for n, group, lengths in calls:
            finished, logits = self._prefill_group(n, group, lengths)
            self._assign_admitted()
            if not finished:
                continue
            rows, requests = [i for i, _ in finished], [r for _, r in finished]
            try:
                last = logits[:, -1] if len(rows) == len(group) else logits[self._to_device(rows), -1]
                tokens.append(self.sampler.sample(last, self._to_device([r.slot for r in requests]),
                                                  self.vocab_limit, all(r.params.greedy for r in requests)))
            except Exception as exc:  # noqa: BLE001
                for request in requests:
                    self._retire(request, "error", exc)
                continue
            for request in requests:
                request.launched = 1
            done += requests
        self._assign_admitted()  # when no call was made
        return done, tokens

    @staticmethod
    def _padded_calls(groups: dict[int, list[_Request]]) -> list[tuple[int, list[_Request], Optional[list[int]]]]:
        """(n, group, lengths) prefill calls for a backend that pads prompts: the whole prompts of fresh
        requests (none of it prefilled, all of it in this iteration), longest first, merged into left-padded
        calls while a call's padding stays within PAD_OVERHEAD of its tokens (with lengths even when all are
        equal: the backend then knows the slots are fresh, e.g. for a padded prefill graph); other chunks by
        length, as without padding (lengths None)."""
        calls, whole = [], []
        for n, group in groups.items():
            fresh = [r for r in group if r.prefilled == 0 and len(r.prompt) == n]
            rest = [r for r in group if r not in fresh]
            whole += fresh
            if rest:
                calls.append((n, rest, None))
        whole.sort(key=lambda r: -len(r.prompt))
        merged: list[list[_Request]] = []
        for request in whole:
            batch = merged[-1] if merged else None
            if batch and (len(batch) + 1) * len(batch[0].prompt) <= \
                    PAD_OVERHEAD * (sum(len(r.prompt) for r in batch) + len(request.prompt)):
                batch.append(request)
            else:
                merged.append([request])
        for batch in merged:
            lengths = [len(r.prompt) for r in batch]
            calls.append((lengths[0], batch, lengths))
        return calls

    def _prefill_group(self, n: int, group: list[_Request],
                       lengths: Optional[list[int]] = None) -> tuple[list[tuple[int, _Request]], Any]:
        """The next n prompt tokens of each request of `group` in one call (with `lengths`: request r's next
        lengths[r], right-aligned: _padded_calls); -> ((row, request) of those whose prompt is now all in,
        the logits (len(group), 1|n, V))."""
        counts = lengths or [n] * len(group)
        ids = torch.from_numpy(np.array([[0] * (n - k) + r.prompt[r.prefilled:r.prefilled + k]  # numpy: 6x faster
                                         for r, k in zip(group, counts)], dtype=np.int64))
        if self._pipelined:
            ids = ids.pin_memory()
        try:
            slots = [r.slot for r in group]
            logits = self.backend.prefill_slots(ids, self.pool, slots) if lengths is None else \
                self.backend.prefill_slots(ids, self.pool, slots, lengths=lengths)
        except Exception as exc:  # noqa: BLE001
            for request in group:
                self._retire(request, "error", exc)
            return [], None
        for request, k in zip(group, counts):
            request.prefilled += k
        return [(i, r) for i, r in enumerate(group) if r.prefilled == len(r.prompt)], logits

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

    def _retire(self, request: _Request, reason: str, error: Optional[BaseException] = None) -> None:
        """Free the request's slot and end its stream (the text's held-back tail first). Its sampler row keeps
        its values until the slot's next request is assigned it (SamplerState.assign_many writes every field). The
        reset it had before ran on the loop thread after a call's last tokens; the next call's submit waited 0.75 ms
        joining that thread (64 rows, H200 host), presumably for it."""
        request.retired = True
        self._running.remove(request)
        self.pool.release(request.slot)
        tail = request.text.flush() if request.text is not None and reason in ("stop", "length") else None
        request.handle._push(tail, reason, error)
