"""`mamba-deploy serve` refusals: one `error:` line and exit 1, before anything listens."""
import socket

import pytest
from click.testing import CliRunner

from mamba_deploy.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, ["serve", *map(str, args)])


def assert_one_line_error(result, message):
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "Traceback" not in result.output
    assert result.stderr.startswith(f"error: {message}"), result.stderr


@pytest.mark.parametrize("args,message", [
    ([], "give an export folder or --random-init NAME"),
    (["{exp}", "--random-init", "mamba-130m"], "give an export folder or --random-init NAME"),
    (["{exp}", "--max-batch", "0"], "--max-batch must be an integer >= 1"),
    (["{exp}", "--max-queue", "-1"], "--max-queue must be an integer >= 0"),
    (["{exp}", "--port", "70000"], "--port must be an integer in [0, 65535]"),
    (["{exp}", "--drain-timeout", "-1"], "--drain-timeout must be a number of seconds >= 0"),
    (["{exp}", "--api-key", " "], "--api-key must not be empty"),
    (["--random-init", "mamba-9b"], "--random-init: unknown model"),
    (["--random-init", "mamba-130m", "--backend", "onnxruntime"], "--random-init runs on the native backend only"),
    (["{missing}"], "{missing}: no such folder"),
])
def test_bad_options(demo_export, tmp_path, args, message):
    values = {"exp": demo_export, "missing": tmp_path / "missing"}
    result = invoke(*[a.format(**values) for a in args])
    assert_one_line_error(result, message.format(**values))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU error")
def test_random_init_needs_a_gpu():
    assert_one_line_error(invoke("--random-init", "mamba-130m"), "--random-init needs the native backend")


def test_a_port_in_use_is_refused(demo_export):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = invoke(demo_export, "--backend", "onnxruntime", "--port", port)
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}")
