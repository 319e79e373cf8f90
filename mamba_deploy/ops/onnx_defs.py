"""ONNX schemas and standard-op function bodies of the custom Mamba ops (domain `mamba_deploy`, version 1).

This table is the contract for the TensorRT plugins (plugin name = op type, plugin_version "1",
plugin_namespace "mamba_deploy"). T: float32 | float16 | bfloat16 (the model dtype); S: the SSM
state dtype (float32 | T); F: float32 only. B = batch, L = sequence length, K = conv width, D =
channels, N = d_state, H = heads, P = headdim, G = groups. All math is float32; outputs are cast back.

| op | inputs | outputs | attributes |
| --- | --- | --- | --- |
| MambaCausalConv1d | x (B,D,L) T, weight (D,K) T, bias (D) T, conv_state (B,D,K-1) T | y (B,D,L) T, present_conv_state (B,D,K-1) T | activation: "silu" or "none" |
| MambaCausalConv1dUpdate | x (B,D) T, weight (D,K) T, bias (D) T, conv_state (B,D,K-1) T | y (B,D) T, present_conv_state (B,D,K-1) T | activation |
| MambaSelectiveScan | u (B,D,L) T, delta (B,D,L) T, A (D,N) F, B (B,N,L) T, C (B,N,L) T, D (D) F, delta_bias (D) F, ssm_state (B,D,N) S, z (B,D,L) T optional | y (B,D,L) T, present_ssm_state (B,D,N) S | delta_softplus: int (1) |
| MambaSelectiveStateUpdate | state S, x T, dt T, A F, B T, C T, D F, dt_bias F, z T optional (Mamba1: state (B,D,N), x/z/dt (B,D), A (D,N), B/C (B,N), D/dt_bias (D); Mamba2: state (B,H,P,N), x/z (B,H,P), dt (B,H), A/D/dt_bias (H), B/C (B,G,N)) | y like x, present_state like state | dt_softplus: int (1), dt_limit_lo: float (0), dt_limit_hi: float (inf) |
| Mamba2ChunkScan | x (B,L,H,P) T, dt (B,L,H) T, A (H) F, B (B,L,G,N) T, C (B,L,G,N) T, D (H) F, dt_bias (H) F, initial_state (B,H,P,N) S, z (B,L,H,P) T optional | y (B,L,H,P) T, final_state (B,H,P,N) S | chunk_size: int (256, a tuning hint), dt_softplus, dt_limit_lo, dt_limit_hi |

Every node also carries plugin_version="1" and plugin_namespace="mamba_deploy" (strings).
Semantics are those of the torch references in this package (`causal_conv1d_ref`,
`causal_conv1d_update_ref`, `selective_scan_ref`, `selective_state_update_ref`, `chunk_scan_ref`):
dt <- softplus(dt + dt_bias) when dt_softplus, clamped to [lo, hi] when lo > 0 or hi finite;
h <- exp(dt*A)*h + dt*B*x; y <- C.h + D*x; y <- y*silu(z) when z is given. The state update takes
the Mamba1 or Mamba2 form by the state's rank; B/C groups are repeated over consecutive heads.

Function bodies: the scans are `LinearAttention(update_rule="gated", scale=1.0)` (opset 27) with the
(batch, channel/head) pairs folded into the batch and one head each: Mamba1 as per-key-dimension decay
(key = B, query = C, value = delta*u, d_v = 1), Mamba2 as per-head decay (key = B, query = C,
value = dt*x, state transposed to (.., N, P)). The conv is Gather-over-windows + ReduceSum, because
ONNX Runtime 1.32 has no kernel for the standard `CausalConvWithState`. A body is built per model for
the attribute values and optional inputs that model uses (`build_function`); shapes stay symbolic.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import onnx
from onnx import AttributeProto, FunctionProto, TensorProto, helper
from onnx.defs import OpSchema

from ..export.builder import INT64_MAX, GraphBuilder
from .registry import DOMAIN, DOMAIN_VERSION, PLUGIN_NAMESPACE, PLUGIN_VERSION, REGISTRY

MIN_OPSET = 27  # LinearAttention
F32 = TensorProto.FLOAT
_T_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]


@dataclasses.dataclass(frozen=True)
class OnnxOpDef:
    """One op's ONNX signature. inputs/outputs: (name, type param, doc); the last input may be optional."""

    name: str
    inputs: list[tuple[str, str, str]]
    outputs: list[tuple[str, str, str]]
    attributes: dict[str, tuple[int, Any, str]]  # name -> (AttributeProto type, default, doc)
    emit: Callable[..., tuple[str, str]]  # (g, *input names, **attrs) -> (output names) in standard ops
    optional_last: bool = False
    doc: str = ""

    def schema(self) -> OpSchema:
        def param(i, entry, optional=False):
            name, type_str, doc = entry
            option = OpSchema.FormalParameterOption.Optional if optional else OpSchema.FormalParameterOption.Single
            return OpSchema.FormalParameter(name, type_str, doc, param_option=option)

        inputs = [param(i, e, self.optional_last and i == len(self.inputs) - 1) for i, e in enumerate(self.inputs)]
        attrs = [OpSchema.Attribute(n, helper.make_attribute(n, d), doc) for n, (_, d, doc) in self.all_attributes().items()]
        schema = OpSchema(self.name, DOMAIN, DOMAIN_VERSION, self.doc, inputs=inputs,
                          outputs=[param(i, e) for i, e in enumerate(self.outputs)],
                          type_constraints=[("T", _T_TYPES, "model dtype"), ("S", _T_TYPES, "SSM state dtype"),
                                            ("F", ["tensor(float)"], "float32 parameters")],
                          attributes=attrs)
        schema.set_type_and_shape_inference_function(self._infer)
        return schema

    def all_attributes(self) -> dict[str, tuple[int, Any, str]]:
        return {"plugin_version": (AttributeProto.STRING, PLUGIN_VERSION, "TensorRT plugin version"),
                "plugin_namespace": (AttributeProto.STRING, PLUGIN_NAMESPACE, "TensorRT plugin namespace"),
                **self.attributes}

    def defaults(self) -> dict[str, Any]:
        return {name: default for name, (_, default, _) in self.attributes.items()}

    def _infer(self, ctx) -> None:
        """Output 0 has the type and shape of input 0 (x / u); output 1 those of the state input."""
        state_index = next(i for i, (n, _, _) in enumerate(self.inputs) if "state" in n)
        for out, src in ((0, 0 if self.inputs[0][0] != "state" else 1), (1, state_index)):
            ctx.set_output_type(out, ctx.get_input_type(src))


