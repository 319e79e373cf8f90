"""Scheduler: continuous batching on the onnxruntime and torch backends (tiny Mamba2 export, byte tokenizer)."""
import asyncio
import gc
import os
import random
import subprocess
import sys
import threading
import tracemalloc
import types
from pathlib import Path

import pytest
import torch

from mamba_deploy.errors import MambaDeployError, ParameterError
from mamba_deploy.runtime import Engine, SamplingParams
from mamba_deploy.runtime.backend import Backend, prefill_rows_alone
from mamba_deploy.runtime.scheduler import Scheduler

GREEDY = dict(params=SamplingParams(temperature=0))
SEEDED = dict(params=SamplingParams(temperature=0.9, top_k=30, top_p=0.95), seed=11)


@pytest.fixture(scope="module", params=["onnxruntime", "torch"])
def engine(request, export_dir):
    return Engine.load(export_dir, backend=request.param, **({"threads": 1} if request.param == "onnxruntime" else {}))


def _solo(engine, prompt, prefill_chunk=512, **kwargs):
    with Scheduler(engine.backend, engine.tokenizer, max_batch=1, prefill_chunk=prefill_chunk) as alone:
        return alone.submit(prompt, **kwargs).result()


def _loop_threads():
    return [t for t in threading.enumerate() if t.name == "mamba-deploy-scheduler"]


class Recording(Backend):
    """Delegates to `inner`; records (loop iteration, prompt tokens) per prefill_slot; may fail decodes."""

    def __init__(self, inner: Backend, max_slots=None, pads=False):
        super().__init__(inner.info)
        self.inner, self.scheduler, self.prefills, self.decodes, self.fail_decodes = inner, None, [], [], 0
        self.prefill_shapes, self.gate, self.in_decode = [], threading.Event(), threading.Event()
        self.gate.set()
        self._max_slots, self.pads, self.padded = max_slots, pads, []

    @property
    def max_slots(self):
        return self._max_slots

    @property
    def pads_prompts(self):
        return self.pads

    def prefill_padded(self, input_ids, state, lengths):
        """Records (shape, lengths); each row's right-aligned prompt prefilled alone on its row of `state`."""
        self.padded.append((tuple(input_ids.shape), list(lengths)))
        return prefill_rows_alone(self.inner.prefill, input_ids, state, lengths, self.inner.all_logits)

    @property
    def device(self):
        return self.inner.device

    def prefill(self, input_ids, state):
        self.prefills.append((self.scheduler and self.scheduler.iterations, input_ids.numel()))
        self.prefill_shapes.append(tuple(input_ids.shape))
        return self.inner.prefill(input_ids, state)

    def decode(self, input_ids, state):
        self.in_decode.set()
        self.gate.wait(60)
        self.decodes.append(self.scheduler and self.scheduler.iterations)
        if self.fail_decodes:
            self.fail_decodes -= 1
            raise RuntimeError("decode failed")
        return self.inner.decode(input_ids, state)


class PausingAt(Recording):
    """A Recording whose loop waits in its decode number `n` (0-based) until the test sets `gate`."""

    def __init__(self, inner: Backend, n: int):
        super().__init__(inner)
        self.n, self.reached = n, threading.Event()

    def decode(self, input_ids, state):
        if len(self.decodes) == self.n:
            self.gate.clear()
            self.reached.set()
        return super().decode(input_ids, state)


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_request_joining_mid_stream_gets_its_solo_tokens(engine, sampling):
    first, late = [5, 6, 7, 8], [40, 41]
    want_first = _solo(engine, first, max_new_tokens=30, output="ids", **sampling)
    want_late = _solo(engine, late, max_new_tokens=12, output="ids", **sampling)
    pausing = PausingAt(engine.backend, 4)  # the prefill's token and 4 decodes', then the loop waits
    with Scheduler(pausing, engine.tokenizer, max_batch=4) as sched:
        running = sched.submit(first, max_new_tokens=30, output="ids", **sampling)
        stream = iter(running)
        head = [next(stream) for _ in range(5)]
        # the loop waits in its next decode: unpaused, on a loaded machine it could finish all 30 tokens before
        # this thread submits the late request (seen once with CI's install running beside the tests)
        assert pausing.reached.wait(60)
        joined = sched.submit(late, max_new_tokens=12, output="ids", **sampling)
        assert not running.done  # it is still decoding when the late request joins
        pausing.gate.set()
        assert head + list(stream) == want_first
        assert joined.result() == want_late
        assert running.finish_reason == joined.finish_reason == "length"
        assert (joined.prompt_tokens, joined.completion_tokens) == (2, 12)


