"""ONNX export: prefill and decode graphs, shared external weights, metadata (DESIGN §3)."""
from __future__ import annotations

from typing import Any

__all__ = ["ExportOptions", "export_model"]


def __getattr__(name: str) -> Any:  # lazy, so that mamba_deploy.ops.onnx_defs can import .builder
    if name in __all__:
        from . import exporter
        return getattr(exporter, name)
    raise AttributeError(name)
