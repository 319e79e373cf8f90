"""Torch backend: the reference model (mamba_deploy.models) with the export folder's own weights.

The weights are read back from weights.data through the initializers of decode.onnx (no second
format): A = -exp(A_log) is inverted to A_log = log(-A) (exact to a float32 ulp), conv weights are
reshaped back to (dim, 1, width).

The model computes in float32 whatever the export dtype: the weights are the export's own values
(upcast exactly), the conv state and the logits are in the export dtype as the Backend contract asks.
The weights so take twice the memory of a half-precision export; in exchange the error is the export's
own: on examples/models/mamba-tiny-pydoc the bf16 weights are 1.2e-2 (relative logit error, `verify`)
off the float32 model, and computing in bf16 as well took that to 1.8e-2.

Thread safety: calls share only the model's weights, which they read; every intermediate is a new
tensor and the state is written only through the caller's own tensors, so threads may call one
backend at once without a lock.
"""
from __future__ import annotations

from typing import Optional

import torch

from ...errors import MambaDeployError
from ...export.artifact import ExportInfo, check_export
from ...export.weights import read_export_tensors
from ...models import MambaLM
from ...models.state import InferenceState
from ..backend import Backend, register_backend

def load_reference_from_export(info: ExportInfo, dtype: Optional[torch.dtype] = None, device="cpu") -> MambaLM:
    """The reference MambaLM holding the export's weights, in `dtype` (default: the export dtype)."""
    check_export(info)
    with torch.device("meta"):
        model = MambaLM(info.config, dtype=dtype or info.dtype)
    model = model.to_empty(device=device)
    if info.config.tie_embeddings:
        model.lm_head.weight = model.backbone.embedding.weight
    params = dict(model.named_parameters())
    loaded = set()
    with torch.no_grad():
        for name, tensor in read_export_tensors(info):
            if name.endswith(".mixer.A"):
                name, tensor = name + "_log", torch.log(-tensor.float())
            if name not in params:
                continue  # e.g. the shared zero conv bias
            params[name].copy_(tensor.reshape(params[name].shape))
            loaded.add(name)
    missing = sorted(set(params) - loaded)
    if missing:
        raise MambaDeployError(f"{info.folder}: weights missing from the export: {', '.join(missing[:5])}")
    model.eval()
    return model


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, info: ExportInfo, device: str = "cpu"):
        super().__init__(info)
        self.model = load_reference_from_export(info, torch.float32, device=device)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def prefill(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        self.check_inputs(input_ids, state, decode=False)
        ids = input_ids.to(self.device)
        if self.all_logits:
            with torch.no_grad():
                return self.model(ids, state).to(self.dtype)
        return self.model.prefill(ids, state).to(self.dtype)

    def decode(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        self.check_inputs(input_ids, state, decode=True)
        return self.model.decode(input_ids.to(self.device), state).to(self.dtype)


register_backend("torch", TorchBackend)
