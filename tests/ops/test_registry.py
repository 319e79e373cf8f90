"""Every op the exporter emits has a complete registry entry."""
from mamba_deploy.ops import REGISTRY

EXPECTED = {"MambaCausalConv1d", "MambaCausalConv1dUpdate", "MambaSelectiveScan", "MambaSelectiveStateUpdate",
            "Mamba2ChunkScan"}


def test_registry_holds_the_design_ops():
    assert set(REGISTRY) == EXPECTED


def test_every_op_has_reference_and_kernel_names():
    for name, spec in REGISTRY.items():
        assert callable(spec.reference), name
        assert spec.kernel.startswith("md_"), name
        assert spec.plugin == name


def test_every_op_has_onnx_schema_function_and_cuda_binding():
    """DESIGN §2: one entry holds the reference, ONNX schema + function body, kernel and plugin names."""
    import onnx

    for name, spec in REGISTRY.items():
        assert isinstance(spec.onnx_schema, onnx.defs.OpSchema), name
        assert spec.onnx_schema.name == name and spec.onnx_schema.domain == "mamba_deploy"
        assert callable(spec.onnx_function), name
        assert callable(spec.cuda), name