def test_cancel_mid_stream_frees_the_slot_at_once(engine):
    with Scheduler(engine.backend, engine.tokenizer, max_batch=2) as sched:
        # queued together: submitted one by one, the loop could run two iterations before `other` arrives
        handle, other = sched.submit_many([[3, 4, 5], [9, 9]], max_new_tokens=10_000, output="ids", **GREEDY)
        stream = iter(handle)
        got = [next(stream), next(stream)]
        handle.cancel()
        assert sched.pool.free_count == 1 and handle.finish_reason == "cancelled"
        assert len(got) + len(list(stream)) <= handle.completion_tokens < 10_000
        waiting = sched.submit([7], max_new_tokens=2, output="ids", **GREEDY)  # takes the freed slot
        assert len(waiting.result(timeout=60)) == 2 and not other.done
        other.cancel()
        handle.cancel()  # a second cancel is a no-op
        assert sched.pool.free_count == 2 and sched.pool.held == []


def test_cancel_of_a_waiting_request(engine):
    with Scheduler(engine.backend, engine.tokenizer, max_batch=1) as sched:
        running = sched.submit([1, 2], max_new_tokens=10_000, output="ids", **GREEDY)
        queued = sched.submit([3], max_new_tokens=5, output="ids", **GREEDY)
        queued.cancel()
        assert queued.finish_reason == "cancelled" and queued.result() == [] and queued.completion_tokens == 0
        running.cancel()


def test_stop_ids_stop_strings_across_pieces_and_max_tokens(engine):
    prompt = engine.tokenizer.encode("HI").ids
    full = _solo(engine, prompt, max_new_tokens=24, **GREEDY)
    ids = _solo(engine, prompt, max_new_tokens=24, output="ids", **GREEDY)
    assert len(full) >= 6 and len(ids) == 24
    stop = full[3:6]  # three byte tokens: the stop string spans three pieces
    with Scheduler(engine.backend, engine.tokenizer, max_batch=3) as sched:
        by_string = sched.submit(prompt, max_new_tokens=24, stop_strings=[stop], **GREEDY)
        by_id = sched.submit(prompt, max_new_tokens=24, stop_ids=[ids[4]], output="ids", **GREEDY)
        short = sched.submit(prompt, max_new_tokens=3, output="ids", **GREEDY)
        pieces = list(by_string)
        assert "".join(pieces) == by_string.result() == full[:full.find(stop)]
        assert by_string.finish_reason == "stop"
        assert by_id.result() == ids[:ids.index(ids[4])] and by_id.finish_reason == "stop"
        assert short.result() == ids[:3] and short.finish_reason == "length"


def test_async_iterator_streams_the_same_pieces(engine):
    prompt = engine.tokenizer.encode("A LONGER PROMPT").ids
    want = _solo(engine, prompt, max_new_tokens=16, **SEEDED)

    async def consume(sched):
        handles = [sched.submit(prompt, max_new_tokens=16, **SEEDED) for _ in range(3)]

        async def pieces(h):
            return [p async for p in h]
        return await asyncio.gather(*(pieces(h) for h in handles))

    with Scheduler(engine.backend, engine.tokenizer, max_batch=2) as sched:
        streams = asyncio.run(consume(sched))
    assert ["".join(s) for s in streams] == [want] * 3 and all(len(s) > 1 for s in streams)


