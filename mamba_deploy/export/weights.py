"""Stream checkpoint tensors into one external-data file shared by both graphs, and read them back.

Tensors are converted one at a time (peak memory: about the largest tensor), written at
4096-byte aligned offsets (so runtimes can mmap them) and referenced from the graphs by
TensorProtos that carry only `external_data` (location, offset, length): no proto ever holds the
weights, so models over 2 GB work.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np
import onnx
import torch
from onnx import TensorProto

from ..checkpoint import expected_parameters, iter_checked, iter_tensors, resolve_inside
from ..config import ModelConfig
from ..errors import CheckpointError, MambaDeployError
from .quantize import HEAD, check_quantize, dequantized, is_quantized_weight, quantized_entries, quantized_shapes

if TYPE_CHECKING:
    from .artifact import ExportInfo

WEIGHTS_FILE = "weights.data"
ALIGN = 4096
ZERO_CONV_BIAS = "zeros.conv_bias"  # stands in for the conv bias of `conv_bias: false` models
TORCH_TO_ONNX = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16,
                 torch.bfloat16: TensorProto.BFLOAT16, torch.uint8: TensorProto.UINT8}
ONNX_TO_TORCH = {v: k for k, v in TORCH_TO_ONNX.items()}
_FLOAT32_PARAMS = ("mixer.A_log", "mixer.D", "mixer.dt_bias", "dt_proj.bias")


def export_name_and_tensor(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> tuple[str, torch.Tensor]:
    """Checkpoint parameter -> graph initializer: A = -exp(A_log) and the small params in float32,
    conv weights (dim, 1, width) -> (dim, width), everything else in the export dtype."""
    if name.endswith("A_log"):
        return name[: -len("A_log")] + "A", -torch.exp(tensor.float())
    if name.endswith(_FLOAT32_PARAMS):
        return name, tensor.float()
    if name.endswith("conv1d.weight"):
        return name, tensor.reshape(tensor.shape[0], tensor.shape[-1]).to(dtype)
    return name, tensor.to(dtype)


def export_initializer_specs(cfg: ModelConfig, dtype: torch.dtype, quantize: Optional[str] = None
                             ) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """name -> (dtype, shape) of every initializer an export of `cfg` in `dtype` (weights quantized per
    `quantize`, see export.quantize) holds (computed on the meta device: no memory)."""
    bits = check_quantize(quantize)
    specs = {}
    for name, shape in _quantized_parameters(cfg, bits).items():
        if bits and is_quantized_weight(name):
            qshape, sshape = quantized_shapes(*shape, bits)
            specs.update({f"{name}.qweight": (torch.uint8, qshape), f"{name}.scales": (torch.float32, sshape)})
            continue
        name, tensor = export_name_and_tensor(name, torch.empty(shape, device="meta"), dtype)
        specs[name] = (tensor.dtype, tuple(tensor.shape))
    if not cfg.conv_bias:
        specs[ZERO_CONV_BIAS] = (dtype, (cfg.conv_dim,))
    return specs


def _quantized_parameters(cfg: ModelConfig, bits: Optional[int]) -> dict[str, tuple[int, ...]]:
    """expected_parameters, plus the LM head's own (quantized) copy of a tied embedding when `bits`."""
    params = dict(expected_parameters(cfg))
    if bits and HEAD not in params:
        params[HEAD] = params["backbone.embedding.weight"]
    return params


class ExternalDataWriter:
    """Appends tensors to `folder/weights.data`; `protos` maps initializer name -> external TensorProto.
    The file's sha256 is computed while writing (`metadata()`), so it is never read back."""

    def __init__(self, folder: Path):
        self.path = folder / WEIGHTS_FILE
        self._file = open(self.path, "wb")
        self._sha256 = hashlib.sha256()
        self.offset = 0
        self.protos: dict[str, TensorProto] = {}

    def _write(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self._sha256.update(data)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
        pad = (-self.offset) % ALIGN
        self._write(b"\0" * pad)
        self.offset += pad
        self._write(memoryview(data))
        tp = TensorProto(name=name, data_type=TORCH_TO_ONNX[tensor.dtype], dims=list(tensor.shape))
        tp.data_location = TensorProto.EXTERNAL
        for key, value in (("location", WEIGHTS_FILE), ("offset", str(self.offset)), ("length", str(data.nbytes))):
            entry = tp.external_data.add()
            entry.key, entry.value = key, value
        self.protos[name] = tp
        self.offset += data.nbytes

    def metadata(self) -> dict[str, Any]:
        """The export-metadata entries that let `inspect` check weights.data."""
        return {"weights_bytes": self.offset, "weights_sha256": self._sha256.hexdigest()}

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


_STORAGE = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16, torch.uint8: np.uint8}


