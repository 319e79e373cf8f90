"""The README's commands run as written: its console blocks (output compared), its bash commands on the shipped
models, and its Python snippet."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mamba_deploy.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def console_sessions() -> list[tuple[str, str]]:
    """(command, expected stdout) pairs from ```console blocks."""
    pairs = []
    for block in re.findall(r"```console\n(.*?)```", README, re.S):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, output = chunk.partition("\n")
            pairs.append((command, output))
    return pairs


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("readme")
    (cwd / "examples").symlink_to(ROOT / "examples")
    return cwd


def test_console_blocks_run_as_written(workdir):
    sessions = console_sessions()
    assert len(sessions) >= 3
    for command, expected in sessions:
        argv = shlex.split(command)
        assert argv[0] == "mamba-deploy"
        result = cli(argv[1:], workdir)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        assert result.stdout.rstrip("\n") == expected.rstrip("\n"), command


def test_bash_commands_on_the_shipped_model(workdir):
    """verify and inspect, as the README shows them (after the console block made the export)."""
    if not (workdir / "out" / "mamba-tiny-pydoc").exists():
        cli(["export", "examples/models/mamba-tiny-pydoc", "-o", "out/mamba-tiny-pydoc", "-q"], workdir)
    for line in re.findall(r"^(mamba-deploy (?:verify|inspect) out/mamba-tiny-pydoc)", README, re.M):
        result = cli(shlex.split(line)[1:], workdir)
        assert result.returncode == 0, f"{line}\n{result.stderr}"
    assert "PASS" in cli(["verify", "out/mamba-tiny-pydoc"], workdir).stdout


def test_python_snippet(workdir):
    if not (workdir / "out" / "mamba-tiny-pydoc").exists():
        cli(["export", "examples/models/mamba-tiny-pydoc", "-o", "out/mamba-tiny-pydoc", "-q"], workdir)
    snippet = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    prelude = "import torch\ninput_ids = torch.tensor([[464, 1351]])\nnext_ids = torch.tensor([[11]])\n"
    epilogue = "\nassert logits.shape == (1, 1, 2048)\nprint('\\nsnippet ok')\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", prelude + snippet + epilogue], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "snippet ok" in result.stdout


@pytest.mark.parametrize("script", ["serve.py", "verify_engine.py"])
def test_examples_run(workdir, script):
    if not (workdir / "out" / "mamba-tiny-pydoc").exists():
        cli(["export", "examples/models/mamba-tiny-pydoc", "-o", "out/mamba-tiny-pydoc", "-q"], workdir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script), "out/mamba-tiny-pydoc",
                             "--backend", "onnxruntime"], cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert ("PASS" in result.stdout) if script == "verify_engine.py" else ("[batch]" in result.stdout)