def test_token_budget_bounds_prefill_per_iteration(engine):
    recording = Recording(engine.backend)
    prompts = [[(7 * k + j) % 90 + 1 for j in range(n)] for k, n in enumerate([50, 37, 5, 20])]
    want = [_solo(engine, p, prefill_chunk=16, max_new_tokens=6, output="ids", **GREEDY) for p in prompts]
    with Scheduler(recording, max_batch=4, prefill_chunk=16, token_budget=24) as sched:
        recording.scheduler = sched
        decoding = sched.submit([1, 2, 3], max_new_tokens=40, output="ids", **GREEDY)
        next(iter(decoding))
        handles = [sched.submit(p, max_new_tokens=6, output="ids", **GREEDY) for p in prompts]
        assert [h.result() for h in handles] == want
        decoding.result()
    per_iteration = {}
    for iteration, n in recording.prefills:
        assert n <= 16
        per_iteration[iteration] = per_iteration.get(iteration, 0) + n
    assert max(per_iteration.values()) <= 24 and sum(per_iteration.values()) == 3 + sum(map(len, prompts))
    assert len(per_iteration) >= 5  # 112 prompt tokens need at least 5 iterations of 24
    first = min(per_iteration)  # the decoding request's own prefill; afterwards it decodes in every iteration
    assert all(i in recording.decodes for i in per_iteration if i > first)


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_equal_length_chunks_prefill_in_one_batched_call(engine, sampling):
    recording = Recording(engine.backend)
    prompts = [[(5 * k + j) % 90 + 1 for j in range(12)] for k in range(4)]
    want = [_solo(engine, p, max_new_tokens=7, output="ids", **sampling) for p in prompts]
    with Scheduler(recording, max_batch=5) as sched:
        recording.scheduler = sched
        recording.gate.clear()  # the first request's decode waits until the others are queued
        running = sched.submit([1, 2, 3], max_new_tokens=20, output="ids", **GREEDY)
        assert recording.in_decode.wait(60)  # else the loop may admit the first of them with it
        handles = [sched.submit(p, max_new_tokens=7, output="ids", **sampling) for p in prompts]
        recording.gate.set()
        assert [h.result(timeout=60) for h in handles] == want
        running.result(timeout=60)
    assert (4, 12) in recording.prefill_shapes  # the four 12-token prompts went in one call
    assert sum(rows * n for rows, n in recording.prefill_shapes) == 3 + 4 * 12


def _many_get_solo_tokens(engine, recording, prompts, sampling, max_new_tokens=5):
    """submit_many of `prompts` on `recording` (4 slots): each gets the tokens it gets alone."""
    want = [_solo(engine, p, max_new_tokens=max_new_tokens, output="ids", **sampling) for p in prompts]
    with Scheduler(recording, max_batch=4) as sched:
        recording.scheduler = sched
        handles = sched.submit_many(prompts, max_new_tokens=max_new_tokens, output="ids", **sampling)
        assert [h.result(timeout=60) for h in handles] == want


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_submit_many_admits_together_and_gets_solo_tokens(engine, sampling):
    recording = Recording(engine.backend)
    _many_get_solo_tokens(engine, recording, [[(3 * k + j) % 90 + 1 for j in range(n)]
                                              for k, n in enumerate([9, 4, 9, 9])], sampling)
    assert sorted(recording.prefill_shapes) == [(1, 4), (3, 9)]  # all four prefilled in the first iteration
    assert {iteration for iteration, _ in recording.prefills} == {1}
    with Scheduler(engine.backend, max_batch=2) as sched:
        with pytest.raises(ParameterError, match=r"\(prompt 1\)"):
            sched.submit_many([[1, 2], [1, 10_000]], output="ids")
        assert sched.active_count == 0  # the good prompt was not queued either
        done = sched.submit_many([[1], [2]], max_new_tokens=0, output="ids")
        assert [h.result() for h in done] == [[], []] and all(h.finish_reason == "length" for h in done)


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_fresh_prompts_of_different_lengths_prefill_in_one_padded_call(engine, sampling):
    """On a backend that pads prompts, whole fresh prompts of 12, 11 and 10 tokens go in one left-padded call
    (36 rows for 33 tokens: within PAD_OVERHEAD); the 3-token one would pad too much and goes in its own. Each
    request still gets its solo tokens (this backend prefills each padded row alone: the scheduler's part)."""
    recording = Recording(engine.backend, pads=True)
    _many_get_solo_tokens(engine, recording, [[(7 * k + j) % 90 + 1 for j in range(n)]
                                              for k, n in enumerate([10, 3, 12, 11])], sampling)
    assert recording.padded == [((3, 12), [12, 11, 10]), ((1, 3), [3])]  # fresh prompts: always with lengths
    assert recording.prefill_shapes == []


def test_lengths_on_a_backend_that_does_not_pad_prefill_each_row_alone(engine):
    """Backend.prefill_slots(..., lengths=) on a backend without pads_prompts: each right-aligned prompt
    prefilled alone on its slot (the same logits and slot state as prefill_slot of that prompt); lengths that
    do not fit the ids are a ParameterError."""
    backend = engine.backend
    assert not backend.pads_prompts
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    pool, alone = backend.new_pool(3), backend.new_pool(3)
    got = backend.prefill_slots(ids, pool, [2, 0], lengths=[4, 2])
    for row, (slot, k) in enumerate([(2, 4), (0, 2)]):
        want = backend.prefill_slot(ids[row:row + 1, 4 - k:], alone, slot)
        assert torch.equal(got[row:row + 1, -1], want[:, -1])
        assert all(torch.equal(a[slot], b[slot]) for a, b in zip(pool.state.tensors(), alone.state.tensors()))
    for bad in ([4], [0, 2], [5, 2]):
        with pytest.raises(ParameterError, match="lengths must be 2 prompt lengths in 1..4"):
            backend.prefill_slots(ids, pool, [2, 0], lengths=bad)


