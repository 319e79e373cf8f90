"""mamba-ssm hybrids (attention layers) through export, ONNX Runtime, the torch backend, verify and the CLI; the
TensorRT and Triton paths refuse them in one line (the native backend runs them: tests/native, on a GPU)."""
import json

import onnx
import pytest
import torch
from click.testing import CliRunner
from test_cli import assert_one_line_error

from mamba_deploy.checkpoint import load_reference
from mamba_deploy.cli import cli
from mamba_deploy.errors import MambaDeployError, ParameterError
from mamba_deploy.export import ExportOptions, export_model
from mamba_deploy.export.artifact import load_export
from mamba_deploy.export.testing import tiny_checkpoint
from mamba_deploy.runtime.backend import load_backend
from mamba_deploy.verify import verify_export
from numerics import rel_err as rel

pytestmark = pytest.mark.filterwarnings("ignore:the checkpoint has no tokenizer")
MAX_LEN = 19


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    """hybrid(arch, ops, dtype) -> (checkpoint, export), built once per module."""
    cache = {}

    def get(arch="hybrid", ops="plugin", dtype=None):
        if (arch, ops, dtype) not in cache:
            root = tmp_path_factory.mktemp(arch)
            ckpt = tiny_checkpoint(arch, root / "ckpt", seed=4)
            options = ExportOptions(ops=ops, dtype=dtype, max_seq_len=MAX_LEN)
            cache[arch, ops, dtype] = ckpt, export_model(ckpt, root / "export", options, progress=False)
        return cache[arch, ops, dtype]

    return get


def test_graph_io_names_and_shapes(hybrid):
    _, folder = hybrid("hybrid1")
    info = load_export(folder)
    assert info.max_seq_len == MAX_LEN and json.loads((folder / "config.json").read_text())["export"]["max_seq_len"]
    cfg = info.config  # layers 1 and 3 are attention, 0 and 2 Mamba1
    for kind in ("prefill", "decode"):
        graph = onnx.load(str(folder / f"{kind}.onnx"), load_external_data=False).graph
        inputs = [v.name for v in graph.input]
        assert inputs == ["input_ids", "past_conv_state.0", "past_ssm_state.0", "past_key.1", "past_value.1",
                          "past_conv_state.2", "past_ssm_state.2", "past_key.3", "past_value.3", "past_length"]
        outputs = [v.name for v in graph.output]
        assert outputs == ["logits"] + [n.replace("past_", "present_") for n in inputs[1:]]
        dims = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in graph.input}
        assert dims["past_key.3"] == ["batch", cfg.attn_num_heads_kv, MAX_LEN, cfg.attn_head_dim]
        assert dims["past_length"] == ["batch"]
        assert graph.input[-1].type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert not any(n.domain == "mamba_deploy" for n in graph.node if n.op_type in ("Softmax", "ScatterElements"))
    graph = onnx.load(str(hybrid("hybrid")[1] / "decode.onnx"), load_external_data=False).graph  # MHA with d_conv
    assert [v.name for v in graph.input][1:] == ["past_conv_state.0", "past_ssm_state.0", "past_conv_state.1",
                                                 "past_key.1", "past_value.1", "past_conv_state.2", "past_ssm_state.2",
                                                 "past_length"]


@pytest.mark.parametrize("ops", ["plugin", "standard"])
def test_graphs_pass_onnx_full_check(hybrid, ops):
    from mamba_deploy.ops import register_onnx_schemas

    register_onnx_schemas()
    _, folder = hybrid("hybrid", ops)
    for kind in ("prefill", "decode"):
        onnx.checker.check_model(str(folder / f"{kind}.onnx"), full_check=True)  # strict shape inference too


@pytest.mark.parametrize("ops", ["plugin", "standard"])
@pytest.mark.parametrize("arch", ["hybrid", "hybrid1"])
def test_onnxruntime_and_torch_match_the_reference(hybrid, arch, ops):
    """Rows at different positions (a ragged start), a chunked prefill, then decode steps: ORT and the torch
    backend against the float32 reference fed the same way, within 1e-5, and the caches agree."""
    ckpt, folder = hybrid(arch, ops)
    ref, info = load_reference(ckpt), load_export(folder)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 100, (3, 12), generator=gen)
    for name in ("onnxruntime", "torch"):
        backend = load_backend(name, info)
        state, want_state = backend.new_state(3), ref.new_state(3, max_seq_len=MAX_LEN)
        head = [(backend.prefill(ids[:, :5], state), ref.prefill(ids[:, :5], want_state))]
        head.append((backend.prefill(ids[:, 5:8], state), ref.prefill(ids[:, 5:8], want_state)))
        steps = [(backend.decode(ids[:, t:t + 1], state).clone(), ref.decode(ids[:, t:t + 1], want_state))
                 for t in range(8, 12)]
        for got, want in head + steps:
            assert rel(got[..., :100], want[..., :100]) < 1e-5, name
        assert state.length.tolist() == [12, 12, 12]
        for got, want in zip(state.key + state.value + state.attn_conv,
                             want_state.key + want_state.value + want_state.attn_conv):
            assert rel(got, want) < 1e-5


