"""The op registry: one entry per custom op the exporter emits.

Each entry holds the op's reference implementation (torch), a naive sequential version
where one exists, and the names of its CUDA kernel entry point and TensorRT plugin.
The ONNX schema / function body and the CUDA binding are attached to the same entry by
the modules that implement them (`onnx_schema`, `onnx_function`, `cuda`), so that a test
can walk the registry and fail if any op lacks one of them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

DOMAIN = "mamba_deploy"
DOMAIN_VERSION = 1
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "mamba_deploy"


@dataclasses.dataclass
class OpSpec:
    name: str  # ONNX op type (domain mamba_deploy) and TensorRT plugin name
    reference: Callable[..., Any]
    kernel: str  # C ABI symbol in the kernel library
    sequential: Optional[Callable[..., Any]] = None  # naive per-token version, for testing `reference`
    onnx_schema: Any = None  # onnx.defs.OpSchema, attached by mamba_deploy.export
    onnx_function: Optional[Callable[..., Any]] = None  # builds the FunctionProto in standard ops
    cuda: Optional[Callable[..., Any]] = None  # torch-tensor binding of the kernel

    @property
    def plugin(self) -> str:
        return self.name


REGISTRY: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"op {spec.name} registered twice")
    REGISTRY[spec.name] = spec
    return spec


def get_op(name: str) -> OpSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no op {name!r} in the registry (have: {', '.join(sorted(REGISTRY))})") from None
