"""`mamba-deploy --help` / `--version` answer at once: importing the CLI pulls in none of the heavy libraries."""
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "onnx", "onnxruntime", "transformers", "tokenizers", "huggingface_hub")


def _heavy_modules_after(code: str) -> str:
    """Run `code` in a fresh interpreter; at exit it prints which HEAVY modules were imported (stderr)."""
    report = (f"import atexit, sys; atexit.register(lambda: print('HEAVY', sorted(m for m in {HEAVY!r} "
              "if m in sys.modules), file=sys.stderr)); ")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", report + code], capture_output=True, text=True, env=env, timeout=120)
    return next(line for line in proc.stderr.splitlines() if line.startswith("HEAVY "))


def test_importing_the_cli_imports_nothing_heavy():
    assert _heavy_modules_after("import mamba_deploy.cli") == "HEAVY []"


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--help"], ["export", "--help"],
                                  ["bench", "--help"]])
def test_help_and_version_import_nothing_heavy(args):
    assert _heavy_modules_after(f"from mamba_deploy.cli import main; main({args!r})") == "HEAVY []"


def test_public_names_still_import_on_use():
    import mamba_deploy

    assert mamba_deploy.Engine.__name__ == "Engine" and callable(mamba_deploy.load_reference)
    assert {"Engine", "ModelConfig", "load_config", "load_reference"} <= set(dir(mamba_deploy))
    with pytest.raises(AttributeError):
        mamba_deploy.no_such_name  # noqa: B018
    from mamba_deploy.runtime import Engine, SamplingParams, backend_names

    assert Engine is mamba_deploy.Engine and callable(SamplingParams) and callable(backend_names)
