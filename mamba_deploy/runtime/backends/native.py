"""Native backend: the export run by mamba_deploy.native (CUDA kernels, cuBLAS, CUDA-graph decode).

Options: device ("cuda"), max_batch (64), chunk_len (2048), gemv_max_batch (2), use_graphs (True).
The state from new_state() is backed by the engine's static buffers while it is the only one alive,
so decode is a bare graph replay; other states are copied in and out around the replay.

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


class NativeBackend(Backend):
    name = "native"

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

    def prefill(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        self.check_inputs(input_ids, state, decode=False)
        with self._lock:  # no kernels from other threads while a decode graph is being captured
            return self.engine.prefill(input_ids, state, all_logits=self.all_logits)

    def decode(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        self.check_inputs(input_ids, state, decode=True)
        with self._lock:
            if self.engine._is_static(state):
                return self.engine.decode(input_ids, state).clone()
            b, static = state.batch_size, self.engine.static
            borrowed = [t[:b].clone() for t in static.conv + static.ssm]
            logits = self.engine.decode(input_ids, state).clone()
            torch._foreach_copy_([t[:b] for t in static.conv + static.ssm], borrowed)
            return logits


def _available(info: ExportInfo) -> bool:
    from ...native import available

    return available()


register_backend("native", NativeBackend, _available)