# ---------------------------------------------------------------- standard-op bodies (all math float32)

def _f32(g: GraphBuilder, x: str) -> str:
    return g("Cast", x, to=F32)


def _silu(g: GraphBuilder, x: str) -> str:
    return g("Mul", x, g("Sigmoid", x))


def _gate(g: GraphBuilder, y: str, z: Optional[str]) -> str:
    return y if z is None else g("Mul", y, _silu(g, _f32(g, z)))


def _discretize_dt(g: GraphBuilder, dt: str, dt_bias: str, softplus: int, lo: float, hi: float) -> str:
    """dt, dt_bias broadcastable -> float32 clamp(softplus(dt + dt_bias), lo, hi) as the references."""
    out = g("Add", _f32(g, dt), dt_bias)
    if softplus:
        out = g("Softplus", out)
    if lo > 0.0 or math.isfinite(hi):
        out = g("Clip", out, g.f32(lo), g.f32(hi))
    return out


def emit_causal_conv1d(g: GraphBuilder, x: str, weight: str, bias: str, conv_state: str,
                       activation: str = "silu") -> tuple[str, str]:
    """x: (batch, dim, seqlen) -> y like x, new state (batch, dim, width - 1): windows gathered, summed."""
    full = g("Concat", g("CastLike", conv_state, x), x, axis=2)  # (batch, dim, width - 1 + seqlen)
    width, seqlen = g.dim(weight, 1), g.dim(x, 2)
    zero, one = g.const(0), g.const(1)
    steps = g("Range", zero, g("Squeeze", seqlen), one)
    taps = g("Range", zero, g("Squeeze", width), one)
    index = g("Add", g.unsqueeze(steps, 1), g.unsqueeze(taps, 0))  # (seqlen, width): t + k
    windows = g("Gather", _f32(g, full), index, axis=2)  # (batch, dim, seqlen, width)
    y = g("ReduceSum", g("Mul", windows, g.unsqueeze(_f32(g, weight), 1)), g.const([3]), keepdims=0)
    y = g("Add", y, g.unsqueeze(_f32(g, bias), 1))
    if activation in ("silu", "swish"):
        y = _silu(g, y)
    new_state = g("Slice", full, g("Sub", one, width), g.const([INT64_MAX]), g.const([2]))
    return g("CastLike", y, x), g("CastLike", new_state, conv_state)


