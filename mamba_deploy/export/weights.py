"""Stream checkpoint tensors into one external-data file shared by both graphs, and read them back.

Tensors are converted one at a time (peak memory: about the largest tensor), written at
4096-byte aligned offsets (so runtimes can mmap them) and referenced from the graphs by
TensorProtos that carry only `external_data` (location, offset, length): no proto ever holds the
weights, so models over 2 GB work.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import onnx
import torch
from onnx import TensorProto

from ..checkpoint import iter_checked, iter_tensors
from ..config import ModelConfig
from ..errors import CheckpointError, MambaDeployError

if TYPE_CHECKING:
    from .artifact import ExportInfo

WEIGHTS_FILE = "weights.data"
ALIGN = 4096
ZERO_CONV_BIAS = "zeros.conv_bias"  # stands in for the conv bias of `conv_bias: false` models
TORCH_TO_ONNX = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16,
                 torch.bfloat16: TensorProto.BFLOAT16}
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


class ExternalDataWriter:
    """Appends tensors to `folder/weights.data`; `protos` maps initializer name -> external TensorProto."""

    def __init__(self, folder: Path):
        self.path = folder / WEIGHTS_FILE
        self._file = open(self.path, "wb")
        self.offset = 0
        self.protos: dict[str, TensorProto] = {}

    def add(self, name: str, tensor: torch.Tensor) -> None:
        data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
        pad = (-self.offset) % ALIGN
        self._file.write(b"\0" * pad)
        self.offset += pad
        self._file.write(memoryview(data))
        tp = TensorProto(name=name, data_type=TORCH_TO_ONNX[tensor.dtype], dims=list(tensor.shape))
        tp.data_location = TensorProto.EXTERNAL
        for key, value in (("location", WEIGHTS_FILE), ("offset", str(self.offset)), ("length", str(data.nbytes))):
            entry = tp.external_data.add()
            entry.key, entry.value = key, value
        self.protos[name] = tp
        self.offset += data.nbytes

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


_STORAGE = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16}


def read_export_tensors(info: "ExportInfo") -> Iterator[tuple[str, torch.Tensor]]:
    """The reader of what ExternalDataWriter wrote: (name, tensor) for every initializer of an export's
    decode.onnx, read from weights.data at its external-data offset (memory-mapped, then copied)."""
    model = onnx.load(str(info.graph("decode")), load_external_data=False)
    for init in model.graph.initializer:
        ext = {e.key: e.value for e in init.external_data}
        if "location" not in ext:
            continue
        file = info.folder / ext["location"]
        dtype = ONNX_TO_TORCH[init.data_type]
        count = int(ext["length"]) // np.dtype(_STORAGE[dtype]).itemsize
        try:
            array = np.memmap(file, dtype=_STORAGE[dtype], mode="r", offset=int(ext.get("offset", 0)), shape=(count,))
        except (OSError, ValueError) as exc:
            raise MambaDeployError(f"{file}: cannot read weights ({exc}); the export is incomplete or corrupt") \
                from None
        yield init.name, torch.from_numpy(np.array(array)).view(dtype).reshape(tuple(init.dims))


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


def write_weights(cfg: ModelConfig, files: list[Path], folder: Path, dtype: torch.dtype) -> dict[str, TensorProto]:
    """Write every exported tensor into folder/weights.data; returns the initializer protos by name."""
    writer = ExternalDataWriter(folder)
    try:
        for key, tensor in iter_checked(cfg, files):
            writer.add(*export_name_and_tensor(key, tensor, dtype))
            del tensor
        if not cfg.conv_bias:
            writer.add(ZERO_CONV_BIAS, torch.zeros(cfg.conv_dim, dtype=dtype))
    finally:
        writer.close()
    return writer.protos
