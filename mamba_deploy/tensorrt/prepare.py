"""The ONNX graph TensorRT parses (no TensorRT needed).

TensorRT's ONNX parser imports a node as a plugin when the plugin is registered and either the node
carries `plugin_namespace` or OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE is set (TensorRT >= 10.8);
older parsers prefer a model-local function of the same name. The builder therefore both sets the
flag (when it exists) and drops the `mamba_deploy` functions from the model it hands the parser, so
on every supported TensorRT the plugins run and a missing plugin is an error, never a silent fall
back to the (slow, opset-27) function body. The weights stay external: the parser reads them
relative to the original file's folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import onnx

from ..errors import MambaDeployError
from ..ops import DOMAIN, PLUGIN_NAMESPACE, PLUGIN_VERSION

_PROTOBUF_LIMIT = 2**31 - 1


def plugin_nodes(model: onnx.ModelProto) -> dict[str, int]:
    """op type -> count of the custom (domain mamba_deploy) nodes in the main graph."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain == DOMAIN:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def prepare_model(path: Union[str, Path]) -> tuple[bytes, dict[str, int]]:
    """The serialized model for TensorRT's parser (local functions of our domain removed) and its
    custom-op counts (empty for a `--ops standard` export, which TensorRT parses as it is).
    MambaDeployError for a custom node that is not marked for this library's plugins."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError / OSError
        raise MambaDeployError(f"{path}: cannot read the ONNX graph ({type(exc).__name__}: {exc})") from None
    for node in model.graph.node:
        if node.domain != DOMAIN:
            continue
        attrs = {a.name: a for a in node.attribute}
        namespace = attrs["plugin_namespace"].s.decode() if "plugin_namespace" in attrs else None
        version = attrs["plugin_version"].s.decode() if "plugin_version" in attrs else "1"
        if namespace != PLUGIN_NAMESPACE or version != PLUGIN_VERSION:
            raise MambaDeployError(f"{path}: node {node.name or node.op_type} has plugin_namespace={namespace!r}, "
                                   f"plugin_version={version!r}; this mamba-deploy's plugins are "
                                   f"{PLUGIN_NAMESPACE!r} version {PLUGIN_VERSION!r}: re-export the model")
    kept = [f for f in model.functions if f.domain != DOMAIN]
    del model.functions[:]
    model.functions.extend(kept)
    data = model.SerializeToString()
    if len(data) > _PROTOBUF_LIMIT:
        raise MambaDeployError(f"{path}: the graph without its weights is still over 2 GB; re-export with "
                               f"external weights")
    return data, plugin_nodes(model)
