"""A float16 export on the onnxruntime backend computes in float32 (runtime/backends/ort_float32.py): after ONNX
Runtime's optimizations the only Casts left besides the float32 export's own are one per float16 graph input or
output, the weights' Casts are constant-folded (no Cast reads a weight), and the logits stay within 1e-2 of the float32 export's."""
import collections

import onnx
import onnxruntime as ort
import pytest
import torch

from mamba_deploy.export.artifact import load_export
from mamba_deploy.runtime.backend import load_backend
from mamba_deploy.runtime.backends.ort_float32 import float32_compute

ARCHS = ["mamba1", "mamba2", "hybrid"]


def optimized(model: onnx.ModelProto, folder, out) -> onnx.ModelProto:
    """`model` as ONNX Runtime's CPU provider runs it after its graph optimizations (weights from `folder`)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(out / "optimized.onnx")
    opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return onnx.load(str(out / "optimized.onnx"), load_external_data=False)


def boundary(model: onnx.ModelProto) -> tuple[set[str], set[str]]:
    f16 = onnx.TensorProto.FLOAT16
    return ({v.name for v in model.graph.input if v.type.tensor_type.elem_type == f16},
            {v.name for v in model.graph.output if v.type.tensor_type.elem_type == f16})


@pytest.mark.parametrize("kind", ["decode", "prefill"])
@pytest.mark.parametrize("arch", ARCHS)
def test_only_boundary_casts_after_optimization(exports, tmp_path, arch, kind):
    info = load_export(exports(arch, dtype="float16"))
    model = info.load_graph(kind)
    inputs, outputs = boundary(model)
    assert inputs and outputs  # conv states and logits are float16
    before = optimized(model, info.folder, tmp_path)
    after = optimized(float32_compute(model), info.folder, tmp_path)
    casts = [n for n in after.graph.node if n.op_type == "Cast"]
    edge = [n for n in casts if n.input[0] in inputs or n.output[0] in outputs]
    assert len(edge) == len(inputs) + len(outputs)
    f32 = load_export(exports(arch))  # the same graph's Casts in float32 (a hybrid's int -> float positions)
    f32_casts = sum(n.op_type == "Cast" for n in optimized(f32.load_graph(kind), f32.folder, tmp_path).graph.node)
    assert len(casts) - len(edge) == f32_casts
    weights = {t.name for t in model.graph.initializer}
    assert not any(x in weights for n in casts for x in n.input)
    assert sum(n.op_type == "Cast" for n in before.graph.node) > 2 * len(casts)
    assert boundary(float32_compute(model)) == (inputs, outputs)  # the caller binds the same dtypes
    assert {n.domain for n in after.graph.node} == {n.domain for n in before.graph.node}


@pytest.mark.parametrize("arch", ARCHS)
def test_float16_logits_within_1e_2_of_float32_export(exports, arch):
    half = load_backend("onnxruntime", load_export(exports(arch, dtype="float16")), threads=2)
    full = load_backend("onnxruntime", load_export(exports(arch)), threads=2)
    vocab = full.config.vocab_size
    ids = torch.randint(1, vocab, (2, 13), generator=torch.Generator().manual_seed(5))
    sh, sf = half.new_state(2), full.new_state(2)
    assert sh.conv[0].dtype == torch.float16
    pairs = [(half.prefill(ids[:, :9], sh), full.prefill(ids[:, :9], sf))]
    for t in range(9, 13):
        pairs.append((half.decode(ids[:, t:t + 1], sh).clone(), full.decode(ids[:, t:t + 1], sf).clone()))
    for got, want in pairs:
        assert got.dtype == torch.float16
        err = (got.float() - want).abs().max() / want.abs().max()
        assert err <= 1e-2, err


def test_constants_and_cast_targets_become_float32():
    """A hand-made graph: a float16 Constant, a Cast to float16 and a float16 initializer all compute in float32."""
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    w = numpy_helper.from_array(np.array([1.5, -2.0], dtype=np.float16), "w")
    c = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array([0.25, 4.0], np.float16)))
    nodes = [helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16), c,
             helper.make_node("Mul", ["xh", "w"], ["m"]), helper.make_node("Add", ["m", "c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2])], [w])
    model = float32_compute(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.checker.check_model(model, full_check=True)
    types = collections.Counter(n.attribute[0].i for n in model.graph.node if n.op_type == "Cast")
    assert types == {TensorProto.FLOAT: 2, TensorProto.FLOAT16: 1}  # x's cast, w's cast; y's at the end
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([1.0 / 3, 2.0], np.float32)
    (y,) = sess.run(None, {"x": x})
    assert y.dtype == np.float16
    np.testing.assert_allclose(y, (x * np.array([1.5, -2.0]) + [0.25, 4.0]).astype(np.float16), rtol=1e-3)


def test_opening_a_float16_export_prints_nothing(exports, capfd):
    """Both sessions load from memory with the weights' folder in one options object: set twice, ONNX Runtime
    printed a warning to the user's terminal (`mamba-deploy run` / `bench`)."""
    info = load_export(exports("mamba2", dtype="float16"))
    capfd.readouterr()
    load_backend("onnxruntime", info, threads=1)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
