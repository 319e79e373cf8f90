"""ONNX export: prefill and decode graphs, shared external weights, metadata (docs/architecture.md, "Export artifact")."""
from .exporter import ExportOptions, export_model

__all__ = ["ExportOptions", "export_model"]
