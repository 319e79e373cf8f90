"""Registers the TensorRT runtime (mamba_deploy.tensorrt.runtime) as backend "tensorrt".

Importing this module does not import `tensorrt`: loading the backend does, and raises
MambaDeployError with install instructions when TensorRT is missing."""
from __future__ import annotations

from typing import Any

from ...export.artifact import ExportInfo
from ..backend import Backend, register_backend


def _load(info: ExportInfo, **options: Any) -> Backend:
    from ...tensorrt.runtime import TensorRTBackend

    return TensorRTBackend(info, **options)


def _available(info: ExportInfo) -> bool:
    from ...tensorrt._loader import tensorrt_available

    if not tensorrt_available():
        return False
    from ...tensorrt.runtime import available

    return available(info)


register_backend("tensorrt", _load, _available)
