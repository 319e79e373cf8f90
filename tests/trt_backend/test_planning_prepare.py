"""Profiles, binding maps and the parser's model, on real exported graphs (no TensorRT needed)."""
import onnx
import pytest

from mamba_deploy.errors import MambaDeployError
from mamba_deploy.export.artifact import load_export
from mamba_deploy.ops.registry import DOMAIN
from mamba_deploy.tensorrt import planning
from mamba_deploy.tensorrt.prepare import prepare_model

ARCHS = ["mamba1", "mamba2"]


@pytest.mark.parametrize("arch", ARCHS)
def test_profiles_cover_every_input(exports, arch):
    info = load_export(exports(arch))
    cfg = info.config
    for kind in ("prefill", "decode"):
        io = planning.read_graph_io(info.graph(kind), kind)
        plan = planning.plan_profile(io, max_batch=8, max_seq=1024, opt_seq=256, opt_batch=2)
        assert set(plan) == {t.name for t in io.inputs}
        ids = plan["input_ids"]
        if kind == "prefill":
            assert (ids.min, ids.opt, ids.max) == ((1, 1), (2, 256), (8, 1024))
        else:
            assert (ids.min, ids.opt, ids.max) == ((1, 1), (2, 1), (8, 1))
        for i in range(cfg.n_layer):
            conv = plan[f"past_conv_state.{i}"]
            assert conv.min == cfg.conv_state_shape(1) and conv.max == cfg.conv_state_shape(8)
            assert plan[f"past_ssm_state.{i}"].opt == cfg.ssm_state_shape(2)
        planning.check_state_shapes(io, cfg.conv_state_shape(1), cfg.ssm_state_shape(1))
        bindings = planning.binding_map([t.name for t in io.inputs], [t.name for t in io.outputs], cfg.n_layer)
        assert len(bindings.states) == 2 * cfg.n_layer
        assert bindings.state("ssm", cfg.n_layer - 1).present == f"present_ssm_state.{cfg.n_layer - 1}"


def test_profile_rejects_unknown_dynamic_dims():
    io = planning.GraphIO("prefill", (planning.TensorSig("input_ids", "int64", ("batch", "tokens")),), ())
    with pytest.raises(MambaDeployError, match="'tokens'"):
        planning.plan_profile(io, 4, 64, 16)
    io = planning.GraphIO("prefill", (planning.TensorSig("x", "float32", ("batch", 0)),), ())
    with pytest.raises(MambaDeployError, match="size 0"):
        planning.plan_profile(io, 4, 64, 16)


def test_binding_map_reports_missing_and_extra():
    ins = ["input_ids", "past_conv_state.0", "past_ssm_state.0"]
    outs = ["logits", "present_conv_state.0", "present_ssm_state.0"]
    m = planning.binding_map(ins, outs, 1)
    assert m.state("conv", 0) == planning.StateSlot("past_conv_state.0", "present_conv_state.0", 0, "conv")
    with pytest.raises(MambaDeployError, match="missing.*past_conv_state.1"):
        planning.binding_map(ins, outs, 2)
    with pytest.raises(MambaDeployError, match="unexpected.*extra"):
        planning.binding_map(ins, outs + ["extra"], 1)
    with pytest.raises(KeyError):
        m.state("ssm", 3)


def test_state_shape_mismatch_is_reported(exports):
    info = load_export(exports("mamba1"))
    io = planning.read_graph_io(info.graph("decode"), "decode")
    with pytest.raises(MambaDeployError, match="config says"):
        planning.check_state_shapes(io, (1, 3, 3), info.config.ssm_state_shape(1))


def test_read_graph_io_bad_file(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(MambaDeployError, match="cannot read"):
        planning.read_graph_io(bad, "prefill")


@pytest.mark.parametrize("arch,ops", [("mamba1", {"MambaCausalConv1d", "MambaSelectiveScan"}),
                                      ("mamba2", {"MambaCausalConv1d", "Mamba2ChunkScan"})])
def test_prepare_drops_our_functions_and_keeps_weights_external(exports, arch, ops):
    info = load_export(exports(arch))
    original = onnx.load(str(info.graph("prefill")), load_external_data=False)
    assert any(f.domain == DOMAIN for f in original.functions)
    data, counts = prepare_model(info.graph("prefill"))
    prepared = onnx.load_from_string(data)
    assert not any(f.domain == DOMAIN for f in prepared.functions)
    assert set(counts) == ops and all(n == info.config.n_layer for n in counts.values())
    assert len(data) < 1 << 20  # weights stay in weights.data, read by the parser from the graph's folder
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in prepared.graph.initializer)
    _, decode_counts = prepare_model(info.graph("decode"))
    assert set(decode_counts) == {"MambaCausalConv1dUpdate", "MambaSelectiveStateUpdate"}


def test_prepare_refuses_foreign_plugin_namespace(exports, tmp_path):
    info = load_export(exports("mamba1"))
    model = onnx.load(str(info.graph("decode")), load_external_data=False)
    node = next(n for n in model.graph.node if n.domain == DOMAIN)
    for attr in node.attribute:
        if attr.name == "plugin_namespace":
            attr.s = b"other"
    path = info.folder / "foreign.onnx"
    onnx.save(model, str(path))
    try:
        with pytest.raises(MambaDeployError, match="re-export"):
            prepare_model(path)
    finally:
        path.unlink()


def test_standard_ops_export_has_no_plugin_nodes(exports):
    info = load_export(exports("mamba1", ops="standard"))
    _, counts = prepare_model(info.graph("decode"))
    assert counts == {}
