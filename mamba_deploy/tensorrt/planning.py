"""Pure planning for the TensorRT engines (no TensorRT needed): the graphs' I/O signature,
optimisation-profile shapes, and the map between ONNX I/O names, engine tensors and state buffers.

The exported graphs (docs/architecture.md "Graph I/O") have inputs `input_ids` [batch, seq|1], `past_conv_state.{i}`,
`past_ssm_state.{i}` [batch, ...fixed] and outputs `logits`, `present_conv_state.{i}`,
`present_ssm_state.{i}`. Every symbolic dim must be `batch` or `seq`: a profile gives each input
min/opt/max shapes from the build limits.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Sequence, Union

from ..errors import MambaDeployError

Dim = Union[int, str]
Shape = tuple[int, ...]
PAST_PREFIX, PRESENT_PREFIX = "past_", "present_"
_STATE_NAME = re.compile(r"^(past|present)_(conv|ssm)_state\.(\d+)$")


@dataclasses.dataclass(frozen=True)
class TensorSig:
    name: str
    dtype: str  # numpy-style name: int64, float32, float16, bfloat16
    dims: tuple[Dim, ...]  # ints, or the symbolic names of dynamic dims


@dataclasses.dataclass(frozen=True)
class GraphIO:
    """The I/O signature of one exported graph."""

    kind: str  # "prefill" | "decode"
    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]

    def input(self, name: str) -> TensorSig:
        for t in self.inputs:
            if t.name == name:
                return t
        raise MambaDeployError(f"{self.kind} graph has no input {name!r}")


_ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 7: "int64", 6: "int32"}


def read_graph_io(path: Union[str, Path], kind: str) -> GraphIO:
    """The I/O signature of an exported ONNX graph, read without loading its external weights."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / OSError / ValueError for bad files
        raise MambaDeployError(f"{path}: cannot read the ONNX graph ({type(exc).__name__}: {exc})") from None

    def sig(value: "onnx.ValueInfoProto") -> TensorSig:
        t = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim)
        return TensorSig(value.name, _ONNX_DTYPES.get(t.elem_type, f"onnx:{t.elem_type}"), dims)

    initializers = {i.name for i in model.graph.initializer}
    return GraphIO(kind, tuple(sig(v) for v in model.graph.input if v.name not in initializers),
                   tuple(sig(v) for v in model.graph.output))


@dataclasses.dataclass(frozen=True)
class ProfileShapes:
    """min/opt/max of one input in an optimisation profile."""

    min: Shape
    opt: Shape
    max: Shape


def plan_profile(io: GraphIO, max_batch: int, max_seq: int, opt_seq: int, opt_batch: int = 1
                 ) -> dict[str, ProfileShapes]:
    """Profile shapes for every input of `io`: batch in [1, max_batch] (opt opt_batch), seq in
    [1, max_seq] (opt opt_seq) for prefill; the decode graph's seq axis is the constant 1."""
    ranges = {"batch": (1, opt_batch, max_batch), "seq": (1, opt_seq, max_seq)}
    plan: dict[str, ProfileShapes] = {}
    for t in io.inputs:
        lo, opt, hi = [], [], []
        for axis, d in enumerate(t.dims):
            if isinstance(d, int):
                if d < 1:
                    raise MambaDeployError(f"{io.kind} input {t.name} axis {axis} has size {d}")
                span = (d, d, d)
            elif d in ranges:
                span = ranges[d]
            else:
                raise MambaDeployError(f"{io.kind} input {t.name} axis {axis} has the unknown dynamic dim {d!r} "
                                       f"(expected 'batch' or 'seq'; re-export with this mamba-deploy)")
            lo.append(span[0])
            opt.append(span[1])
            hi.append(span[2])
        plan[t.name] = ProfileShapes(tuple(lo), tuple(opt), tuple(hi))
    return plan


@dataclasses.dataclass(frozen=True)
class StateSlot:
    """One recurrent state: its past input, present output, layer and kind (conv | ssm)."""

    past: str
    present: str
    layer: int
    kind: str


@dataclasses.dataclass(frozen=True)
class BindingMap:
    """How one engine's tensors bind: input_ids, logits and the (past, present) state pairs."""

    input_ids: str
    logits: str
    states: tuple[StateSlot, ...]

    def state(self, kind: str, layer: int) -> StateSlot:
        for s in self.states:
            if s.kind == kind and s.layer == layer:
                return s
        raise KeyError((kind, layer))


def binding_map(input_names: Sequence[str], output_names: Sequence[str], n_layer: int) -> BindingMap:
    """Pair every past_* input with its present_* output and check nothing is missing or extra.

    Works on ONNX I/O names and on engine tensor names alike (TensorRT keeps the ONNX names)."""
    inputs, outputs = set(input_names), set(output_names)
    expected_in = {"input_ids"} | {f"past_{k}_state.{i}" for i in range(n_layer) for k in ("conv", "ssm")}
    expected_out = {"logits"} | {f"present_{k}_state.{i}" for i in range(n_layer) for k in ("conv", "ssm")}
    for what, have, want in (("inputs", inputs, expected_in), ("outputs", outputs, expected_out)):
        if have != want:
            missing, extra = sorted(want - have), sorted(have - want)
            raise MambaDeployError(f"graph {what} do not match a {n_layer}-layer export: missing {missing[:4]}, "
                                   f"unexpected {extra[:4]}")
    states = tuple(StateSlot(f"past_{k}_state.{i}", f"present_{k}_state.{i}", i, k)
                   for i in range(n_layer) for k in ("conv", "ssm"))
    return BindingMap("input_ids", "logits", states)


def check_state_shapes(io: GraphIO, conv_shape: Shape, ssm_shape: Shape, batch: int = 1) -> None:
    """The graph's state inputs must have the config's state shapes (batch axis aside)."""
    for t in io.inputs:
        m = _STATE_NAME.match(t.name)
        if not m:
            continue
        want = conv_shape if m.group(2) == "conv" else ssm_shape
        got = tuple(batch if d == "batch" else d for d in t.dims)
        if got != tuple(want):
            raise MambaDeployError(f"{io.kind} input {t.name} has shape {t.dims}, config says {tuple(want)}")