def emit_causal_conv1d_update(g: GraphBuilder, x: str, weight: str, bias: str, conv_state: str,
                              activation: str = "silu") -> tuple[str, str]:
    """x: (batch, dim) -> y: (batch, dim), new state."""
    y, new_state = emit_causal_conv1d(g, g.unsqueeze(x, 2), weight, bias, conv_state, activation)
    return g("Squeeze", y, g.const([2])), new_state


def _linear_attention(g: GraphBuilder, query: str, key: str, value: str, state: str, decay: str) -> tuple[str, str]:
    """Gated LinearAttention, one head per (folded) batch row: S <- exp(decay)*S + k v^T; o = q^T S."""
    return g("LinearAttention", query, key, value, state, decay, outputs=2, update_rule="gated",
             q_num_heads=1, kv_num_heads=1, scale=1.0)


def emit_selective_scan(g: GraphBuilder, u: str, delta: str, A: str, B: str, C: str, D: str, delta_bias: str,
                        ssm_state: str, z: Optional[str] = None, delta_softplus: int = 1) -> tuple[str, str]:
    """Mamba1 scan as LinearAttention over (batch * dim) rows, d_k = dstate, d_v = 1, per-key decay."""
    seqlen, dstate = g.dim(u, 2), g.dim(A, 1)
    dt = _discretize_dt(g, delta, g.unsqueeze(delta_bias, 1), delta_softplus, 0.0, math.inf)  # (b, d, l)
    u32 = _f32(g, u)
    decay4 = g("Mul", g.unsqueeze(dt, 3), g.unsqueeze(A, 1))  # (batch, dim, seqlen, dstate)
    rows = g.shape(-1, seqlen, dstate)

    def per_row(t):  # (batch, dstate, seqlen) -> (batch * dim, seqlen, dstate), shared over channels
        t = g.unsqueeze(g("Transpose", _f32(g, t), perm=[0, 2, 1]), 1)
        return g("Reshape", g("Expand", t, g("Shape", decay4)), rows)

    value = g.reshape(g("Mul", dt, u32), -1, seqlen, 1)
    state = g.reshape(_f32(g, ssm_state), -1, 1, dstate, 1)
    out, new_state = _linear_attention(g, per_row(C), per_row(B), value, state, g("Reshape", decay4, rows))
    y = g("Add", g("Reshape", out, g("Shape", u)), g("Mul", u32, g.unsqueeze(D, 1)))
    y = _gate(g, y, z)
    return g("CastLike", y, u), g("CastLike", g("Reshape", new_state, g("Shape", ssm_state)), ssm_state)


def _heads_per_group(g: GraphBuilder, nheads: str, grouped: str, group_axis: int) -> str:
    return g("Div", nheads, g.dim(grouped, group_axis))


def emit_chunk_scan(g: GraphBuilder, x: str, dt: str, A: str, B: str, C: str, D: str, dt_bias: str,
                    initial_state: str, z: Optional[str] = None, chunk_size: int = 256, dt_softplus: int = 1,
                    dt_limit_lo: float = 0.0, dt_limit_hi: float = math.inf) -> tuple[str, str]:
    """Mamba2 SSD scan as LinearAttention over (batch * heads) rows, d_k = dstate, d_v = headdim."""
    batch, seqlen, nheads, headdim = (g.dim(x, i) for i in range(4))
    ngroups, dstate = g.dim(B, 2), g.dim(B, 3)
    dtf = _discretize_dt(g, dt, dt_bias, dt_softplus, dt_limit_lo, dt_limit_hi)  # (batch, seqlen, nheads)
    x32 = _f32(g, x)
    value = g("Transpose", g("Mul", x32, g.unsqueeze(dtf, 3)), perm=[0, 2, 1, 3])  # (b, h, l, p)
    value = g.reshape(value, -1, seqlen, headdim)
    decay = g.reshape(g("Transpose", g("Mul", dtf, A), perm=[0, 2, 1]), -1, seqlen, 1)
    per_head = g.shape(batch, ngroups, _heads_per_group(g, nheads, B, 2), seqlen, dstate)

    def per_row(t):  # (batch, seqlen, ngroups, dstate) -> (batch * nheads, seqlen, dstate)
        t = g.unsqueeze(g("Transpose", _f32(g, t), perm=[0, 2, 1, 3]), 2)
        return g.reshape(g("Expand", t, per_head), -1, seqlen, dstate)

    state = g.reshape(g("Transpose", _f32(g, initial_state), perm=[0, 1, 3, 2]), -1, 1, dstate, headdim)
    out, new_state = _linear_attention(g, per_row(C), per_row(B), value, state, decay)
    y = g("Transpose", g.reshape(out, batch, nheads, seqlen, headdim), perm=[0, 2, 1, 3])
    y = _gate(g, g("Add", y, g("Mul", x32, g.unsqueeze(D, 1))), z)
    new_state = g("Transpose", g.reshape(new_state, batch, nheads, dstate, headdim), perm=[0, 1, 3, 2])
    return g("CastLike", y, x), g("CastLike", new_state, initial_state)


