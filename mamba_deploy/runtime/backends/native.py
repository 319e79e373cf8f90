"""Native backend: the export run by mamba_deploy.native (CUDA kernels, cuBLAS, CUDA-graph decode).

Options: device ("cuda"), max_batch (64), chunk_len (2048), gemv_max_batch (2), use_graphs (True).
The state from new_state() is backed by the engine's static buffers while it is the only one alive,
so decode is a bare graph replay; other states are copied in and out around the replay.
"""
from __future__ import annotations

import torch

from ...export.artifact import ExportInfo
from ...models.state import InferenceState
from ..backend import Backend, register_backend


class NativeBackend(Backend):
    name = "native"

    def __init__(self, info: ExportInfo, **options):
        super().__init__(info)
        from ...native import engine_from_export

        self.engine = engine_from_export(info, **options)

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def new_state(self, batch_size: int) -> InferenceState:
        return self.engine.new_state(batch_size)

    def prefill(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        self.check_inputs(input_ids, state, decode=False)
        return self.engine.prefill(input_ids, state, all_logits=self.all_logits)

    def decode(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        self.check_inputs(input_ids, state, decode=True)
        return self.engine.decode(input_ids, state)


def _available(info: ExportInfo) -> bool:
    from ...native import available

    return available()


register_backend("native", NativeBackend, _available)
