"""Exported graphs run in ONNX Runtime and match the reference model and HF transformers."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mamba_deploy import load_reference
from mamba_deploy.export.artifact import load_export
from mamba_deploy.export.testing import tiny_checkpoint
from mamba_deploy.export import ExportOptions, export_model
from mamba_deploy.verify import transformers_oracle

ARCHS = ["mamba1", "mamba2"]
pytestmark = pytest.mark.filterwarnings("ignore:the checkpoint has no tokenizer")


class OrtModel:
    """Raw ONNX Runtime sessions over an export folder, states fed back by hand."""

    def __init__(self, folder):
        self.cfg = load_export(folder).config
        self.sessions = {k: ort.InferenceSession(str(folder / f"{k}.onnx"), providers=["CPUExecutionProvider"])
                         for k in ("prefill", "decode")}

    def run(self, kind, ids, states):
        feed = {"input_ids": ids.numpy(), **states}
        names = [o.name for o in self.sessions[kind].get_outputs()]
        out = dict(zip(names, self.sessions[kind].run(None, feed)))
        present = {k.replace("present", "past"): v for k, v in out.items() if k.startswith("present")}
        return out["logits"], present

    def zero_states(self, batch, ssm_dtype=np.float32, conv_dtype=np.float32):
        states = {}
        for i in range(self.cfg.n_layer):
            states[f"past_conv_state.{i}"] = np.zeros(self.cfg.conv_state_shape(batch), conv_dtype)
            states[f"past_ssm_state.{i}"] = np.zeros(self.cfg.ssm_state_shape(batch), ssm_dtype)
        return states


def rel(a, b):
    a, b = np.asarray(a, np.float64), b.detach().double().numpy()
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _ids(batch, seqlen, seed=0):
    return torch.randint(0, 100, (batch, seqlen), generator=torch.Generator().manual_seed(seed))


def _check_chain(folder, tol, prefill_len=9, steps=4, batch=2, ckpt=None, **state_dtypes):
    """prefill then a chain of decode steps feeding present states back, vs the float32 reference."""
    onnx_model = OrtModel(folder)
    ref = load_reference(ckpt or folder.parent / "ckpt", torch.float32)
    ids = _ids(batch, prefill_len + steps)
    ref_state = ref.new_state(batch)
    logits, states = onnx_model.run("prefill", ids[:, :prefill_len], onnx_model.zero_states(batch, **state_dtypes))
    errors = [rel(logits, ref.prefill(ids[:, :prefill_len], ref_state))]
    for t in range(prefill_len, prefill_len + steps):
        logits, states = onnx_model.run("decode", ids[:, t:t + 1], states)
        errors.append(rel(logits, ref.decode(ids[:, t:t + 1], ref_state)))
    assert max(errors) <= tol, errors
    return states, ref_state


@pytest.mark.parametrize("ops", ["plugin", "standard"])
@pytest.mark.parametrize("arch", ARCHS)
def test_float32_matches_reference(exports, arch, ops):
    folder = exports(arch, ops=ops)
    states, ref_state = _check_chain(folder, 1e-5)
    for i in range(ref_state_layers(ref_state)):
        assert rel(states[f"past_ssm_state.{i}"], ref_state.ssm[i]) < 1e-5
        assert rel(states[f"past_conv_state.{i}"], ref_state.conv[i]) < 1e-6


def ref_state_layers(state):
    return len(state.ssm)


@pytest.mark.parametrize("arch", ARCHS)
def test_graphs_pass_full_check_and_io_names(exports, arch):
    folder = exports(arch)
    cfg = load_export(folder).config
    for name in ("prefill.onnx", "decode.onnx"):
        onnx.checker.check_model(str(folder / name), full_check=True)
        graph = onnx.load(str(folder / name), load_external_data=False).graph
        states = [f"{k}_state.{i}" for i in range(cfg.n_layer) for k in ("conv", "ssm")]
        assert [v.name for v in graph.input] == ["input_ids"] + [f"past_{s}" for s in states]
        assert [v.name for v in graph.output] == ["logits"] + [f"present_{s}" for s in states]
        locations = {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}
        assert locations == {"weights.data"}


def test_plugin_graph_uses_custom_ops_with_plugin_attributes(exports):
    graph_ops = {}
    for arch in ARCHS:
        model = onnx.load(str(exports(arch) / "prefill.onnx"), load_external_data=False)
        for node in model.graph.node:
            if node.domain == "mamba_deploy":
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"mamba_deploy"
                graph_ops[node.op_type] = True
        assert {f.name for f in model.functions} == {n.op_type for n in model.graph.node if n.domain}
    assert set(graph_ops) == {"MambaCausalConv1d", "MambaSelectiveScan", "Mamba2ChunkScan"}
    standard = onnx.load(str(exports("mamba2", ops="standard") / "decode.onnx"), load_external_data=False)
    assert not [n for n in standard.graph.node if n.domain] and not standard.functions
    assert "mamba_deploy" not in {o.domain for o in standard.opset_import}


@pytest.mark.parametrize("arch", ARCHS)
def test_matches_hf_transformers(exports, arch):
    folder = exports(arch)
    onnx_model = OrtModel(folder)
    hf = transformers_oracle(load_reference(folder.parent / "ckpt", torch.float32))
    ids = _ids(1, 10)
    logits, states = onnx_model.run("prefill", ids[:, :8], onnx_model.zero_states(1))
    assert rel(logits[0, -1], hf(ids[0, :8].tolist())) < 1e-5
    for t in (8, 9):
        logits, states = onnx_model.run("decode", ids[:, t:t + 1], states)
        assert rel(logits[0, -1], hf(ids[0, :t + 1].tolist())) < 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_float16_within_1e_2_of_float32_reference(exports, arch):
    folder = exports(arch, dtype="float16")
    assert json.loads((folder / "config.json").read_text())["export"]["dtype"] == "float16"
    _check_chain(folder, 1e-2, conv_dtype=np.float16)


def test_state_dtype_model(exports):
    folder = exports("mamba2", dtype="float16", state_dtype="model")
    _check_chain(folder, 1e-2, conv_dtype=np.float16, ssm_dtype=np.float16)


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_all_and_chunked_prefill(exports, arch):
    folder = exports(arch, logits="all")
    onnx_model, ref = OrtModel(folder), load_reference(folder.parent / "ckpt", torch.float32)
    ids = _ids(2, 10)
    logits, whole = onnx_model.run("prefill", ids, onnx_model.zero_states(2))
    assert logits.shape == (2, 10, ref.config.vocab_size_padded)
    assert rel(logits, ref(ids)) < 1e-5
    first, states = onnx_model.run("prefill", ids[:, :6], onnx_model.zero_states(2))
    second, chunked = onnx_model.run("prefill", ids[:, 6:], states)
    assert rel(np.concatenate([first, second], 1), ref(ids)) < 1e-5
    for key in whole:
        assert rel(chunked[key], torch.from_numpy(whole[key])) < 1e-5


def test_hf_format_checkpoint_and_metadata(tmp_path):
    ckpt = tiny_checkpoint("mamba2", tmp_path / "hf", fmt="hf")
    out = export_model(ckpt, tmp_path / "out", ExportOptions(), progress=False)
    meta = json.loads((out / "config.json").read_text())["export"]
    assert meta["format_version"] == 1 and meta["ops"] == "plugin" and meta["opset"] == 27
    assert meta["tokenizer"] is None and meta["source"] == str(ckpt.resolve())
    _check_chain(out, 1e-5, prefill_len=5, steps=2, batch=1, ckpt=ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]  # no temp folders left behind


def test_default_dtype_is_the_checkpoints(tmp_path):
    ckpt = tiny_checkpoint("mamba1", tmp_path / "ckpt", dtype=torch.bfloat16)
    out = export_model(ckpt, tmp_path / "out", ExportOptions(), progress=False)
    info = load_export(out)
    assert info.dtype == torch.bfloat16 and info.state_dtype == torch.float32


@pytest.mark.parametrize("options,param", [(dict(state_dtype="fp8"), "state_dtype"), (dict(dtype="int8"), "dtype"),
                                           (dict(opset=5), "opset"), (dict(opset="27"), "opset"),
                                           (dict(logits="some"), "logits")])
def test_bad_options_name_the_python_parameter(options, param):
    from mamba_deploy.errors import ParameterError

    with pytest.raises(ParameterError, match=rf"^{param} must be ") as info:
        ExportOptions(**options).validate()
    assert info.value.param == param
