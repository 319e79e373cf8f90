"""A float16 export's graph rewritten to compute in float32 on ONNX Runtime's CPU provider.

MLAS has no x86 float16 Gemm, so ONNX Runtime runs a float16 graph on the CPU in float32 behind Casts it
inserts around nearly every node (146 a Mamba1 decode step, 242 a Mamba2 one, for 130m shapes), slower than
a float32 export. `float32_compute` changes the graph the session is made from, not the export: each float16
initializer W feeds a `Cast(W) -> float32` that ONNX Runtime constant-folds at session creation (so the
weights stay float16 on disk and are converted once), every float16 type and Cast target inside becomes
float32, and the float16 graph inputs and outputs (conv states, logits) keep their type through one Cast at
the boundary each. The function bodies are dtype-generic (CastLike), so they follow. The native engine and
TensorRT never see this graph.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

F16, F32 = TensorProto.FLOAT16, TensorProto.FLOAT
_SUFFIX = ".f32"


def float32_compute(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` (loaded without external data) computing in float32; graph I/O types unchanged."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    renames: dict[str, str] = {}
    casts = []
    for init in graph.initializer:
        if init.data_type == F16:
            renames[init.name] = init.name + _SUFFIX
            casts.append(helper.make_node("Cast", [init.name], [init.name + _SUFFIX], to=F32,
                                          name=f"to_float32/{init.name}"))
    for vi in graph.input:
        if vi.type.tensor_type.elem_type == F16:
            renames[vi.name] = vi.name + _SUFFIX
            casts.append(helper.make_node("Cast", [vi.name], [vi.name + _SUFFIX], to=F32, name=f"to_float32/{vi.name}"))
    tail = []
    for vi in graph.output:
        if vi.type.tensor_type.elem_type == F16:
            inner = vi.name + _SUFFIX
            _rename_outputs(graph, vi.name, inner)
            tail.append(helper.make_node("Cast", [inner], [vi.name], to=F16, name=f"to_float16/{vi.name}"))
    _to_float32(graph, renames)
    nodes = [*casts, *graph.node, *tail]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # types change; ONNX Runtime infers them again
    return out


def _rename_outputs(graph: onnx.GraphProto, name: str, new: str) -> None:
    """The node that produces graph output `name` writes `new` instead; readers of `name` read `new`."""
    for node in graph.node:
        for i, o in enumerate(node.output):
            if o == name:
                node.output[i] = new
        for i, x in enumerate(node.input):
            if x == name:
                node.input[i] = new


def _to_float32(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """In place over `graph` and its subgraphs: inputs renamed, float16 Cast targets, Constants and types float32."""
    for node in graph.node:
        for i, x in enumerate(node.input):
            if x in renames:
                node.input[i] = renames[x]
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == F16:
                attr.i = F32
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == F16:
                attr.t.CopyFrom(_float32_tensor(attr.t))
            elif attr.type == onnx.AttributeProto.GRAPH:
                _subgraph_to_float32(attr.g, renames)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _subgraph_to_float32(g, renames)


def _subgraph_to_float32(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """A subgraph reads outer names (renamed) unless it defines them itself; its own float16 types become float32."""
    own = {vi.name for vi in graph.input} | {t.name for t in graph.initializer} | \
          {o for n in graph.node for o in n.output}
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.tensor_type.elem_type == F16:
            vi.type.tensor_type.elem_type = F32
    for t in graph.initializer:
        if t.data_type == F16:
            t.CopyFrom(_float32_tensor(t))
    _to_float32(graph, {k: v for k, v in renames.items() if k not in own})


def _float32_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    from onnx import numpy_helper

    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype("float32"), tensor.name)
