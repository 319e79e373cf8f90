"""An op's ONNX face: its signature (schema), its model-local function body, and its node in a graph.

T: float32 | float16 | bfloat16 (the model dtype); S: the SSM state dtype (float32 | T); F: float32
only. Every node of a custom op also carries plugin_version and plugin_namespace (strings), so the
TensorRT parser finds the plugin. The entries themselves are in `registry.py`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from onnx import FunctionProto, helper
from onnx.defs import OpSchema

from .onnx_graph import GraphBuilder

DOMAIN = "mamba_deploy"
DOMAIN_VERSION = 1
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "mamba_deploy"
MIN_OPSET = 27  # the graphs' opset floor: the scan bodies were LinearAttention (opset 27) until 2026-12-02
_T_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]

Param = tuple[str, str, str]  # (name, type parameter T | S | F, doc)


@dataclasses.dataclass(frozen=True)
class OnnxOpDef:
    """inputs/outputs: (name, type param, doc), the last input optional when `optional_last`;
    attributes: name -> (default, doc), the ONNX type taken from the default's Python type;
    emit(g, *input names, **attributes, **static) -> output names: the semantics in standard ops;
    static: keyword arguments of `emit` that are facts of the model, fixed for a whole graph, not node
    attributes (the state rank: Mamba1 or Mamba2 form), so a body is written for the form it serves."""

    inputs: list[Param]
    outputs: list[Param]
    attributes: dict[str, tuple[Any, str]]
    emit: Callable[..., tuple[str, str]]
    optional_last: bool = False
    doc: str = ""
    static: tuple[str, ...] = ()

    def check_static(self, name: str, static: Optional[dict[str, Any]]) -> dict[str, Any]:
        static = dict(static or {})
        if set(static) != set(self.static):
            raise ValueError(f"{name}'s body needs static {sorted(self.static)}, got {sorted(static)}")
        return static

    def all_attributes(self) -> dict[str, tuple[Any, str]]:
        return {"plugin_version": (PLUGIN_VERSION, "TensorRT plugin version"),
                "plugin_namespace": (PLUGIN_NAMESPACE, "TensorRT plugin namespace"), **self.attributes}

    def defaults(self) -> dict[str, Any]:
        return {name: default for name, (default, _) in self.attributes.items()}

    def schema(self, name: str) -> OpSchema:
        """The OpSchema of op `name` (domain mamba_deploy), with type and shape inference."""
        def param(i: int, entry: Param, optional: bool = False) -> OpSchema.FormalParameter:
            option = OpSchema.FormalParameterOption.Optional if optional else OpSchema.FormalParameterOption.Single
            return OpSchema.FormalParameter(entry[0], entry[1], entry[2], param_option=option)

        last = len(self.inputs) - 1
        schema = OpSchema(
            name, DOMAIN, DOMAIN_VERSION, self.doc,
            inputs=[param(i, e, self.optional_last and i == last) for i, e in enumerate(self.inputs)],
            outputs=[param(i, e) for i, e in enumerate(self.outputs)],
            type_constraints=[("T", _T_TYPES, "model dtype"), ("S", _T_TYPES, "SSM state dtype"),
                              ("F", ["tensor(float)"], "float32 parameters")],
            attributes=[OpSchema.Attribute(n, helper.make_attribute(n, d), doc)
                        for n, (d, doc) in self.all_attributes().items()])
        schema.set_type_and_shape_inference_function(self._infer)
        return schema

    def function(self, name: str, attrs: dict[str, Any], has_optional: bool, opset: int = MIN_OPSET,
                 static: Optional[dict[str, Any]] = None) -> FunctionProto:
        """The model-local FunctionProto of op `name`, specialised to `attrs`, to the optional input and to
        the model's `static` facts."""
        static = self.check_static(name, static)
        names = [n for n, _, _ in self.inputs]
        if self.optional_last and not has_optional:
            names = names[:-1]
        g = GraphBuilder(prefix="f_")
        outputs = self.emit(g, *names, **{**self.defaults(), **{k: v for k, v in attrs.items() if k in self.attributes}},
                            **static)
        renamed = [n for n, _, _ in self.outputs]
        g.nodes.extend(helper.make_node("Identity", [src], [dst]) for src, dst in zip(outputs, renamed))
        return helper.make_function(DOMAIN, name, names, renamed, g.nodes,
                                    opset_imports=[helper.make_opsetid("", opset)],
                                    attributes=list(self.all_attributes()))

    def emit_node(self, g: GraphBuilder, name: str, inputs: list[Optional[str]], attrs: dict[str, Any],
                  plugin: bool, static: Optional[dict[str, Any]] = None) -> tuple[str, str]:
        """Op `name` in a graph: a custom node (plugin flavour) or its body inlined in standard ops."""
        static = self.check_static(name, static)
        if self.optional_last and len(inputs) == len(self.inputs) and inputs[-1] is None:
            inputs = inputs[:-1]
        if not plugin:
            return self.emit(g, *inputs, **attrs, **static)
        return g(name, *inputs, outputs=len(self.outputs), domain=DOMAIN, plugin_version=PLUGIN_VERSION,
                 plugin_namespace=PLUGIN_NAMESPACE, **{**self.defaults(), **attrs})

    def _infer(self, ctx) -> None:
        """Output 0 has the type and shape of input 0 (x / u); output 1 those of the state input."""
        state_index = next(i for i, (n, _, _) in enumerate(self.inputs) if "state" in n)
        for out, src in ((0, 0 if self.inputs[0][0] != "state" else 1), (1, state_index)):
            ctx.set_output_type(out, ctx.get_input_type(src))