def emit_state_update(g: GraphBuilder, state: str, x: str, dt: str, A: str, B: str, C: str, D: str, dt_bias: str,
                      z: Optional[str] = None, dt_softplus: int = 1, dt_limit_lo: float = 0.0,
                      dt_limit_hi: float = math.inf) -> tuple[str, str]:
    """One step, both forms: viewed as state (batch, H, P, N) with Mamba1 as H = dim, P = 1, G = 1."""
    batch, nheads, dstate = g.dim(state, 0), g.dim(state, 1), g.dim(state, -1)
    dt4 = g.unsqueeze(_discretize_dt(g, dt, dt_bias, dt_softplus, dt_limit_lo, dt_limit_hi), 2, 3)
    s4 = g.reshape(_f32(g, state), batch, nheads, -1, dstate)
    decay = g("Exp", g("Mul", dt4, g.reshape(A, 1, nheads, 1, -1)))  # (batch, H, 1, N or 1)
    x3 = g.reshape(_f32(g, x), batch, nheads, -1)  # (batch, H, P)

    def per_head(t):  # (batch, [G,] N) -> (batch, H, 1, N)
        t = g.unsqueeze(g.reshape(_f32(g, t), batch, -1, dstate), 2)
        heads = g.shape(batch, g.dim(t, 1), _heads_per_group(g, nheads, t, 1), dstate)
        return g.reshape(g("Expand", t, heads), batch, nheads, 1, dstate)

    update = g("Mul", g("Mul", dt4, g.unsqueeze(x3, 3)), per_head(B))
    s4 = g("Add", g("Mul", s4, decay), update)
    y = g("ReduceSum", g("Mul", s4, per_head(C)), g.const([3]), keepdims=0)  # (batch, H, P)
    y = g("Add", y, g("Mul", x3, g.reshape(D, 1, nheads, 1)))
    y = g.reshape(_gate(g, y, None if z is None else g.reshape(z, batch, nheads, -1)), g("Shape", x))
    return g("CastLike", y, x), g("CastLike", g("Reshape", s4, g("Shape", state)), state)


# ---------------------------------------------------------------- the op table

_ACT = {"activation": (AttributeProto.STRING, "silu", "'silu' (= 'swish') or 'none'")}
_DT = {"dt_softplus": (AttributeProto.INT, 1, "apply softplus to dt + dt_bias"),
       "dt_limit_lo": (AttributeProto.FLOAT, 0.0, "clamp dt below (applied when > 0)"),
       "dt_limit_hi": (AttributeProto.FLOAT, math.inf, "clamp dt above (applied when finite)")}
_CONV_IN = [("x", "T", "input"), ("weight", "T", "(dim, width)"), ("bias", "T", "(dim,)"),
            ("conv_state", "T", "(batch, dim, width - 1)")]
_CONV_OUT = [("y", "T", "like x"), ("present_conv_state", "T", "(batch, dim, width - 1)")]
_SSM_PARAMS = [("A", "F", "-exp(A_log)"), ("B", "T", "input matrix"), ("C", "T", "output matrix"),
               ("D", "F", "skip")]

