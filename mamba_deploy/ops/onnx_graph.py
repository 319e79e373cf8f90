"""A small ONNX node builder used for the exported graphs and for the custom ops' function bodies.

`g("Add", a, b)` appends a node and returns its output name (a list of names when `outputs > 1`).
Constants are `Constant` nodes, so the same code builds a graph body or a FunctionProto body.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from onnx import NodeProto, helper, numpy_helper

INT64_MAX = np.iinfo(np.int64).max


class GraphBuilder:
    """Collects nodes with unique output names (`{prefix}{hint}_{n}`)."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.nodes: list[NodeProto] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def __call__(self, op_type: str, *inputs: str | None, outputs: int | Sequence[str] = 1, domain: str = "",
                 **attrs: Any) -> Any:
        names = list(outputs) if not isinstance(outputs, int) else [self.fresh(op_type) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, ["" if i is None else i for i in inputs], names,
                                           name=self.fresh(f"n_{op_type}"), domain=domain or None, **attrs))
        return names[0] if len(names) == 1 else names

    def const(self, values: Any, dtype: Any = np.int64) -> str:
        """A Constant node (deduplicated): 1-D int64 by default; numpy scalars keep their rank 0."""
        array = np.asarray(values, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            self._consts[key] = self("Constant", value=numpy_helper.from_array(array, self.fresh("const")))
        return self._consts[key]

    def f32(self, value: float) -> str:
        """A float32 scalar constant."""
        return self.const(value, np.float32)

    def dim(self, tensor: str, axis: int) -> str:
        """Size of `tensor` along `axis` as a 1-element int64 tensor."""
        return self("Shape", tensor, start=axis, end=axis + 1 if axis != -1 else INT64_MAX)

    def shape(self, *parts: str | int) -> str:
        """Concatenate 1-element dims and literal ints into a shape tensor."""
        pieces = [p if isinstance(p, str) else self.const([p]) for p in parts]
        return pieces[0] if len(pieces) == 1 else self("Concat", *pieces, axis=0)

    def reshape(self, tensor: str, *parts: str | int) -> str:
        return self("Reshape", tensor, self.shape(*parts))

    def unsqueeze(self, tensor: str, *axes: int) -> str:
        return self("Unsqueeze", tensor, self.const(list(axes)))
