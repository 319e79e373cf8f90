"""Backend "tensorrt": the plans `mamba-deploy build --backend tensorrt` wrote, run by mamba_deploy.tensorrt.

Options: engines (a build folder), state_io ("inplace" | "pingpong"), cuda_graphs (True), device,
plugin_lib, verbose. Importing this module does not import `tensorrt`: loading the backend does, and
raises MambaDeployError with install instructions when TensorRT is missing.
"""
from __future__ import annotations

from typing import Any

import torch

from ...export.artifact import ExportInfo
from ...models.state import InferenceState
from ..backend import Backend, register_backend


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, info: ExportInfo, **options: Any):
        super().__init__(info)
        from ...tensorrt.runtime import TensorRTEngine

        self.engine = TensorRTEngine(info, **options)

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def prefill(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        self.check_inputs(input_ids, state, decode=False)
        return self.engine.prefill(input_ids, state)

    def decode(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        self.check_inputs(input_ids, state, decode=True)
        return self.engine.decode(input_ids, state)


def _available(info: ExportInfo) -> bool:
    from ...tensorrt._loader import tensorrt_available

    if not tensorrt_available():
        return False
    from ...tensorrt.runtime import available

    return available(info)


register_backend("tensorrt", TensorRTBackend, _available)
