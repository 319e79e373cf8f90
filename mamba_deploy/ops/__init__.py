"""Custom Mamba ops: references, registry, and (attached elsewhere) ONNX and CUDA implementations."""
from .causal_conv1d import causal_conv1d_ref, causal_conv1d_sequential, causal_conv1d_update_ref
from .chunk_scan import chunk_scan_ref, chunk_scan_sequential
from .norms import add_norm_ref, gated_rms_norm_ref
from .registry import DOMAIN, DOMAIN_VERSION, PLUGIN_NAMESPACE, PLUGIN_VERSION, REGISTRY, OpSpec, get_op
from .selective_scan import selective_scan_ref, selective_scan_sequential
from .state_update import selective_state_update_ref

__all__ = [
    "DOMAIN", "DOMAIN_VERSION", "PLUGIN_NAMESPACE", "PLUGIN_VERSION", "REGISTRY", "OpSpec", "get_op",
    "add_norm_ref", "causal_conv1d_ref", "causal_conv1d_sequential", "causal_conv1d_update_ref",
    "chunk_scan_ref", "chunk_scan_sequential", "gated_rms_norm_ref", "selective_scan_ref",
    "selective_scan_sequential", "selective_state_update_ref",
]
from . import cuda as _cuda  # noqa: E402,F401  (attaches REGISTRY[...].cuda; loads no library)
from . import onnx_defs as _onnx_defs  # noqa: E402,F401  (attaches REGISTRY[...].onnx_schema / onnx_function)
