"""Custom Mamba ops: torch references, and the registry that gives each op its ONNX, kernel and plugin faces.

The one door to the CUDA kernel library is `ops._lib` (loaded lazily, on the first launch).
"""
from .attention import attention_ref, attention_sdpa, rotary_inv_freq, rotary_ref
from .causal_conv1d import causal_conv1d_ref, causal_conv1d_sequential, causal_conv1d_update_ref
from .chunk_scan import chunk_scan_ref, chunk_scan_sequential
from .norms import add_norm_ref, gated_rms_norm_ref, rms_norm_ref
from .registry import (DOMAIN, DOMAIN_VERSION, MIN_OPSET, PLUGIN_NAMESPACE, PLUGIN_VERSION, REGISTRY, OpSpec, get_op,
                       register_onnx_schemas)
from .selective_scan import selective_scan_ref, selective_scan_sequential
from .state_update import selective_state_update_ref

__all__ = [
    "DOMAIN", "DOMAIN_VERSION", "MIN_OPSET", "PLUGIN_NAMESPACE", "PLUGIN_VERSION", "REGISTRY", "OpSpec", "get_op",
    "register_onnx_schemas", "add_norm_ref", "attention_ref", "attention_sdpa", "rotary_inv_freq", "rotary_ref", "causal_conv1d_ref", "causal_conv1d_sequential",
    "causal_conv1d_update_ref", "chunk_scan_ref", "chunk_scan_sequential", "gated_rms_norm_ref",
    "rms_norm_ref", "selective_scan_ref", "selective_scan_sequential", "selective_state_update_ref",
]
