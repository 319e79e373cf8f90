"""ONNX Runtime backend: the exported graphs on CPU (custom ops run through their function bodies).

Inputs and outputs go through IO binding straight from/to torch tensors, and the state is updated in
place by binding each `past_*_state.{i}` input and its `present_*_state.{i}` output to the same
caller's tensor: every graph output is written by the last node of a chain that has already read the
matching input (the new state is a function of the old one), so ONNX Runtime reads the old values before
it writes the new ones (tests/runtime/test_onnxruntime_binding.py checks this bit for bit against plain
`run`). States that are strided views go through a contiguous copy and are copied back. A hybrid's
attention state (KV cache, its conv state, the length) is read by several nodes, one of which may run
after the node that writes the matching output, so those outputs get buffers of their own and are copied
back after the run (`IN_PLACE`: the kinds bound in place).

Decode keeps one prepared binding per state (its address set): ids buffer, logits buffer and every state
bound once, so a step is one copy of the ids and one `run_with_iobinding` (no per-step binding, no state
copy). The logits tensor returned by `decode` is that binding's buffer, reused on the next decode with the
same state (as the Backend contract allows). Slots (`prefill_slot`, `decode_slots` on consecutive slots) run
on views of the pool's rows, so the scheduler's steps copy no state either.

Thread safety: a prepared binding belongs to one state, which one call uses at a time (the contract);
prefill and the strided fallback build their binding per call; `run_with_iobinding` may run concurrently
on one session; the cache of prepared bindings is guarded by a lock held only for the lookup. So any
number of threads may call one backend at once, each with its own state.
"""
from __future__ import annotations

import collections
import os
import threading
from typing import Optional

import numpy as np
import torch

from ...errors import MambaDeployError
from ...export.artifact import ExportInfo, check_export
from ...models.state import InferenceState, io_name
from ..backend import Backend, register_backend
from ..slots import StatePool, consecutive_start

_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}
MAX_PREPARED = 64  # prepared decode bindings kept (one per live state; least recently used dropped)
IN_PLACE = ("conv", "ssm")  # state kinds whose present output is bound to the past input's own memory