@dataclasses.dataclass(frozen=True)
class ExternalTensor:
    """One initializer's bytes: `length` bytes at `offset` of `file` (resolved, inside the export folder)."""

    name: str
    file: Path
    offset: int
    length: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def external_tensors(folder: Path, model: onnx.ModelProto) -> list[ExternalTensor]:
    """The external initializers of `model` (loaded without its data), each checked: location inside
    `folder`, a dtype we write, a length matching its dims, its bytes present in the file."""
    sizes: dict[Path, int] = {}
    return [_external_tensor(folder, init, sizes) for init in model.graph.initializer
            if init.data_location == TensorProto.EXTERNAL]


def _external_tensor(folder: Path, init: TensorProto, sizes: dict[Path, int]) -> ExternalTensor:
    ext = {e.key: e.value for e in init.external_data}
    where = f"{folder}: initializer {init.name!r}"
    if not ext.get("location"):
        raise MambaDeployError(f"{where}: external data without a location; re-export the model")
    file = resolve_inside(folder, ext["location"], f"{where}: external data location")
    if file not in sizes:
        if not file.is_file():
            raise MambaDeployError(f"{where}: {ext['location']} is missing (the export is incomplete)")
        sizes[file] = file.stat().st_size
    dtype = ONNX_TO_TORCH.get(init.data_type)
    try:
        offset, length = int(ext.get("offset", "0")), int(ext["length"])
    except (KeyError, ValueError):
        offset = length = -1
    if dtype is None or offset < 0 or length != math.prod(init.dims) * dtype.itemsize:
        raise MambaDeployError(f"{where}: corrupt external-data entry {ext} (dtype {init.data_type}, dims "
                               f"{list(init.dims)}); re-export the model")
    if offset + length > sizes[file]:
        raise MambaDeployError(f"{where}: bytes {offset}..{offset + length} lie beyond the end of {file.name} "
                               f"({sizes[file]} bytes): the file is truncated; re-export the model")
    return ExternalTensor(init.name, file, offset, length, dtype, tuple(init.dims))


def read_export_tensors(info: "ExportInfo") -> Iterator[tuple[str, torch.Tensor]]:
    """The reader of what ExternalDataWriter wrote: (name, tensor) for every initializer of an export's
    decode.onnx, read from weights.data at its external-data offset (memory-mapped, then copied); the
    weights of a quantized export come dequantized (float32, under their float names)."""
    bits = check_quantize(info.meta.get("quantize"))
    if not bits:
        return _read_tensors(info)
    in_features = {name: shape[-1] for name, shape in _quantized_parameters(info.config, bits).items()}
    return dequantized(_read_tensors(info), bits, in_features)


def _read_tensors(info: "ExportInfo") -> Iterator[tuple[str, torch.Tensor]]:
    for t in external_tensors(info.folder, info.load_graph("decode")):
        storage = np.dtype(_STORAGE[t.dtype])
        try:
            array = np.memmap(t.file, dtype=storage, mode="r", offset=t.offset, shape=(t.length // storage.itemsize,))
        except (OSError, ValueError) as exc:
            raise MambaDeployError(f"{t.file}: cannot read weights ({exc}); the export is incomplete or corrupt") \
                from None
        yield t.name, torch.from_numpy(np.array(array)).view(t.dtype).reshape(t.shape)


def checkpoint_dtype(files: list[Path]) -> torch.dtype:
    """The dtype of the first floating matrix in the checkpoint (1-D float32 params do not count)."""
    fallback = None
    for _, tensor in iter_tensors(files):
        if tensor.is_floating_point():
            if tensor.dim() >= 2:
                return tensor.dtype
            fallback = fallback or tensor.dtype
    if fallback is None:
        raise CheckpointError("the checkpoint holds no floating-point weights")
    return fallback


def write_weights(cfg: ModelConfig, files: list[Path], folder: Path, dtype: torch.dtype,
                  quantize: Optional[str] = None) -> tuple[dict[str, TensorProto], dict[str, Any]]:
    """Write every exported tensor into folder/weights.data (the projections and LM head quantized per
    `quantize`); returns the initializer protos by name and the file's size and sha256 (entries of the
    export metadata)."""
    bits = check_quantize(quantize)
    writer = ExternalDataWriter(folder)
    try:
        for key, tensor in iter_checked(cfg, files):
            if bits and is_quantized_weight(key):
                for entry in quantized_entries(key, tensor, bits):
                    writer.add(*entry)
            else:
                writer.add(*export_name_and_tensor(key, tensor, dtype))
            if bits and cfg.tie_embeddings and key == "backbone.embedding.weight":
                for entry in quantized_entries(HEAD, tensor, bits):
                    writer.add(*entry)
            del tensor
        if not cfg.conv_bias:
            writer.add(ZERO_CONV_BIAS, torch.zeros(cfg.conv_dim, dtype=dtype))
    finally:
        writer.close()
    return writer.protos, writer.metadata()
