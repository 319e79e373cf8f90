"""The model's config.pbtxt: Triton's ModelConfig protobuf in text format.

One model per repository, served by the sequence batcher (direct strategy: each live sequence holds a batch
slot of an instance) with implicit state: Triton keeps every sequence's conv and SSM states between its
requests, starting from zeros (`initial_state { zero_data: true }`). Tensor dims leave out the batch axis,
which Triton prepends because max_batch_size > 0. Field names are those of Triton's model_config.proto
(`tritonclient.grpc.model_config_pb2`, against which the tests parse every file we write).
"""
from __future__ import annotations

import json
from typing import Any, Sequence

from ..export.artifact import ExportInfo
from .names import END, INPUT_IDS, LOGITS, READY, START, StateEntry

DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16"}
CONTROLS = ((START, "CONTROL_SEQUENCE_START"), (END, "CONTROL_SEQUENCE_END"), (READY, "CONTROL_SEQUENCE_READY"))
SERVING = {"onnxruntime": {"backend": "onnxruntime"}, "tensorrt": {"platform": "tensorrt_plan"}}


class Enum(str):
    """A protobuf enum value: written bare (TYPE_FP32), not quoted."""


def model_config(info: ExportInfo, name: str, backend: str, max_batch: int, instances: int, instance_kind: str,
                 idle_us: int, states: Sequence[StateEntry], controls: bool) -> dict[str, Any]:
    """The ModelConfig message as nested dicts and lists (see `to_pbtxt`). `controls`: the model takes the
    START / END / READY control inputs (int32, 0 or 1; only our rewritten ONNX graph has them)."""
    cfg = info.config
    dtypes = {"conv": DATA_TYPES[info.meta["dtype"]], "ssm": DATA_TYPES[info.meta["state_dtype"]]}
    dims = {"conv": list(cfg.conv_state_shape(1)[1:]), "ssm": list(cfg.ssm_state_shape(1)[1:])}
    batching: dict[str, Any] = {"max_sequence_idle_microseconds": idle_us, "direct": {}}
    if controls:
        batching["control_input"] = [_control(tensor, kind) for tensor, kind in CONTROLS]
    batching["state"] = [_state(e, dtypes[e.kind], dims[e.kind]) for e in states]
    positions = -1 if info.all_logits else 1  # prefill --logits all: one row per input token
    return {"name": name, **SERVING[backend], "max_batch_size": max_batch,
            "input": [{"name": INPUT_IDS, "data_type": Enum("TYPE_INT64"), "dims": [-1]}],
            "output": [{"name": LOGITS, "data_type": Enum(DATA_TYPES[info.meta["dtype"]]),
                        "dims": [positions, cfg.vocab_size_padded]}],
            "sequence_batching": batching,
            "instance_group": [{"count": instances, "kind": Enum(instance_kind)}]}


def _control(tensor: str, kind: str) -> dict[str, Any]:
    return {"name": tensor, "control": [{"kind": Enum(kind), "int32_false_true": [0, 1]}]}


def _state(entry: StateEntry, data_type: str, dims: list[int]) -> dict[str, Any]:
    zeros = {"data_type": Enum(data_type), "dims": dims, "zero_data": True, "name": "zeros"}
    return {"input_name": entry.input_name, "output_name": entry.output_name, "data_type": Enum(data_type),
            "dims": dims, "initial_state": [zeros]}


def to_pbtxt(message: dict[str, Any]) -> str:
    """Protobuf text format of a message given as a dict: dicts are messages, lists repeated fields."""
    return "\n".join(_fields(message, 0)) + "\n"


def _fields(message: dict[str, Any], depth: int) -> list[str]:
    pad, lines = "  " * depth, []
    for key, value in message.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", *_fields(value, depth + 1), f"{pad}}}"] if value else [f"{pad}{key} {{ }}"]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{pad}{key} [")
            for i, item in enumerate(value):
                comma = "," if i + 1 < len(value) else ""
                lines += [f"{pad}  {{", *_fields(item, depth + 2), f"{pad}  }}{comma}"]
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str) and value.isascii():
        return json.dumps(value)  # ASCII with \" and \\ escaped: the same in protobuf text format
    raise TypeError(f"no text format for {value!r}")

