"""The TensorRT engine: runs the plans `build_engines` wrote, on the current torch CUDA stream.

`runtime/backends/tensorrt.py` adapts it to the Backend interface. State buffers are the caller's
torch tensors, updated in place. Two ways to bind
the present states (`state_io`):

* "inplace" (default): each present_* output is bound to the same memory as its past_* input. Every
  state tensor is read and written only by its own plugin, whose kernel allows state_in ==
  state_out (each element is read and written by one thread), so no copy is made. This is the
  layout TensorRT-LLM uses for its KV cache.
* "pingpong": each state has a partner buffer; the engine reads one and writes the other, and the
  caller's tensor objects are then re-pointed (`Tensor.set_`) at the new values, so `data_ptr()`
  alternates between two buffers. No copy either; for engines built with aliased_state_io or when
  binding one buffer twice is not wanted.

Decode runs as a CUDA graph per (batch size, state buffers): the first step of a new key runs
eagerly (it also triggers the plugins' onShapeChange) and captures the graph; later steps replay it.
Each batch size gets its own execution context, so graphs never share activation memory across
shapes. Prompts longer than the engine's max_seq are fed in chunks (identical results).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import torch

from ..errors import MambaDeployError
from ..export.artifact import ExportInfo
from ..models.state import InferenceState
from ._loader import find_plugin_library, import_tensorrt
from .metadata import PLAN_FILES, engine_dir, find_engine_dirs, read_build_record
from .planning import BindingMap, binding_map

if TYPE_CHECKING:
    import tensorrt as trt
else:
    from ._loader import lazy_tensorrt as trt

STATE_IO_MODES = ("inplace", "pingpong")


def select_engine_dir(info: ExportInfo, gpu: str, explicit: Optional[Union[str, Path]] = None) -> Path:
    """The engines folder to run: `explicit`, else engines/<gpu-slug>-<dtype>, else a hardware-
    compatible build, else the newest one (whose build.json then decides whether it can run)."""
    if explicit is not None:
        return Path(explicit)
    dtype = info.meta["dtype"]
    for candidate in (engine_dir(info.folder, gpu, dtype), engine_dir(info.folder, gpu, dtype, True)):
        if (candidate / "build.json").is_file():
            return candidate
    found = find_engine_dirs(info.folder)
    if not found:
        raise MambaDeployError(f"{info.folder}: no TensorRT engines; build them with "
                               f"'mamba-deploy build {info.folder} --backend tensorrt'")
    return found[0]


class TensorRTEngine:
    """The prefill and decode plans of one export on one GPU. prefill(ids (batch, seq), state) and
    decode(ids (batch, 1), state) -> logits (batch, n, vocab_padded); state updated in place."""

    def __init__(self, info: ExportInfo, engines: Optional[Union[str, Path]] = None, state_io: str = "inplace",
                 cuda_graphs: bool = True, device: Union[int, str, torch.device, None] = None,
                 plugin_lib: Optional[Union[str, Path]] = None, verbose: bool = False):
        self.info = info
        self.config, self.dtype, self.all_logits = info.config, info.dtype, info.all_logits
        if info.config.other_layers:
            raise MambaDeployError(f"{info.config.other_layers} are not supported by the tensorrt backend yet; use "
                                   "onnxruntime or torch")
        if state_io not in STATE_IO_MODES:
            raise MambaDeployError(f"state_io must be one of {', '.join(STATE_IO_MODES)}, got {state_io!r}")
        if not torch.cuda.is_available():
            raise MambaDeployError("the tensorrt backend needs an NVIDIA GPU (torch.cuda.is_available() is False)")
        self._device = torch.device("cuda", torch.cuda.current_device() if device is None
                                    else torch.device(device).index or 0)
        import_tensorrt()  # the install / version check, with its message
        gpu = torch.cuda.get_device_name(self._device)
        major, minor = torch.cuda.get_device_capability(self._device)
        folder = select_engine_dir(info, gpu, engines)
        record = self.record = read_build_record(folder)
        why = record.mismatches(gpu, f"{major}.{minor}", str(trt.__version__))
        if record.dtype != info.meta["dtype"] or record.state_dtype != info.meta["state_dtype"]:
            why.append(f"built for {record.dtype}/{record.state_dtype}, the export is "
                       f"{info.meta['dtype']}/{info.meta['state_dtype']}")
        if why:
            raise MambaDeployError(f"{folder}: these engines cannot run here: {'; '.join(why)}. Rebuild: "
                                   f"'mamba-deploy build {info.folder} --backend tensorrt --force'")
        self.state_io = state_io
        self.cuda_graphs = cuda_graphs
        self.max_batch = int(record.limits["max_batch"])
        self.max_seq = int(record.limits["max_seq"])
        self._logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
        self._load_plugins(plugin_lib)
        runtime = self._runtime = trt.Runtime(self._logger)
        if record.version_compatible:
            runtime.engine_host_code_allowed = True  # the plan embeds its lean runtime
        self._engines: dict[str, trt.ICudaEngine] = {}
        self._maps: dict[str, BindingMap] = {}
        with torch.cuda.device(self._device):
            for kind in ("prefill", "decode"):
                plan = (folder / record.plans.get(kind, PLAN_FILES[kind])).read_bytes()
                engine = runtime.deserialize_cuda_engine(plan)
                if engine is None:
                    raise MambaDeployError(f"{folder}: TensorRT could not load {kind} plan (see its log); rebuild "
                                           f"with --force")
                self._engines[kind] = engine
                self._maps[kind] = self._binding_map(engine)
            self._prefill_ctx = self._engines["prefill"].create_execution_context()
        self._decode_ctx: dict[int, trt.IExecutionContext] = {}
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._partners: dict[int, torch.Tensor] = {}  # pingpong: data_ptr -> the other buffer

    @property
    def device(self) -> torch.device:
        return self._device

    def prefill(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        self._check_state(state)
        ids = input_ids.to(self._device, torch.int64)
        chunks = [self._run(self._prefill_ctx, "prefill", ids[:, i:i + self.max_seq].contiguous(), state)
                  for i in range(0, ids.shape[1], self.max_seq)]
        return torch.cat(chunks, dim=1) if self.all_logits and len(chunks) > 1 else chunks[-1]

    def decode(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        self._check_state(state)
        batch = input_ids.shape[0]
        ids = input_ids.to(self._device, torch.int64)
        ctx = self._decode_ctx.get(batch)
        if ctx is None:
            ctx = self._decode_ctx[batch] = self._engines["decode"].create_execution_context()
        if not self.cuda_graphs:
            return self._run(ctx, "decode", ids.contiguous(), state)
        key = (batch, *(t.data_ptr() for t in state.conv + state.ssm))
        entry = self._graphs.get(key)
        if entry is None:
            ids_buf = ids.clone().contiguous()
            logits_buf = self._new_logits(batch, 1)
            addresses = self._addresses("decode", ids_buf, logits_buf, state)
            self._execute(ctx, "decode", addresses, (batch, 1))  # the real step; also warms the context up
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._execute(ctx, "decode", addresses, (batch, 1))
            self._graphs[key] = entry = (graph, ids_buf, logits_buf)
        else:
            graph, ids_buf, logits_buf = entry
            ids_buf.copy_(ids)
            graph.replay()
        self._swap_states(state)
        return entry[2]

    # ---- internals -------------------------------------------------------------------------------
    def _run(self, ctx: trt.IExecutionContext, kind: str, ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        batch, seq = ids.shape
        logits = self._new_logits(batch, seq if (self.all_logits and kind == "prefill") else 1)
        self._execute(ctx, kind, self._addresses(kind, ids, logits, state), (batch, seq))
        self._swap_states(state)
        return logits

    def _execute(self, ctx: trt.IExecutionContext, kind: str, addresses: dict[str, int],
                 ids_shape: tuple[int, int]) -> None:
        bindings = self._maps[kind]
        batch = ids_shape[0]
        if not ctx.set_input_shape(bindings.input_ids, ids_shape):
            raise MambaDeployError(f"input_ids shape {ids_shape} is outside the {kind} engine's profile "
                                   f"(max_batch {self.max_batch}, max_seq {self.max_seq})")
        for slot in bindings.states:
            shape = (self.config.conv_state_shape(batch) if slot.kind == "conv"
                     else self.config.ssm_state_shape(batch))
            ctx.set_input_shape(slot.past, shape)
        for name, address in addresses.items():
            if not ctx.set_tensor_address(name, address):
                raise MambaDeployError(f"TensorRT refused the buffer of {name}")
        if not ctx.execute_async_v3(torch.cuda.current_stream(self._device).cuda_stream):
            raise MambaDeployError(f"TensorRT failed to run the {kind} engine (see its log)")

    def _addresses(self, kind: str, ids: torch.Tensor, logits: torch.Tensor, state: InferenceState
                   ) -> dict[str, int]:
        bindings = self._maps[kind]
        out = {bindings.input_ids: ids.data_ptr(), bindings.logits: logits.data_ptr()}
        for slot in bindings.states:
            tensor = (state.conv if slot.kind == "conv" else state.ssm)[slot.layer]
            out[slot.past] = tensor.data_ptr()
            out[slot.present] = (tensor.data_ptr() if self.state_io == "inplace"
                                 else self._partner(tensor).data_ptr())
        return out

    def _partner(self, tensor: torch.Tensor) -> torch.Tensor:
        partner = self._partners.get(tensor.data_ptr())
        if partner is None or partner.shape != tensor.shape or partner.dtype != tensor.dtype:
            partner = self._partners[tensor.data_ptr()] = torch.empty_like(tensor)
        return partner

    def _swap_states(self, state: InferenceState) -> None:
        """pingpong: point the caller's tensors at the buffers the engine just wrote."""
        if self.state_io != "pingpong":
            return
        for tensor in state.conv + state.ssm:
            partner = self._partner(tensor)
            old = tensor.view(tensor.shape)  # keeps the previous buffer alive as the next partner
            tensor.set_(partner.untyped_storage(), partner.storage_offset(), partner.size(),
                        partner.stride())
            self._partners.pop(old.data_ptr(), None)
            self._partners[tensor.data_ptr()] = old

    def _new_logits(self, batch: int, positions: int) -> torch.Tensor:
        return torch.empty(batch, positions, self.config.vocab_size_padded, dtype=self.dtype, device=self._device)

    def _check_state(self, state: InferenceState) -> None:
        if state.batch_size > self.max_batch:
            raise MambaDeployError(f"batch {state.batch_size} exceeds the engines' max_batch {self.max_batch}; "
                                   f"rebuild with a larger --max-batch")
        for t in state.conv + state.ssm:
            if t.device != self._device or not t.is_contiguous():
                raise MambaDeployError(f"state tensors must be contiguous on {self._device} (use "
                                       f"backend.new_state); got one on {t.device}")

    def _binding_map(self, engine: trt.ICudaEngine) -> BindingMap:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        return binding_map(inputs, outputs, self.config.n_layer)

    def _load_plugins(self, plugin_lib: Optional[Union[str, Path]]) -> None:
        """The plans carry the plugin library (plugins_to_serialize); load the installed one as well
        when it is there, so plans built without it still find their creators."""
        try:
            path = find_plugin_library(plugin_lib)
        except MambaDeployError:
            if plugin_lib is not None:
                raise
            return
        trt.get_plugin_registry().load_library(str(path))


def available(info: ExportInfo) -> bool:
    """For backend="auto": TensorRT importable, a GPU, and engines built for it."""
    try:
        import_tensorrt()
        if not torch.cuda.is_available():
            return False
        gpu = torch.cuda.get_device_name()
        record = read_build_record(select_engine_dir(info, gpu))
        major, minor = torch.cuda.get_device_capability()
        return not record.mismatches(gpu, f"{major}.{minor}", str(import_tensorrt().__version__))
    except MambaDeployError:
        return False


__all__ = ["STATE_IO_MODES", "TensorRTEngine", "available", "select_engine_dir"]
