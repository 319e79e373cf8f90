"""`mamba-deploy triton`: the command's output, and every refusal as one `error:` line with exit status 1."""
import pytest
from click.testing import CliRunner

from mamba_deploy.cli import cli

pytestmark = pytest.mark.filterwarnings("ignore:the checkpoint has no tokenizer")


def invoke(*args):
    return CliRunner().invoke(cli, ["triton", *[str(a) for a in args]])


def assert_one_line_error(result, text):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr


def test_writes_the_repository_and_says_how_to_serve_it(own_exports, tmp_path):
    repo = tmp_path / "repo"
    result = invoke(own_exports("mamba1"), repo, "--name", "tiny", "--max-batch", "2", "--instances", "2", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"wrote Triton model repository {repo}: model 'tiny', onnxruntime backend, max batch 2",
        f"serve it with: tritonserver --model-repository {repo}"]
    assert (repo / "tiny" / "config.pbtxt").is_file()


@pytest.mark.parametrize("args,text", [
    (["--backend", "tensorrt"], "has no TensorRT engines: build them with 'mamba-deploy build"),
    (["--max-batch", "0"], "--max-batch must be a positive integer, got 0"),
    (["--instances", "-1"], "--instances must be a positive integer"),
    (["--idle-timeout", "0"], "--idle-timeout must be a positive number of seconds"),
    (["--name", "a/b"], "--name must be letters, digits"),
    (["--engines", "x"], "--engines only applies to the tensorrt backend"),
    (["--backend", "tensorrt", "--device", "cpu"], "--device must be gpu with the tensorrt backend"),
    (["--backend", "nvidia"], "Invalid value for '--backend'"),
])
def test_bad_options_are_one_line_errors(own_exports, tmp_path, args, text):
    assert_one_line_error(invoke(own_exports("mamba1"), tmp_path / "repo", *args), text)
    assert not (tmp_path / "repo").exists()


def test_bad_folders_are_one_line_errors(own_exports, tmp_path):
    folder = own_exports("mamba1")
    assert_one_line_error(invoke(tmp_path / "nothing", tmp_path / "repo"), "no such folder")
    assert_one_line_error(invoke(folder, folder), "already exists (use --force to overwrite)")
    assert_one_line_error(invoke(folder, folder, "--force"), "is or holds the export folder")
    (tmp_path / "mine").mkdir()
    assert_one_line_error(invoke(folder, tmp_path / "mine", "--force"), "not a previous Triton model repository")