def test_ragged_positions_on_onnxruntime(hybrid):
    """Rows that hold different lengths decode together as each alone (the per-row past_length)."""
    _, folder = hybrid()
    backend = load_backend("onnxruntime", load_export(folder))
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 100, (1, n), generator=gen) for n in (3, 9)]
    states = []
    for p in prompts:
        states.append(backend.new_state(1))
        backend.prefill(p, states[-1])
    step = torch.randint(0, 100, (2, 1), generator=gen)
    alone = torch.cat([backend.decode(step[r:r + 1], s.clone()).clone() for r, s in enumerate(states)])
    batch = states[0].with_tensors([torch.cat(ts) for ts in zip(*(s.tensors() for s in states))])
    assert rel(backend.decode(step, batch), alone) < 1e-6


def test_float16_export_within_1e_2(hybrid):
    ckpt, folder = hybrid("hybrid", "plugin", "float16")
    ref, backend = load_reference(ckpt), load_backend("onnxruntime", load_export(folder))
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(5))
    state, want_state = backend.new_state(2), ref.new_state(2, max_seq_len=MAX_LEN)
    assert state.key[0].dtype == torch.float16
    assert rel(backend.prefill(ids, state)[..., :100], ref.prefill(ids, want_state)[..., :100]) < 1e-2
    step = ids[:, :1]
    assert rel(backend.decode(step, state)[..., :100], ref.decode(step, want_state)[..., :100]) < 1e-2


def test_verify_passes_and_transformers_oracle_refuses(hybrid):
    ckpt, folder = hybrid()
    report = verify_export(folder, reference=str(ckpt), backend="onnxruntime", steps=4)
    assert report.passed and report.max_rel_err < 1e-5
    with pytest.raises(MambaDeployError, match="attn_layer_idx"):
        verify_export(folder, reference=str(ckpt), backend="onnxruntime", oracle="transformers")


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["hybrid", "hybrid1"])
@pytest.mark.parametrize("dtype", [None, "float16"])
def test_native_verifies_against_the_reference(hybrid, arch, dtype):
    """The native engine on hybrid exports: attention in its decode graph over the export's max_seq_len."""
    ckpt, folder = hybrid(arch, dtype=dtype)
    report = verify_export(folder, reference=str(ckpt), backend="native", steps=4)
    assert report.passed, report.to_dict()
    assert report.max_rel_err < (1e-4 if dtype is None else 1e-2)


def test_too_long_is_refused_with_the_state_untouched(hybrid):
    _, folder = hybrid()
    backend = load_backend("onnxruntime", load_export(folder))
    state = backend.new_state(1)
    backend.prefill(torch.ones(1, MAX_LEN - 1, dtype=torch.int64), state)
    before = [t.clone() for t in state.tensors()]
    with pytest.raises(ParameterError, match="max_seq_len"):
        backend.prefill(torch.ones(1, 2, dtype=torch.int64), state)
    assert all(torch.equal(a, b) for a, b in zip(before, state.tensors()))
    backend.decode(torch.ones(1, 1, dtype=torch.int64), state)
    with pytest.raises(ParameterError, match="max_seq_len"):
        backend.decode(torch.ones(1, 1, dtype=torch.int64), state)


def test_tensorrt_and_triton_refuse_hybrids(hybrid, tmp_path):
    from mamba_deploy.triton_repo.repository import write_triton_repository

    _, folder = hybrid()
    with pytest.raises(MambaDeployError, match="attention layers"):
        write_triton_repository(folder, tmp_path / "repo")
    from mamba_deploy.tensorrt.builder import build_engines

    with pytest.raises(MambaDeployError, match="not supported by the tensorrt backend yet"):
        build_engines(folder)


def test_cli_export_run_and_refusals(hybrid, tmp_path):
    ckpt, _ = hybrid()
    out = tmp_path / "cli-export"
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(out), "-q", "--max-seq-len", "12"])
    assert result.exit_code == 0, result.output
    assert load_export(out).max_seq_len == 12
    ok = CliRunner().invoke(cli, ["run", str(out), "--ids", "1,2,3", "--max-new-tokens", "9", "--temperature", "0",
                                  "--backend", "onnxruntime"])
    assert ok.exit_code == 0, ok.output
    too_long = CliRunner().invoke(cli, ["run", str(out), "--ids", "1,2,3", "--max-new-tokens", "10",
                                        "--backend", "onnxruntime"])
    assert_one_line_error(too_long)
    assert "max_seq_len 12" in too_long.stderr
    pure = tiny_checkpoint("mamba1", tmp_path / "pure")
    refused = CliRunner().invoke(cli, ["export", str(pure), "-o", str(tmp_path / "p"), "-q", "--max-seq-len", "8"])
    assert_one_line_error(refused)
    assert "--max-seq-len" in refused.stderr
    bad = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "b"), "-q", "--max-seq-len", "0"])
    assert_one_line_error(bad)
