"""`mamba-deploy bench --backend onnxruntime|torch` on the demo model: a table (or JSON rows) in seconds."""
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from mamba_deploy.cli import cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DEMO = Path(__file__).resolve().parents[1] / "examples" / "models" / "mamba-tiny-pydoc"


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "demo"
    result = CliRunner().invoke(cli, ["export", str(DEMO), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_bench_table(demo_export, backend):
    result = CliRunner().invoke(cli, ["bench", str(demo_export), "--backend", backend, "--threads", "2",
                                      "--batch", "1,3", "--prefill-len", "33", "--gen-len", "5", "--prompt-len", "4"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert f"{backend} with 2 threads" in lines[0] and "prefill 33 tokens" in lines[0]
    assert lines[1] == "| batch | decode ms/token | tokens/s | GB/s achieved | prefill tokens/s |"
    assert [line.split("|")[1].strip() for line in lines[3:]] == ["1", "3"]


def test_bench_json_rows(demo_export):
    result = CliRunner().invoke(cli, ["bench", str(demo_export), "--backend", "onnxruntime", "--threads", "1",
                                      "--prefill-len", "16", "--gen-len", "4", "--prompt-len", "3", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["batch"] == 1 and row["threads"] == 1 and row["backend"] == "onnxruntime"
    assert row["tok_s"] > 0 and row["prefill_tok_s"] > 0 and row["decode_ms"] > 0
    assert 0 < row["weight_gb"] < 0.1 and row["gbps"] > 0


def test_bench_random_init_quantized(monkeypatch):
    """--random-init on a CPU backend exports the preset's shape to a temp folder (a small preset stands in)."""
    from mamba_deploy import random_init

    monkeypatch.setitem(random_init.PRESETS, "mamba-130m", {**random_init.PRESETS["mamba-130m"], "d_model": 32,
                                                            "n_layer": 2, "vocab_size": 100})
    result = CliRunner().invoke(cli, ["bench", "--random-init", "mamba-130m", "--backend", "onnxruntime",
                                      "--quantize", "int8", "--prefill-len", "8", "--gen-len", "3", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["model"] == "mamba-130m" and row["quantize"] == "int8" and row["dtype"] == "float32"


@pytest.mark.parametrize("args,message", [
    (["--threads", "0"], "--threads must be positive"),
    (["--quantize", "int8"], "--quantize applies to --random-init"),
    (["--quantize", "int3"], "Invalid value for '--quantize'"),
    (["--backend", "nope"], "Invalid value for '--backend'"),
])
def test_bench_bad_input(demo_export, args, message):
    result = CliRunner().invoke(cli, ["bench", str(demo_export), "--backend", "onnxruntime", *args])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.output
