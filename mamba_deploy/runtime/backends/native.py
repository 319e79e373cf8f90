"""Native backend: the export run by mamba_deploy.native (CUDA kernels, cuBLAS, CUDA-graph decode).

Options: device ("cuda"), max_batch (64), chunk_len (2048), gemv_max_batch (2), use_graphs (True).
The engine's static state is a pool of max_batch slots that its decode kernels index through a slot-id
buffer. `new_pool` hands that pool to the scheduler (when no other state claims it), so `decode_slots`
and `prefill_slot` run on the slots in place, with no state copy; a pool of other memory falls back to
the base class's gather/scatter. The state from new_state() is likewise backed by the pool while it is
the only one alive, so decode is a bare graph replay; other states are copied in and out around it.

Thread safety: the engine's static buffers (ids, activations, logits, the claimed state) and its
graph capture are shared, so one lock serialises every engine call. Under it, decode of a state
other than the static one keeps the static rows it borrows (they may hold the claimed state) and
returns a copy of the logits, which the next call from another thread would overwrite.
"""
from __future__ import annotations

import threading

import torch

from ...export.artifact import ExportInfo
from ...models.state import InferenceState
from ..backend import Backend, register_backend
from ..slots import StatePool, consecutive_start


class NativeBackend(Backend):
    name = "native"
    slots_option = "max_batch"  # the engine's static state: a pool of max_batch slots, allocated once

    def __init__(self, info: ExportInfo, engine=None, **options):
        """`engine`: an already-built NativeEngine for `info` (benchmarks on random weights); else built
        from the export's weights with `options`."""
        super().__init__(info)
        from ...native import engine_from_export

        self.engine = engine if engine is not None else engine_from_export(info, **options)
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def max_slots(self) -> int:
        return self.engine.max_batch

    def new_state(self, batch_size: int) -> InferenceState:
        with self._lock:  # one claim of the static buffers
            return self.engine.new_state(batch_size)

    def new_pool(self, max_slots: int) -> StatePool:
        """The engine's own slots 0..max_slots-1 when free (claimed for the pool's lifetime), else host-side
        default: a separate pool served by gather/scatter."""
        return StatePool(self.config, self.new_state(max_slots))

    def _owns(self, pool: StatePool) -> bool:
        return self.engine.is_pool_view(pool.state) and pool.state.conv[0].data_ptr() == \
            self.engine.static.conv[0].data_ptr()

    def prefill_slot(self, input_ids: torch.Tensor, pool: StatePool, slot: int) -> torch.Tensor:
        if not self._owns(pool):
            return super().prefill_slot(input_ids, pool, slot)
        with self._lock:
            return self.engine.prefill_slot(input_ids, slot, all_logits=self.all_logits)

    def prefill_slots(self, input_ids: torch.Tensor, pool: StatePool, slots, lengths=None) -> torch.Tensor:
        """Consecutive slots of the engine's pool prefill in place (views); others through gather/scatter."""
        first, n = consecutive_start(slots), len(slots)
        if not self._owns(pool) or (n == 1 and lengths is None) or first is None:
            return super().prefill_slots(input_ids, pool, slots, lengths)
        with self._lock:
            return self.engine.prefill(input_ids, self.engine.slot_state(first, n), all_logits=self.all_logits,
                                       lengths=lengths)

    @property
    def pads_prompts(self) -> bool:
        """Models without attention layers (and, for Mamba2, with dt_limit from 0) left-pad fresh prompts of
        different lengths into one NativeEngine.prefill (lengths=)."""
        from ...native.prefill import padding_unsupported
        return not padding_unsupported(self.engine.config)

    def prefill_padded(self, input_ids: torch.Tensor, state: InferenceState, lengths: list[int]) -> torch.Tensor:
        self.check_inputs(input_ids, state, decode=False)
        with self._lock:
            return self.engine.prefill(input_ids, state, all_logits=self.all_logits, lengths=lengths)

    def decode_sample_slots(self, pool: StatePool, slots: torch.Tensor, sampler, vocab_limit: int,
                            all_greedy: bool = False) -> torch.Tensor:
        """On the engine's pool: decode and sampling replay as one CUDA graph (NativeEngine.decode_sample)."""
        if not self._owns(pool):
            return super().decode_sample_slots(pool, slots, sampler, vocab_limit, all_greedy)
        with self._lock:
            return self.engine.decode_sample(slots, sampler, vocab_limit, all_greedy)

    @property
    def prefill_budget(self) -> tuple[int, int]:
        """A GPU prefill of a few thousand tokens takes milliseconds: chunks of the engine's chunk_len, up to
        8,192 tokens an iteration (TensorRT-LLM's default max_num_tokens): 64 prompts of 100 tokens in one call
        (two calls of 40 and 24 rows took twice the GPU time of one: docs/performance.md, session 13)."""
        return self.engine.chunk_len, max(8192, self.engine.chunk_len)

    def decode_slots(self, input_ids: torch.Tensor, pool: StatePool, slots: torch.Tensor) -> torch.Tensor:
        if not self._owns(pool):
            return super().decode_slots(input_ids, pool, slots)
        with self._lock:
            return self.engine.decode_slots(input_ids, slots).clone()

    def prefill(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        self.check_inputs(input_ids, state, decode=False)
        with self._lock:  # no kernels from other threads while a decode graph is being captured
            return self.engine.prefill(input_ids, state, all_logits=self.all_logits)

    def decode(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        self.check_inputs(input_ids, state, decode=True)
        with self._lock:
            if self.engine.is_pool_view(state):
                return self.engine.decode(input_ids, state).clone()
            b, static = state.batch_size, self.engine.static
            rows = [t[:b] for t in static.tensors()]
            borrowed = [t.clone() for t in rows]
            logits = self.engine.decode(input_ids, state).clone()
            torch._foreach_copy_(rows, borrowed)
            return logits


def _available(info: ExportInfo) -> bool:
    from ...native import available

    return available()


register_backend("native", NativeBackend, _available)
