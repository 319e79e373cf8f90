"""The op registry: one entry per custom op the exporter emits, holding all four faces of the op.

    reference   the torch semantics (`*_ref`), and a naive per-token version where one exists
    onnx        schema + standard-op function body + how the node is emitted (`OnnxOpDef`)
    kernel      the C entry point of the kernel library and its params struct (`_lib.Kernel`),
                with `cuda`, the torch-tensor binding that launches it
    plugin      the TensorRT plugin creator name (plugins/tensorrt/mdOps.h `kName`)

The exporter, the ONNX Runtime backend, the CUDA bindings and the loader read these entries; tests
check each face against the references, the kernel library's exported symbols and the plugin sources.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

from . import _lib, cuda, onnx_bodies
from .causal_conv1d import causal_conv1d_ref, causal_conv1d_sequential, causal_conv1d_update_ref
from .chunk_scan import chunk_scan_ref, chunk_scan_sequential
from .onnx_op import DOMAIN, DOMAIN_VERSION, MIN_OPSET, PLUGIN_NAMESPACE, PLUGIN_VERSION, OnnxOpDef
from .onnx_graph import GraphBuilder
from .selective_scan import selective_scan_ref, selective_scan_sequential
from .state_update import selective_state_update_ref

__all__ = ["DOMAIN", "DOMAIN_VERSION", "MIN_OPSET", "PLUGIN_NAMESPACE", "PLUGIN_VERSION", "REGISTRY", "OpSpec",
           "get_op", "register_onnx_schemas"]


@dataclasses.dataclass(frozen=True)
class OpSpec:
    name: str  # ONNX op type in domain mamba_deploy
    reference: Callable[..., Any]
    onnx: OnnxOpDef
    kernel: _lib.Kernel
    cuda: Callable[..., Any]  # the reference's signature + keyword-only out= / state_out=
    plugin: str
    sequential: Optional[Callable[..., Any]] = None  # naive per-token version, for testing `reference`

    @property
    def onnx_schema(self) -> Any:
        """The onnx.defs.OpSchema, registered with onnx on first use."""
        import onnx

        if not onnx.defs.has(self.name, DOMAIN):
            onnx.defs.register_schema(self.onnx.schema(self.name))
        return onnx.defs.get_schema(self.name, DOMAIN_VERSION, DOMAIN)

    def onnx_function(self, attrs: dict[str, Any], has_optional: bool, opset: int = MIN_OPSET,
                      static: Optional[dict[str, Any]] = None) -> Any:
        """The model-local FunctionProto for these attribute values, optional-input presence and model facts
        (`onnx.static`, e.g. {"state_rank": 4})."""
        return self.onnx.function(self.name, attrs, has_optional, opset, static)

    def emit(self, g: GraphBuilder, inputs: list[Optional[str]], attrs: dict[str, Any], plugin: bool,
             static: Optional[dict[str, Any]] = None) -> Any:
        """The op in graph `g`: a custom node (plugin=True) or its standard-op body inlined."""
        return self.onnx.emit_node(g, self.name, inputs, attrs, plugin, static)


_ACT = {"activation": ("silu", "'silu' (= 'swish') or 'none'")}
_DT = {"dt_softplus": (1, "apply softplus to dt + dt_bias"),
       "dt_limit_lo": (0.0, "clamp dt below (applied when > 0)"),
       "dt_limit_hi": (math.inf, "clamp dt above (applied when finite)")}
_CONV_PARAMS = [("weight", "T", "(dim, width)"), ("bias", "T", "(dim,)"), ("conv_state", "T", "(batch, dim, width - 1)")]
_CONV_OUT = [("y", "T", "like x"), ("present_conv_state", "T", "(batch, dim, width - 1)")]
_SSM_PARAMS = [("A", "F", "-exp(A_log)"), ("B", "T", "input matrix"), ("C", "T", "output matrix"), ("D", "F", "skip")]

_ENTRIES = [
    OpSpec(
        name="MambaCausalConv1d",
        reference=causal_conv1d_ref, sequential=causal_conv1d_sequential,
        onnx=OnnxOpDef([("x", "T", "(batch, dim, seqlen)"), *_CONV_PARAMS], _CONV_OUT, _ACT,
                       onnx_bodies.emit_causal_conv1d, doc="Depthwise causal conv1d over a sequence from a past state."),
        kernel=_lib.Kernel("md_causal_conv1d_fwd", _lib.CausalConv1dParams),
        cuda=cuda.causal_conv1d,
        plugin="MambaCausalConv1d"),
    OpSpec(
        name="MambaCausalConv1dUpdate",
        reference=causal_conv1d_update_ref,
        onnx=OnnxOpDef([("x", "T", "(batch, dim)"), *_CONV_PARAMS], _CONV_OUT, _ACT,
                       onnx_bodies.emit_causal_conv1d_update, doc="Depthwise causal conv1d for one token."),
        kernel=_lib.Kernel("md_causal_conv1d_update", _lib.CausalConv1dParams),
        cuda=cuda.causal_conv1d_update,
        plugin="MambaCausalConv1dUpdate"),
    OpSpec(
        name="MambaSelectiveScan",
        reference=selective_scan_ref, sequential=selective_scan_sequential,
        onnx=OnnxOpDef(
            [("u", "T", "(batch, dim, seqlen)"), ("delta", "T", "(batch, dim, seqlen), before bias"), *_SSM_PARAMS,
             ("delta_bias", "F", "(dim,)"), ("ssm_state", "S", "(batch, dim, dstate)"),
             ("z", "T", "(batch, dim, seqlen) gate")],
            [("y", "T", "(batch, dim, seqlen)"), ("present_ssm_state", "S", "(batch, dim, dstate)")],
            {"delta_softplus": (1, "apply softplus to delta + delta_bias")},
            onnx_bodies.emit_selective_scan, optional_last=True, doc="Mamba1 selective scan from an initial state."),
        kernel=_lib.Kernel("md_selective_scan_fwd", _lib.SsmParams, workspace=True),
        cuda=cuda.selective_scan,
        plugin="MambaSelectiveScan"),
    OpSpec(
        name="MambaSelectiveStateUpdate",
        reference=selective_state_update_ref,
        onnx=OnnxOpDef(
            [("state", "S", "(batch, dim, dstate) or (batch, nheads, headdim, dstate)"), ("x", "T", "input"),
             ("dt", "T", "before bias"), *_SSM_PARAMS, ("dt_bias", "F", "bias of dt"), ("z", "T", "gate")],
            [("y", "T", "like x"), ("present_state", "S", "like state")], _DT,
            onnx_bodies.emit_state_update, optional_last=True, static=("state_rank",),
            doc="One recurrent step of the selective SSM (Mamba1 or Mamba2 form)."),
        kernel=_lib.Kernel("md_selective_state_update", _lib.SsmParams),
        cuda=cuda.selective_state_update,
        plugin="MambaSelectiveStateUpdate"),
    OpSpec(
        name="Mamba2ChunkScan",
        reference=chunk_scan_ref, sequential=chunk_scan_sequential,
        onnx=OnnxOpDef(
            [("x", "T", "(batch, seqlen, nheads, headdim)"), ("dt", "T", "(batch, seqlen, nheads)"), *_SSM_PARAMS,
             ("dt_bias", "F", "(nheads,)"), ("initial_state", "S", "(batch, nheads, headdim, dstate)"),
             ("z", "T", "(batch, seqlen, nheads, headdim) gate")],
            [("y", "T", "like x"), ("final_state", "S", "(batch, nheads, headdim, dstate)")],
            {"chunk_size": (256, "chunk length (a tuning hint; no effect on results)"), **_DT},
            onnx_bodies.emit_chunk_scan, optional_last=True, doc="Mamba2 SSD scan from an initial state."),
        kernel=_lib.Kernel("md_mamba2_chunk_scan_fwd", _lib.SsmParams, workspace=True),
        cuda=cuda.chunk_scan,
        plugin="Mamba2ChunkScan"),
]

REGISTRY: dict[str, OpSpec] = {}
for _spec in _ENTRIES:
    if _spec.name in REGISTRY:
        raise ValueError(f"op {_spec.name} registered twice")
    REGISTRY[_spec.name] = _spec
    _lib.declare(_spec.kernel, op=_spec.name)


def get_op(name: str) -> OpSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no op {name!r} in the registry (have: {', '.join(sorted(REGISTRY))})") from None


def register_onnx_schemas() -> None:
    """Make every op's schema known to onnx (checker, shape inference); idempotent."""
    for spec in REGISTRY.values():
        spec.onnx_schema