ONNX_OPS: dict[str, OnnxOpDef] = {d.name: d for d in [
    OnnxOpDef("MambaCausalConv1d", [("x", "T", "(batch, dim, seqlen)"), *_CONV_IN[1:]], _CONV_OUT, _ACT,
              emit_causal_conv1d, doc="Depthwise causal conv1d over a sequence from a past state."),
    OnnxOpDef("MambaCausalConv1dUpdate", [("x", "T", "(batch, dim)"), *_CONV_IN[1:]], _CONV_OUT, _ACT,
              emit_causal_conv1d_update, doc="Depthwise causal conv1d for one token."),
    OnnxOpDef("MambaSelectiveScan",
              [("u", "T", "(batch, dim, seqlen)"), ("delta", "T", "(batch, dim, seqlen), before bias"),
               *_SSM_PARAMS, ("delta_bias", "F", "(dim,)"), ("ssm_state", "S", "(batch, dim, dstate)"),
               ("z", "T", "(batch, dim, seqlen) gate")],
              [("y", "T", "(batch, dim, seqlen)"), ("present_ssm_state", "S", "(batch, dim, dstate)")],
              {"delta_softplus": (AttributeProto.INT, 1, "apply softplus to delta + delta_bias")},
              emit_selective_scan, optional_last=True, doc="Mamba1 selective scan from an initial state."),
    OnnxOpDef("MambaSelectiveStateUpdate",
              [("state", "S", "(batch, dim, dstate) or (batch, nheads, headdim, dstate)"), ("x", "T", "input"),
               ("dt", "T", "before bias"), *_SSM_PARAMS, ("dt_bias", "F", "bias of dt"), ("z", "T", "gate")],
              [("y", "T", "like x"), ("present_state", "S", "like state")], _DT, emit_state_update,
              optional_last=True, doc="One recurrent step of the selective SSM (Mamba1 or Mamba2 form)."),
    OnnxOpDef("Mamba2ChunkScan",
              [("x", "T", "(batch, seqlen, nheads, headdim)"), ("dt", "T", "(batch, seqlen, nheads)"),
               *_SSM_PARAMS, ("dt_bias", "F", "(nheads,)"), ("initial_state", "S", "(batch, nheads, headdim, dstate)"),
               ("z", "T", "(batch, seqlen, nheads, headdim) gate")],
              [("y", "T", "like x"), ("final_state", "S", "(batch, nheads, headdim, dstate)")],
              {"chunk_size": (AttributeProto.INT, 256, "chunk length (a tuning hint; no effect on results)"), **_DT},
              emit_chunk_scan, optional_last=True, doc="Mamba2 SSD scan from an initial state."),
]}


def build_function(op_name: str, attrs: dict[str, Any], has_optional: bool, opset: int = MIN_OPSET) -> FunctionProto:
    """The model-local FunctionProto of `op_name`, specialised to `attrs` and to the optional input's presence."""
    op = ONNX_OPS[op_name]
    names = [n for n, _, _ in op.inputs]
    if op.optional_last and not has_optional:
        names = names[:-1]
    g = GraphBuilder(prefix="f_")
    kwargs = {**op.defaults(), **{k: v for k, v in attrs.items() if k in op.attributes}}
    outputs = op.emit(g, *names, **kwargs)
    renamed = [n for n, _, _ in op.outputs]
    g.nodes.extend(helper.make_node("Identity", [src], [dst]) for src, dst in zip(outputs, renamed))
    return helper.make_function(DOMAIN, op_name, names, renamed, g.nodes,
                                opset_imports=[helper.make_opsetid("", opset)],
                                attributes=list(op.all_attributes()))


def emit_node(g: GraphBuilder, op_name: str, inputs: list[Optional[str]], attrs: dict[str, Any],
              plugin: bool) -> tuple[str, str]:
    """One op in the graph: a custom node (plugin flavour) or its body inlined in standard ops."""
    op = ONNX_OPS[op_name]
    if op.optional_last and len(inputs) == len(op.inputs) and inputs[-1] is None:
        inputs = inputs[:-1]
    if not plugin:
        return op.emit(g, *inputs, **attrs)
    return g(op_name, *inputs, outputs=len(op.outputs), domain=DOMAIN, plugin_version=PLUGIN_VERSION,
             plugin_namespace=PLUGIN_NAMESPACE, **{**op.defaults(), **attrs})


def register_onnx_ops() -> None:
    """Register the schemas with onnx (once) and attach schema + function builder to the op registry."""
    for name, op in ONNX_OPS.items():
        if not onnx.defs.has(name, DOMAIN):
            onnx.defs.register_schema(op.schema())
        spec = REGISTRY[name]
        spec.onnx_schema = onnx.defs.get_schema(name, DOMAIN_VERSION, DOMAIN)
        spec.onnx_function = lambda attrs, has_optional, opset=MIN_OPSET, _n=name: build_function(
            _n, attrs, has_optional, opset)


register_onnx_ops()
