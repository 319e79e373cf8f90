"""The TensorRT path: IPluginV3 plugins (plugins/tensorrt), engine builder and runtime backend.

Importing this package never imports `tensorrt`; `build_engines` and `TensorRTEngine` do, lazily,
and raise MambaDeployError with install instructions when it is missing. The TensorRT-free pieces
(options, planning, prepare, metadata) are plain modules.
"""
from __future__ import annotations

from typing import Any

from ._loader import INSTALL_HINT, find_plugin_library, import_tensorrt, tensorrt_available
from .options import BuildOptions

__all__ = ["INSTALL_HINT", "BuildOptions", "TensorRTEngine", "build_engines", "find_plugin_library",
           "import_tensorrt", "tensorrt_available"]


def __getattr__(name: str) -> Any:  # lazy: builder/runtime pull in torch.cuda and, when used, tensorrt
    if name == "build_engines":
        from .builder import build_engines

        return build_engines
    if name == "TensorRTEngine":
        from .runtime import TensorRTEngine

        return TensorRTEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
