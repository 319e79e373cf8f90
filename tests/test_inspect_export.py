"""`inspect` checks what it shows: a broken export folder is one `error:` line and exit 1."""
import json
import shutil

import pytest
from click.testing import CliRunner

from mamba_deploy.cli import cli

pytestmark = pytest.mark.filterwarnings("ignore:the checkpoint has no tokenizer")


def _inspect(folder):
    return CliRunner().invoke(cli, ["inspect", str(folder)])


def _flip_byte(file, position):
    data = bytearray(file.read_bytes())
    data[position] ^= 0xFF
    file.write_bytes(bytes(data))


DAMAGE = {
    "weights missing": (lambda f: (f / "weights.data").unlink(), "weights.data is missing"),
    "weights truncated": (lambda f: (f / "weights.data").write_bytes((f / "weights.data").read_bytes()[:-1]),
                          "truncated"),
    "weights changed": (lambda f: _flip_byte(f / "weights.data", 5000), "sha256 differs"),
    "weights grown": (lambda f: (f / "weights.data").open("ab").write(b"\0"), "recorded"),
    "graph corrupt": (lambda f: (f / "decode.onnx").write_bytes(b"\x08\xff\xff garbage"), "cannot read the ONNX graph"),
    "graph missing": (lambda f: (f / "prefill.onnx").unlink(), "prefill.onnx is missing"),
    "graph truncated": (lambda f: (f / "decode.onnx").write_bytes((f / "decode.onnx").read_bytes()[:-7]),
                        "cannot read the ONNX graph"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_broken_export_is_one_line_error(exports, tmp_path, damage):
    folder = shutil.copytree(exports("mamba1"), tmp_path / "export")
    corrupt, message = DAMAGE[damage]
    corrupt(folder)
    result = _inspect(folder)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_whole_export_reports_sha256_ok(exports):
    result = _inspect(exports("mamba1"))
    assert result.exit_code == 0, result.output
    assert "sha256 ok" in result.stdout


def test_export_without_recorded_sha256_is_not_a_failure(exports, tmp_path):
    folder = shutil.copytree(exports("mamba1"), tmp_path / "export")
    config = json.loads((folder / "config.json").read_text())
    del config["export"]["weights_sha256"], config["export"]["weights_bytes"]
    (folder / "config.json").write_text(json.dumps(config))
    result = _inspect(folder)
    assert result.exit_code == 0, result.output
    assert "sha256 not recorded" in result.stdout
