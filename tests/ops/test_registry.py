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
