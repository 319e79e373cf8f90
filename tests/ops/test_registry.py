"""Every op the exporter emits has one complete registry entry, and each face matches its other home: the
TensorRT plugin creators (plugins/tensorrt/) here; the C ABI and the built library's exported symbols, which
include every op's kernel, in test_lib_abi.py."""
import pathlib
import re

import onnx

from mamba_deploy.ops import DOMAIN, REGISTRY, _lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXPECTED = {"MambaCausalConv1d", "MambaCausalConv1dUpdate", "MambaSelectiveScan", "MambaSelectiveStateUpdate",
            "Mamba2ChunkScan"}


def test_registry_holds_the_design_ops():
    assert set(REGISTRY) == EXPECTED


def test_every_entry_has_all_four_faces():
    for name, spec in REGISTRY.items():
        assert callable(spec.reference) and callable(spec.cuda), name
        assert isinstance(spec.onnx_schema, onnx.defs.OpSchema), name
        assert (spec.onnx_schema.name, spec.onnx_schema.domain) == (name, DOMAIN)
        function = spec.onnx_function(spec.onnx.defaults(), True, static=_static(spec))
        assert (function.name, function.domain) == (name, DOMAIN)
        assert {"plugin_version", "plugin_namespace"} <= set(spec.onnx_schema.attributes)
        assert spec.kernel.symbol.startswith("md_") and spec.kernel.params in {s for _, s in _lib.PARAMS.values()}
        assert _lib.op_kernel(name) is spec.kernel and _lib.KERNELS[spec.kernel.symbol] is spec.kernel
        assert spec.plugin, name


def _plugin_creator_names() -> set[str]:
    """Every string a `kName` of plugins/tensorrt/mdOps.h can take (ternaries included)."""
    header = (ROOT / "plugins" / "tensorrt" / "mdOps.h").read_text()
    names = set()
    for decl in re.findall(r"kName\s*=([^;]*);", header):
        names.update(re.findall(r'"([^"]+)"', decl))
    return names


def test_plugin_names_match_the_tensorrt_creators_both_ways():
    creators = _plugin_creator_names()
    plugins = {spec.plugin for spec in REGISTRY.values()}
    assert plugins - creators == set(), "registered ops without a TensorRT plugin creator"
    assert creators - plugins == set(), "TensorRT plugin creators without a registered op"
    registry_cpp = (ROOT / "plugins" / "tensorrt" / "mdPluginRegistry.cpp").read_text()
    listed = re.findall(r"t::creator<t::\w+>\(\)", registry_cpp)
    assert len(listed) == len(REGISTRY), "the creator list of mdPluginRegistry.cpp must hold one creator per op"


def _static(spec):
    """An example of the model facts an op's body needs (the Mamba2 form of the state update)."""
    return {"state_rank": 4} if spec.onnx.static else None
