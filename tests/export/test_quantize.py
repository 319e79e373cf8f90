"""Weight-only int8 exports (export --quantize int8, MatMulNBits): block quantization, the export, verify."""
import json

import pytest
import torch
from click.testing import CliRunner

from mamba_deploy.cli import cli
from mamba_deploy.errors import ParameterError
from mamba_deploy.export import ExportOptions
from mamba_deploy.export.artifact import check_export, load_export
from mamba_deploy.export.quantize import BLOCK_SIZE, dequantize, quantize
from mamba_deploy.export.testing import tiny_checkpoint, tiny_export
from mamba_deploy.runtime.backend import load_backend
from mamba_deploy.verify import verify_export


@pytest.mark.parametrize("n,k", [(1, 1), (3, 31), (5, 32), (7, 33), (16, 100), (2, 768)])
def test_quantize_roundtrip_within_half_a_step(n, k):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(n * k)) * 0.1
    w[0, 0] = 0.0
    q, scales = quantize(w, 8)
    blocks = -(-k // BLOCK_SIZE)
    assert q.dtype == torch.uint8 and q.shape == (n, blocks, BLOCK_SIZE) and scales.shape == (n * blocks,)
    back = dequantize(q, scales, 8, k)
    step = scales.reshape(n, blocks, 1).expand(n, blocks, BLOCK_SIZE).reshape(n, -1)[:, :k]
    assert (back - w).abs().le(step / 2 + 1e-7).all()
    assert back.abs().max() <= w.abs().max() + 1e-7
    zeros = dequantize(*quantize(torch.zeros(n, k), 8), 8, k)
    assert torch.equal(zeros, torch.zeros(n, k))


@pytest.fixture(scope="module", params=["mamba1", "mamba2"])
def quantized(request, tmp_path_factory):
    return tiny_export(request.param, tmp_path_factory.mktemp(f"q-{request.param}"), quantize="int8")


def test_quantized_export_layout(quantized):
    info = check_export(load_export(quantized))
    assert info.quantize == "int8" and info.meta["dtype"] == "float32"
    graph = info.load_graph("decode")
    ops = [n.op_type for n in graph.graph.node]
    assert "Gemm" not in ops and ops.count("MatMulNBits") == 1 + info.config.n_layer * (
        2 if info.config.arch == "mamba2" else 4)
    assert any(o.domain == "com.microsoft" for o in graph.opset_import)


def test_quantized_runs_close_to_dequantized_reference(quantized):
    """ONNX Runtime (int8 weights and activations) against the torch backend on the dequantized weights."""
    info = load_export(quantized)
    ort, ref = load_backend("onnxruntime", info, threads=2), load_backend("torch", info)
    ids = torch.randint(1, info.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    s1, s2 = ort.new_state(2), ref.new_state(2)
    pairs = [(ort.prefill(ids[:, :6], s1), ref.prefill(ids[:, :6], s2))]
    for t in range(6, 9):
        pairs.append((ort.decode(ids[:, t:t + 1], s1).clone(), ref.decode(ids[:, t:t + 1], s2)))
    for got, want in pairs:
        assert torch.isfinite(got).all()
        assert (got - want).norm() / want.norm() < 0.05


def test_verify_reports_error_and_agreement(quantized):
    report = verify_export(quantized, backend="onnxruntime", steps=4)
    assert report.tolerance == 0.15
    assert 1e-4 < report.max_rel_err < report.tolerance, report.max_rel_err  # quantized: not float32-exact
    assert report.top1_agreement >= 0.7
    assert report.to_dict()["passed"]


@pytest.mark.parametrize("options,message", [
    (dict(quantize="int3"), "quantize must be one of int8"),
    (dict(quantize="int4"), "quantize must be one of int8"),
    (dict(quantize="int8", ops="standard"), "not with --ops standard"),
    (dict(quantize="int8", dtype="float16"), "needs float32 activations"),
])
def test_bad_quantize_options(options, message):
    with pytest.raises(ParameterError, match=message):
        ExportOptions(**options).validate()


def test_cli_quantize_int3_is_a_one_line_error(tmp_path):
    ckpt = tiny_checkpoint("mamba1", tmp_path / "ckpt")
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "out"), "--quantize", "int3"])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "--quantize" in errors[0] and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "out"), "--quantize", "int8",
                                      "--ops", "standard"])
    assert result.exit_code == 1 and result.stderr.startswith("error: --quantize uses"), result.output
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "out"), "--quantize", "int8", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "config.json").read_text())["export"]["quantize"] == "int8"
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "out")])
    assert result.exit_code == 0 and "quantize int8" in result.output, result.output
