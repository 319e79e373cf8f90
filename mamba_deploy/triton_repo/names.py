"""The tensor names of the Triton model, and the order rule its implicit state depends on.

Triton pairs a state's output with its input by position: it keeps the input names and the output names
in two sorted maps and takes the output's index into the input map (triton-inference-server/server issue
8586). A state is carried correctly only when, for every entry, its `input_name` and `output_name` have the
same rank in byte order among the inputs and the outputs. `check_state_order` enforces that before any
config is written.

The ONNX Runtime model is our rewritten graph, so it gets names that sort like the layers:
`STATE_IN_conv_007` / `STATE_OUT_conv_007` (zero-padded to at least 3 digits). A TensorRT plan keeps the
exported names `past_conv_state.7` / `present_conv_state.7`; those pair correctly too, because within each
side every name has the same prefix and the suffixes are identical.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from ..errors import MambaDeployError

INPUT_IDS, LOGITS = "input_ids", "logits"
START, END, READY = "START", "END", "READY"
STATE_KINDS = ("conv", "ssm")


@dataclasses.dataclass(frozen=True)
class StateEntry:
    """One recurrent state: its layer and kind, its tensors in the exported graph, and Triton's names."""

    layer: int
    kind: str  # conv | ssm
    graph_input: str  # past_conv_state.7
    graph_output: str  # present_conv_state.7
    input_name: str  # the model input Triton feeds the state through
    output_name: str  # the model output Triton reads the next state from


def _graph_names(kind: str, layer: int) -> tuple[str, str]:
    return f"past_{kind}_state.{layer}", f"present_{kind}_state.{layer}"


def renamed_states(n_layer: int) -> list[StateEntry]:
    """Entries for the rewritten ONNX graph: STATE_IN_<kind>_<layer> / STATE_OUT_<kind>_<layer>."""
    width = max(3, len(str(n_layer - 1)))
    return [StateEntry(i, k, *_graph_names(k, i), f"STATE_IN_{k}_{i:0{width}d}", f"STATE_OUT_{k}_{i:0{width}d}")
            for i in range(n_layer) for k in STATE_KINDS]


def graph_states(n_layer: int) -> list[StateEntry]:
    """Entries for a TensorRT plan, whose tensors keep the exported names."""
    return [StateEntry(i, k, *_graph_names(k, i), *_graph_names(k, i)) for i in range(n_layer) for k in STATE_KINDS]


def mispaired_states(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (input_name, output_name) pairs that Triton's positional matching would break: those whose input and
    output ranks (byte order, as std::map<std::string> sorts) differ."""
    input_rank = {name: i for i, name in enumerate(sorted(p[0].encode() for p in pairs))}
    output_rank = {name: i for i, name in enumerate(sorted(p[1].encode() for p in pairs))}
    return [p for p in pairs if input_rank[p[0].encode()] != output_rank[p[1].encode()]]


def check_state_order(entries: Sequence[StateEntry]) -> None:
    """MambaDeployError (a bug of ours, not the user's) when Triton would mis-pair any state."""
    broken = mispaired_states([(e.input_name, e.output_name) for e in entries])
    if broken:
        raise MambaDeployError(f"internal error: Triton would mis-pair the states {broken[:2]}: their input and "
                               f"output names do not sort alike")
