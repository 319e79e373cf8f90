"""The ONNX model of the onnxruntime Triton model: the export's prefill graph under Triton's names.

Why the prefill graph: it takes any seq >= 1 with the same state inputs and outputs as the decode graph
(docs/architecture.md "Graph I/O"), so one model serves prompt chunks and single decode tokens, all on
the same implicit state. (Implicit state cannot pass from one Triton model to another.)

The rewrite touches the graph only:
- each state input is renamed (`STATE_IN_conv_007`, see names.py) and feeds the graph's `past_conv_state.7`
  through Where(START, 0, state), so a sequence's first request starts from zeros even where Triton's own
  zero initial state is not applied;
- control inputs START, END, READY (int32 [batch, 1], 0 or 1) as Triton's sequence batcher sends them (the
  ONNX Runtime backend refuses a control input the model lacks); END and READY are accepted and unused:
  every row of a batch is independent, and Triton discards the rows of empty slots;
- each state output `STATE_OUT_conv_007` = Identity(present_conv_state.7).
The initializers keep their external-data entries (location `weights.data`, relative to the model file);
`place_external_data` puts that file beside model.onnx, as a hard link to the export's where possible.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import onnx
from onnx import TensorProto, helper

from ..checkpoint import resolve_inside
from ..errors import MambaDeployError
from ..export.artifact import ExportInfo
from .files import link_or_copy
from .names import END, INPUT_IDS, LOGITS, READY, START, StateEntry

_PREFIX = "triton/"  # names of the tensors and nodes we add


def triton_graph(model: onnx.ModelProto, states: Sequence[StateEntry]) -> onnx.ModelProto:
    """A copy of an exported graph (loaded without its weights) with Triton's inputs and outputs."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    taken = {n for node in graph.node for n in (node.name, *node.input, *node.output)}
    if any(n.startswith(_PREFIX) for n in taken):
        raise MambaDeployError(f"internal error: the graph already has names starting with {_PREFIX!r}")
    inputs, outputs = {v.name: v for v in graph.input}, {v.name: v for v in graph.output}
    head, tail = _start_nodes({len(inputs[e.graph_input].type.tensor_type.shape.dim) for e in states}), []
    new_inputs, new_outputs = [], []
    for kind in sorted({e.kind for e in states}):
        like = next(e.input_name for e in states if e.kind == kind)
        head.append(_node("CastLike", [f"{_PREFIX}zero", like], f"{_PREFIX}zero_{kind}"))
    for e in states:
        value = inputs[e.graph_input]
        rank = len(value.type.tensor_type.shape.dim)
        new_inputs.append(_renamed(value, e.input_name))
        head.append(_node("Where", [f"{_PREFIX}start_rank{rank}", f"{_PREFIX}zero_{e.kind}", e.input_name],
                          e.graph_input))
        new_outputs.append(_renamed(outputs[e.graph_output], e.output_name))
        tail.append(_node("Identity", [e.graph_output], e.output_name))
    controls = [helper.make_tensor_value_info(c, TensorProto.INT32, ["batch", 1]) for c in (START, END, READY)]
    nodes = [*head, *graph.node, *tail]
    del graph.node[:], graph.input[:], graph.output[:]
    graph.node.extend(nodes)
    graph.input.extend([inputs[INPUT_IDS], *controls, *new_inputs])
    graph.output.extend([outputs[LOGITS], *new_outputs])
    return out


def _start_nodes(ranks: set[int]) -> list[onnx.NodeProto]:
    """START [batch, 1] as a bool [batch, 1, 1(, 1)] per state rank, and a float zero."""
    nodes = [_node("Cast", [START], f"{_PREFIX}start", to=TensorProto.BOOL),
             _node("Constant", [], f"{_PREFIX}zero", value=helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]))]
    for rank in sorted(ranks):
        axes = helper.make_tensor("axes", TensorProto.INT64, [rank - 2], list(range(2, rank)))
        nodes += [_node("Constant", [], f"{_PREFIX}axes{rank}", value=axes),
                  _node("Unsqueeze", [f"{_PREFIX}start", f"{_PREFIX}axes{rank}"], f"{_PREFIX}start_rank{rank}")]
    return nodes


def _node(op: str, inputs: list[str], output: str, **attrs) -> onnx.NodeProto:
    name = output if output.startswith(_PREFIX) else f"{_PREFIX}{output}"
    return helper.make_node(op, inputs, [output], name=f"{name}/{op}", **attrs)


def _renamed(value: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    renamed = onnx.ValueInfoProto()
    renamed.CopyFrom(value)
    renamed.name = name
    return renamed


def place_external_data(info: ExportInfo, model: onnx.ModelProto, folder: Path, progress: bool = True,
                        copy: bool = False) -> str:
    """Put every external-data file `model` names (the export's weights.data) into `folder`, where the model
    file will lie; returns "linked" or "copied" (see files.link_or_copy)."""
    locations = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
    how = "linked"
    for location in locations:
        if Path(location).name != location or location in (".", ".."):
            raise MambaDeployError(f"{info.folder}: external data location {location!r} is not a file beside the "
                                   f"graph; re-export the model")
        source = resolve_inside(info.folder, location, "external data location")
        if link_or_copy(source, folder / location, progress, copy) == "copied":
            how = "copied"
    return how
