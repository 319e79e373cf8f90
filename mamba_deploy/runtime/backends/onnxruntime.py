"""ONNX Runtime backend: the exported graphs on CPU (custom ops run through their function bodies).

Inputs and outputs go through IO binding straight from/to torch tensors: the past states are bound
from the caller's state (a contiguous copy where it is strided), the present states to a scratch state
of the same shapes, which is then copied into the caller's state (in place, as the Backend contract asks).

Thread safety: every call allocates its own scratch, IO binding and logits, and ONNX Runtime's
`run_with_iobinding` may run concurrently on one session, so any number of threads may call one
backend at once (each with its own state); nothing is locked.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

from ...errors import MambaDeployError
from ...export.artifact import ExportInfo, check_export
from ...models.state import InferenceState, io_name
from ..backend import Backend, register_backend

_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, info: ExportInfo, threads: Optional[int] = None):
        super().__init__(info)
        import onnxruntime as ort

        if not _available(info):
            raise MambaDeployError("ONNX Runtime's CPU provider has no bfloat16 kernels; run this export with "
                                   "--backend torch (or export in float16/float32)")
        check_export(info)  # before ORT opens any file the graphs name
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or min(8, os.cpu_count() or 1)
        opts.log_severity_level = 3
        try:
            self.sessions = {kind: ort.InferenceSession(str(info.graph(kind)), opts, providers=["CPUExecutionProvider"])
                             for kind in ("prefill", "decode")}
        except Exception as exc:  # ORT raises its own types for corrupt/missing graphs or weights
            raise MambaDeployError(f"{info.folder}: ONNX Runtime cannot load the graphs "
                                   f"({type(exc).__name__}: {exc})".splitlines()[0]) from None

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def prefill(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        self.check_inputs(input_ids, state, decode=False)
        return self._run("prefill", input_ids, state)

    def decode(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        self.check_inputs(input_ids, state, decode=True)
        return self._run("decode", input_ids, state)

    def _run(self, kind: str, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        session = self.sessions[kind]
        batch, seqlen = input_ids.shape
        ids = input_ids.to("cpu", torch.int64).contiguous()
        present = state.with_tensors([torch.empty_like(t, memory_format=torch.contiguous_format)
                                      for t in state.tensors()])  # per call: concurrent calls must not share outputs
        positions = seqlen if (self.all_logits or kind == "decode") else 1
        logits = torch.empty(batch, positions, self.config.vocab_size_padded, dtype=self.dtype)
        past = state.with_tensors([t.contiguous() for t in state.tensors()])  # kept alive until the run is over
        binding = session.io_binding()
        _bind(binding.bind_input, "input_ids", ids)
        for (part, layer, src), (_, _, dst) in zip(past.named(self.config), present.named(self.config)):
            _bind(binding.bind_input, f"past_{io_name(part, layer)}", src)
            _bind(binding.bind_output, f"present_{io_name(part, layer)}", dst)
        _bind(binding.bind_output, "logits", logits)
        session.run_with_iobinding(binding)
        for dst, src in zip(state.tensors(), present.tensors()):
            dst.copy_(src)
        return logits


def _bind(bind, name: str, tensor: torch.Tensor) -> None:
    bind(name, "cpu", 0, _NUMPY[tensor.dtype], list(tensor.shape), tensor.data_ptr())


def _available(info: ExportInfo) -> bool:
    """The CPU provider has no bfloat16 kernels."""
    return torch.bfloat16 not in (info.dtype, info.state_dtype)


register_backend("onnxruntime", OnnxRuntimeBackend, _available)