def test_padded_calls_take_only_whole_fresh_prompts():
    """A prompt cut into chunks, or one already partly prefilled, keeps the calls by length."""
    def request(length, prefilled=0):
        return types.SimpleNamespace(prompt=[1] * length, prefilled=prefilled)

    whole, chunked, resumed = request(5), request(40), request(30, prefilled=24)
    short, same = request(4), request(5)
    calls = Scheduler._padded_calls({5: [whole, same], 8: [chunked], 6: [resumed], 4: [short]})
    assert (8, [chunked], None) in calls and (6, [resumed], None) in calls
    assert (5, [whole, same, short], [5, 5, 4]) in calls and len(calls) == 3


def test_backend_failure_ends_the_requests_with_error(engine):
    recording = Recording(engine.backend)
    with Scheduler(recording, max_batch=2) as sched:
        recording.scheduler, recording.fail_decodes = sched, 1
        handle = sched.submit([1, 2], max_new_tokens=5, output="ids", **GREEDY)
        with pytest.raises(RuntimeError, match="decode failed"):
            handle.result(timeout=60)
        assert handle.finish_reason == "error" and sched.pool.free_count == 2
        assert len(sched.submit([1, 2], max_new_tokens=5, output="ids", **GREEDY).result(timeout=60)) == 5


def test_close_with_requests_in_flight(engine):
    sched = Scheduler(engine.backend, engine.tokenizer, max_batch=2)
    handles = [sched.submit([k + 1, 2], max_new_tokens=10_000, output="ids", **GREEDY) for k in range(4)]
    next(iter(handles[0]))
    sched.close()
    assert [h.finish_reason for h in handles] == ["cancelled"] * 4
    assert sched.pool.free_count == 2 and _loop_threads() == []
    with pytest.raises(MambaDeployError, match="closed"):
        sched.submit([1], max_new_tokens=1)


def test_eight_submitting_threads_get_solo_outputs(engine):
    prompts = [[3 + k, 40 - k, 7 * k % 90 + 1] for k in range(8)]
    settings = [GREEDY if k % 2 else {**SEEDED, "seed": k} for k in range(8)]
    want = [_solo(engine, p, max_new_tokens=10, output="ids", **s) for p, s in zip(prompts, settings)]
    results, barrier = [None] * 8, threading.Barrier(8)
    with Scheduler(engine.backend, engine.tokenizer, max_batch=4) as sched:
        def work(k):
            barrier.wait()
            handles = [sched.submit(prompts[k], max_new_tokens=10, output="ids", **settings[k]) for _ in range(2)]
            results[k] = [h.result(timeout=120) for h in handles]

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [[w] * 2 for w in want]


def test_thousand_requests_leave_no_slot_and_flat_memory(export_dir):
    """On onnxruntime only: the torch backend's reference model takes ~10 ms a step here."""
    engine, rng = Engine.load(export_dir, backend="onnxruntime", threads=1), random.Random(0)

    def wave(sched, n):
        handles = []
        for _ in range(n):
            prompt = [rng.randrange(1, 100) for _ in range(rng.randrange(1, 24))]
            kwargs = GREEDY if rng.random() < 0.5 else {**SEEDED, "seed": rng.randrange(2**32)}
            handles.append(sched.submit(prompt, max_new_tokens=rng.randrange(0, 8), stop_ids=[rng.randrange(100)],
                                        output="ids", **kwargs))
            if rng.random() < 0.05:
                handles[-1].cancel()
        for h in handles:
            h.result(timeout=120)
            assert h.finish_reason in ("stop", "length", "cancelled")

    with Scheduler(engine.backend, engine.tokenizer, max_batch=8) as sched:
        wave(sched, 200)
        gc.collect()
        rss_before = _rss_bytes()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        wave(sched, 800)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        sched.pool.check_no_leaks()
        assert sched.pool.free_count == 8 and sched.active_count == 0
        rss_grown = _rss_bytes() - rss_before
    assert grown < 256 * 1024, f"python memory grew by {grown} bytes over 800 requests"
    assert rss_grown < 16 * 2**20, f"resident memory grew by {rss_grown} bytes over 800 requests"