class _Prepared:
    """A decode binding of one contiguous state: ids (batch, 1) and logits (batch, 1, V) buffers, states in place.
    It holds the state's addresses, not the state: a state freed and another made at the same addresses (same
    batch, so same shapes) finds a binding that is right for it."""

    def __init__(self, backend: "OnnxRuntimeBackend", state: InferenceState):
        batch = state.batch_size
        self.ids = torch.empty(batch, 1, dtype=torch.int64)
        self.logits = torch.empty(batch, 1, backend.config.vocab_size_padded, dtype=backend.dtype)
        self.binding = backend.sessions["decode"].io_binding()
        self.present = _present_for(state, backend.config)
        backend._bind_all(self.binding, self.ids, state, self.present, self.logits)
        self.copies = _copies(state, self.present)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, info: ExportInfo, threads: Optional[int] = None):
        super().__init__(info)
        import onnxruntime as ort

        if not _available(info):
            raise MambaDeployError("ONNX Runtime's CPU provider has no bfloat16 kernels; run this export with "
                                   "--backend torch (or export in float16/float32)")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise MambaDeployError(f"threads must be a positive integer, got {threads!r}")
        check_export(info)  # before ORT opens any file the graphs name
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or min(8, os.cpu_count() or 1)
        opts.log_severity_level = 3
        if info.dtype == torch.float16:  # its graphs load from memory (_session): where their weights.data lies
            opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(info.folder))
        try:
            self.sessions = {kind: _session(ort, info, kind, opts) for kind in ("prefill", "decode")}
        except Exception as exc:  # ORT raises its own types for corrupt/missing graphs or weights
            raise MambaDeployError(f"{info.folder}: ONNX Runtime cannot load the graphs "
                                   f"({type(exc).__name__}: {exc})".splitlines()[0]) from None
        self._prepared: collections.OrderedDict[tuple, _Prepared] = collections.OrderedDict()
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def prefill(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        self.check_inputs(input_ids, state, decode=False)
        return self._run("prefill", input_ids, state)

    def decode(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        self.check_inputs(input_ids, state, decode=True)
        prepared = self._prepared_for(state)
        if prepared is None:
            return self._run("decode", input_ids, state)
        prepared.ids.copy_(input_ids)
        self.sessions["decode"].run_with_iobinding(prepared.binding)
        for dst, src in prepared.copies:
            dst.copy_(src)
        return prepared.logits

    def prefill_slot(self, input_ids: torch.Tensor, pool: StatePool, slot: int) -> torch.Tensor:
        """On the pool's row itself (a contiguous view): no gather or scatter."""
        if pool.device.type != "cpu":
            return super().prefill_slot(input_ids, pool, slot)
        if not 0 <= slot < pool.max_slots:
            raise MambaDeployError(f"slot {slot} lies outside the pool's {pool.max_slots} slots")
        return self.prefill(input_ids, _rows(pool, slot, 1))

    def prefill_slots(self, input_ids: torch.Tensor, pool: StatePool, slots, lengths=None) -> torch.Tensor:
        """Consecutive slots run on the pool's rows themselves; others gather and scatter."""
        first, n = consecutive_start(slots), len(slots)
        if pool.device.type != "cpu" or n < 2 or first is None or first < 0 or first + n > pool.max_slots or \
                lengths is not None:
            return super().prefill_slots(input_ids, pool, slots, lengths)
        return self.prefill(input_ids, _rows(pool, first, n))

    def decode_slots(self, input_ids: torch.Tensor, pool: StatePool, slots: torch.Tensor) -> torch.Tensor:
        """Slots that are consecutive rows (start .. start + n - 1, in any order) run on the pool's rows themselves
        (a contiguous view, so a stable set of slots keeps its prepared binding; the ids and logits are permuted
        when the order is not the pool's); others gather and scatter."""
        self.check_slots(input_ids, slots)
        listed, n = slots.tolist(), slots.shape[0]
        first = consecutive_start(sorted(listed))
        if pool.device.type != "cpu" or first is None:
            return super().decode_slots(input_ids, pool, slots)
        if first < 0 or first + n > pool.max_slots:
            raise MambaDeployError(f"slots {first}..{first + n - 1} lie outside the pool's {pool.max_slots} slots")
        if listed == list(range(first, first + n)):
            return self.decode(input_ids, _rows(pool, first, n))
        rows = torch.tensor(listed) - first  # a permutation of the range: ids into pool order, logits back
        ids = torch.empty_like(input_ids)
        ids[rows] = input_ids
        return self.decode(ids, _rows(pool, first, n))[rows]

    def _prepared_for(self, state: InferenceState) -> Optional[_Prepared]:
        """The prepared decode binding of `state` (made on first use); None when a state tensor is strided."""
        tensors = state.tensors()
        if not all(t.is_contiguous() and t.device.type == "cpu" for t in tensors):
            return None
        key = (state.batch_size, *(t.data_ptr() for t in tensors))
        with self._lock:
            prepared = self._prepared.get(key)
            if prepared is not None:
                self._prepared.move_to_end(key)
                return prepared
        prepared = _Prepared(self, state)
        with self._lock:
            self._prepared[key] = prepared
            while len(self._prepared) > MAX_PREPARED:
                self._prepared.popitem(last=False)
        return prepared

    def _run(self, kind: str, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        """One call with a binding of its own: states in place (contiguous ones) or through contiguous copies."""
        session = self.sessions[kind]
        batch, seqlen = input_ids.shape
        ids = input_ids.to("cpu", torch.int64).contiguous()
        positions = seqlen if (self.all_logits or kind == "decode") else 1
        logits = torch.empty(batch, positions, self.config.vocab_size_padded, dtype=self.dtype)
        tensors = state.tensors()
        work = state.with_tensors([t if t.is_contiguous() else t.contiguous() for t in tensors])  # alive until done
        present = _present_for(work, self.config)  # per call: concurrent calls must not share outputs
        binding = session.io_binding()
        self._bind_all(binding, ids, work, present, logits)
        session.run_with_iobinding(binding)
        for dst, src in _copies(work, present):
            dst.copy_(src)
        for dst, src in zip(tensors, work.tensors()):
            if dst is not src:
                dst.copy_(src)
        return logits

    def _bind_all(self, binding, ids: torch.Tensor, past: InferenceState, present: InferenceState,
                  logits: torch.Tensor) -> None:
        _bind(binding.bind_input, "input_ids", ids)
        for (kind, layer, src), (_, _, dst) in zip(past.named(self.config), present.named(self.config)):
            _bind(binding.bind_input, f"past_{io_name(kind, layer)}", src)
            _bind(binding.bind_output, f"present_{io_name(kind, layer)}", dst)
        _bind(binding.bind_output, "logits", logits)


def _present_for(state: InferenceState, config) -> InferenceState:
    """The output buffers of a run on `state`: its own tensors for the IN_PLACE kinds, new ones for the rest."""
    own = {id(t) for kind, _, t in state.named(config) if kind in IN_PLACE}
    return state.with_tensors([t if id(t) in own else torch.empty_like(t) for t in state.tensors()])


def _copies(state: InferenceState, present: InferenceState) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(state tensor, its separate output buffer) pairs to copy back after a run."""
    return [(dst, src) for dst, src in zip(state.tensors(), present.tensors()) if dst is not src]


def _rows(pool: StatePool, start: int, count: int) -> InferenceState:
    """Rows start .. start + count - 1 of the pool as views (contiguous: the pool's tensors are)."""
    return pool.state.with_tensors([t[start:start + count] for t in pool.state.tensors()])


def _bind(bind, name: str, tensor: torch.Tensor) -> None:
    bind(name, "cpu", 0, _NUMPY[tensor.dtype], list(tensor.shape), tensor.data_ptr())


def _session(ort, info: ExportInfo, kind: str, opts):
    """A CPU session of graph `kind`; a float16 export's graph computes in float32 (ort_float32: no Cast storm),
    loaded from memory, its external weights found through opts (set once for both sessions: a second setting
    makes ONNX Runtime print a warning)."""
    if info.dtype != torch.float16:
        return ort.InferenceSession(str(info.graph(kind)), opts, providers=["CPUExecutionProvider"])
    from .ort_float32 import float32_compute

    model = float32_compute(info.load_graph(kind))
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _available(info: ExportInfo) -> bool:
    """The CPU provider has no bfloat16 kernels."""
    return torch.bfloat16 not in (info.dtype, info.state_dtype)


register_backend("onnxruntime", OnnxRuntimeBackend, _available)