def _rss_bytes() -> int:
    """Resident set size now (Linux), else 0."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def test_bad_submissions_are_parameter_errors(engine):
    with Scheduler(engine.backend, max_batch=1) as sched:
        for kwargs, param in [(dict(prompt_ids=[]), "prompt"), (dict(prompt_ids=[1, 10_000]), "prompt"),
                              (dict(max_new_tokens=-1), "max_new_tokens"), (dict(seed=2**64), "seed"),
                              (dict(params=SamplingParams(top_p=0)), "top_p"), (dict(stop_strings=["x"]), "stop"),
                              (dict(output="text"), "output")]:
            with pytest.raises(ParameterError) as info:
                sched.submit(**{"prompt_ids": [1, 2], **kwargs})
            assert info.value.param == param
    with pytest.raises(ParameterError, match="max_batch"):
        Scheduler(engine.backend, max_batch=0)
    with pytest.raises(ParameterError, match=r"^prompt needs at least one token \(prompt 1\)$"):
        engine.generate([[1], []], max_new_tokens=1)
    assert _loop_threads() == []


def test_engine_generate_runs_on_its_scheduler(engine):
    assert engine.generate([[5, 6], [7]], max_new_tokens=3, temperature=0) == \
        [_solo(engine, [5, 6], max_new_tokens=3, output="ids", **GREEDY),
         _solo(engine, [7], max_new_tokens=3, output="ids", **GREEDY)]
    stream = engine.generate([1, 2, 3], max_new_tokens=10_000, temperature=0, stream=True)
    next(stream)
    stream.close()  # the consumer stops early: the request is cancelled and its slot freed
    assert engine.scheduler.pool.free_count == engine.scheduler.max_batch == engine.max_batch


def test_engine_scheduler_takes_no_more_slots_than_the_backend_allows(engine):
    small = Engine(Recording(engine.backend, max_slots=2), engine.tokenizer)
    prompts = [[5, 6], [7], [8, 9, 10]]
    assert small.generate(prompts, max_new_tokens=4, temperature=0) == \
        engine.generate(prompts, max_new_tokens=4, temperature=0)
    assert small.scheduler.max_batch == 2 and small.scheduler.pool.state.batch_size == 2


def test_interpreter_exit_with_a_live_loop_thread(export_dir):
    """The loop thread of an unclosed scheduler is ended before the interpreter finalizes (a daemon
    thread still running then aborted the process: 'terminate called without an active exception')."""
    script = ("import sys\nfrom mamba_deploy.runtime import Engine\n"
              "engine = Engine.load(sys.argv[1], backend='onnxruntime')\n"
              "print(engine.generate([5, 6], max_new_tokens=4, temperature=0))\n"
              "handle = engine.scheduler.submit([7, 8], max_new_tokens=10**6)\n"
              "next(iter(handle))\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run([sys.executable, "-c", script, str(export_dir)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr


def test_interpreter_exit_waits_for_a_loop_thread_holding_the_last_reference(export_dir, tmp_path):
    """A loop thread that ends after the caller let go of its scheduler tears the scheduler down itself; the
    interpreter must not finalize under it (that teardown frees tensors with the GIL released: in `run` the
    process then aborted in C++ frames). The probe's teardown is made slow; its marker shows it finished."""
    marker = tmp_path / "teardown-finished"
    script = ("import sys, threading, time\nfrom pathlib import Path\nfrom mamba_deploy.runtime import Engine\n"
              "from mamba_deploy.runtime.scheduler import Scheduler\n"
              "dropped, started = threading.Event(), threading.Event()\n"
              "class SlowTeardown:\n"
              "    def __del__(self):\n"
              "        started.set()\n"
              "        time.sleep(0.5)\n"
              "        Path(sys.argv[2]).write_text('done')\n"
              "class LastReference(Scheduler):\n"
              "    def _loop(self):\n"
              "        super()._loop()\n"
              "        dropped.wait(60)\n"
              "engine = Engine.load(sys.argv[1], backend='torch')\n"
              "scheduler = LastReference(engine.backend, engine.tokenizer, max_batch=1)\n"
              "scheduler.probe = SlowTeardown()\n"
              "print(scheduler.submit([5, 6], max_new_tokens=2).result())\n"
              "del scheduler\n"
              "dropped.set()\n"
              "assert started.wait(60)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run([sys.executable, "-c", script, str(export_dir), str(marker)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "done"
